"""build_constraint: tool_choice modes, parallel calls, response_format, errors, caching,
the vocabulary, and decoding through mlx-lm's generate_step with the tiny model."""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

from tests.test_grammar_sampling import (
    PADDED_VOCAB,
    SEARCH,
    TOOLS,
    WEATHER,
    assert_valid_calls,
    sample,
    text_of,
    tiny_info,  # noqa: F401 - fixture
    tiny_tokenizer,  # noqa: F401 - fixture
)
from tinygpt.runtime.grammar import (
    GrammarError,
    TokenizerInfo,
    build_constraint,
    grammar_cache,
    parse_tool_calls,
    split_tool_calls,
)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def feed(constraint, tokenizer, text: str) -> None:
    for token in tokenizer.encode(text, add_special_tokens=False):
        constraint.advance(token)


def allowed_texts(constraint, info) -> set[bytes]:
    return {info.token_bytes[i] for i in np.flatnonzero(constraint.allowed()) if info.token_bytes[i] is not None}


def test_unconstrained_requests_return_none(tiny_info):
    assert build_constraint(tiny_info) is None
    assert build_constraint(tiny_info, tools=TOOLS, tool_choice="none") is None
    assert build_constraint(tiny_info, response_format={"type": "text"}) is None
    # tool_choice none still honours response_format.
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="none", response_format={"type": "json_object"})
    assert constraint.kind == "json_object"


def test_required_starts_with_a_call_and_ends_only_after_one(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required")
    assert constraint.kind == "tools"
    assert not constraint.eos_allowed
    assert all(b"<tool_call>".startswith(piece) for piece in allowed_texts(constraint, tiny_info))
    feed(constraint, tiny_tokenizer, CALL)
    assert constraint.eos_allowed and not constraint.done  # a parallel call may follow
    assert allowed_texts(constraint, tiny_info) <= {b"\n", b"\n<"}
    constraint.advance(tiny_info.eos_token_ids[0])
    assert constraint.done


def test_required_without_parallel_calls_is_done_after_one(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    feed(constraint, tiny_tokenizer, CALL)
    assert constraint.done
    np.testing.assert_array_equal(np.flatnonzero(constraint.allowed()), tiny_info.eos_token_ids)


def test_parallel_calls(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required")
    second = '<tool_call>\n{"name": "search_web", "arguments": {"query": "x", "limit": 2}}\n</tool_call>'
    feed(constraint, tiny_tokenizer, CALL + "\n" + second)
    assert constraint.eos_allowed
    assert [c.name for c in parse_tool_calls(CALL + "\n" + second)] == ["get_weather", "search_web"]


def test_parallel_calls_need_exactly_one_newline_between(tiny_info, tiny_tokenizer):
    """Calls are separated by exactly one newline, and the output never ends on it."""
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="required")
    feed(constraint, tiny_tokenizer, CALL)
    with pytest.raises(ValueError, match="not allowed"):
        constraint.advance(tiny_tokenizer.convert_tokens_to_ids("<"))
    feed(constraint, tiny_tokenizer, "\n")
    assert not constraint.eos_allowed
    assert not constraint.allowed()[list(tiny_info.eos_token_ids)].any()
    with pytest.raises(ValueError, match="EOS"):
        constraint.advance(tiny_info.eos_token_ids[0])
    feed(constraint, tiny_tokenizer, CALL)
    assert constraint.eos_allowed


def test_named_function_allows_only_that_function(tiny_info, tiny_tokenizer):
    constraint = build_constraint(
        tiny_info, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search_web"}}
    )
    feed(constraint, tiny_tokenizer, '<tool_call>\n{"name": "')
    assert b"g" not in {p[:1] for p in allowed_texts(constraint, tiny_info)}
    with pytest.raises(ValueError, match="not allowed"):
        feed(constraint, tiny_tokenizer, "get_weather")


def test_named_function_unknown_name_is_a_grammar_error(tiny_info):
    choice = {"type": "function", "function": {"name": "book_flight"}}
    with pytest.raises(GrammarError, match="unknown function 'book_flight'.*get_weather, search_web"):
        build_constraint(tiny_info, tools=TOOLS, tool_choice=choice)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tool_choice="required"), "needs a non-empty 'tools'"),
        (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (dict(tools=[WEATHER, WEATHER]), "unique"),
        (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), r"tools\[0\]\.function\.name"),
        (dict(tools=[{"type": "retrieval"}]), r"tools\[0\]\.type"),
        (
            dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
            "must describe a JSON object",
        ),
        (dict(response_format={"type": "xml"}), "response_format.type"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "'schema'"),
        (
            dict(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object", "not": {}}}}),
            r"response_format\.json_schema\.schema\.not: unsupported schema keyword 'not'",
        ),
    ],
)
def test_bad_requests_are_grammar_errors(tiny_info, kwargs, message):
    with pytest.raises(GrammarError, match=message):
        build_constraint(tiny_info, **kwargs)


def test_unsupported_keyword_names_tool_and_path(tiny_info):
    tool = copy.deepcopy(SEARCH)
    tool["function"]["parameters"]["properties"]["filters"] = {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
    }
    with pytest.raises(GrammarError) as info:
        build_constraint(tiny_info, tools=[WEATHER, tool], tool_choice="auto")
    assert str(info.value).startswith("tools[1].function.parameters.properties.filters.uniqueItems:")
    assert "'uniqueItems'" in str(info.value)


def test_auto_allows_text_then_calls_then_only_calls_or_eos(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto")
    assert not constraint.eos_allowed  # an empty answer is not an answer
    feed(constraint, tiny_tokenizer, "The weather <tool is fine.")
    assert constraint.eos_allowed
    feed(constraint, tiny_tokenizer, "\n" + CALL)
    assert constraint.eos_allowed
    assert allowed_texts(constraint, tiny_info) <= {b"\n", b"\n<"}  # another call, or the end
    content, calls = split_tool_calls("The weather <tool is fine.\n" + CALL)
    assert content == "The weather <tool is fine." and [c.name for c in calls] == ["get_weather"]


def test_auto_once_a_call_opens_the_grammar_takes_over(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto")
    feed(constraint, tiny_tokenizer, "Let me check.<tool_call>\n")
    assert not constraint.eos_allowed
    with pytest.raises(ValueError, match="not allowed"):
        feed(constraint, tiny_tokenizer, "hello")


def test_auto_text_only_and_calls_only(tiny_info):
    for seed in range(10):
        constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto")
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=30))
        content, calls = split_tool_calls(text)
        assert_valid_calls(text, TOOLS, allow_text=True)
        assert "<tool_call>" not in content


def test_auto_with_response_format_answers_json_or_calls(tiny_info, tiny_tokenizer):
    response_format = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto", response_format=response_format)
    feed(constraint, tiny_tokenizer, '{"ok": true}')
    assert constraint.done
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto", response_format=response_format)
    feed(constraint, tiny_tokenizer, CALL)
    assert constraint.eos_allowed


def test_special_tokens_and_padding_are_never_allowed(tiny_info, tiny_tokenizer):
    constraint = build_constraint(tiny_info, tools=TOOLS, tool_choice="auto")
    allowed = constraint.allowed()
    assert allowed.shape == (PADDED_VOCAB,)
    assert not allowed[512:].any()
    for special in ("<|im_start|>", "<|endoftext|>"):
        assert not allowed[tiny_tokenizer.convert_tokens_to_ids(special)]
    with pytest.raises(ValueError, match="EOS"):
        build_constraint(tiny_info, tools=TOOLS, tool_choice="required").advance(tiny_info.eos_token_ids[0])


def test_compiled_grammars_are_cached(tiny_info):
    tools = copy.deepcopy(TOOLS)
    build_constraint(tiny_info, tools=tools, tool_choice="required")
    compiles, hits = grammar_cache.compiles, grammar_cache.hits
    first = build_constraint(tiny_info, tools=copy.deepcopy(tools), tool_choice="required")
    # Descriptions do not change the grammar: same compiled matcher.
    tools[0]["function"]["description"] = "Something else entirely."
    tools[0]["function"]["parameters"]["properties"]["city"]["description"] = "A city name."
    second = build_constraint(tiny_info, tools=tools, tool_choice="required")
    assert grammar_cache.compiles == compiles
    assert grammar_cache.hits == hits + 2
    assert first.grammar is second.grammar
    assert first._matcher is not second._matcher  # per-request state
    # Another tokenizer layout (vocab size) is another grammar.
    other = TokenizerInfo(
        vocab_size=PADDED_VOCAB + 8,
        eos_token_ids=tiny_info.eos_token_ids,
        token_bytes=tiny_info.token_bytes + (None,) * 8,
        mode=tiny_info.mode,
    )
    assert build_constraint(other, tools=tools, tool_choice="required").grammar is not first.grammar
    assert grammar_cache.compiles == compiles + 1


def test_tokenizer_info_bytes_match_the_tokenizer(tiny_tokenizer, tiny_info):
    assert TokenizerInfo.from_tokenizer(tiny_tokenizer, vocab_size=PADDED_VOCAB) is tiny_info
    assert tiny_info.eos_token_ids == (tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    specials = {i for i, t in tiny_tokenizer.backend_tokenizer.get_added_tokens_decoder().items() if t.special}
    assert specials == {0, 1, 2}
    for token_id in range(512):
        piece = tiny_info.token_bytes[token_id]
        if piece is None:
            assert token_id in specials
        else:
            assert tiny_tokenizer.decode([token_id]).encode("utf-8") == piece or not piece.isascii()
    text = 'Zürich — {"a": 1}\n<tool_call>'
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert text_of(tiny_info, ids) == text


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


def test_generate_step_with_the_constraint_as_logits_processor(tiny_model):
    """The engine's path: mlx-lm's TokenizerWrapper, the model's logits, generate_step."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = tiny_model
    info = TokenizerInfo.from_tokenizer(tokenizer, vocab_size=model.args.vocab_size)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, add_generation_prompt=True)
    completed = 0
    for seed in range(4):
        constraint = build_constraint(info, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
        mx.random.seed(seed)
        ids = []
        steps = generate_step(mx.array(prompt), model, max_tokens=400, sampler=make_sampler(temp=1.0), logits_processors=[constraint])
        for token, _ in steps:
            if int(token) in tokenizer.eos_token_ids:
                completed += 1
                break
            ids.append(int(token))
        text = tokenizer.decode(ids)
        if constraint.eos_allowed:
            assert_valid_calls(text, TOOLS)
        else:
            assert text.startswith("<tool_call>\n{\"name\": \"")
    assert completed >= 1


def test_parser_limits_are_a_grammar_error_at_compile_and_mid_decode(tiny_info, monkeypatch):
    from tinygpt.runtime.grammar import compiled

    grammar_cache.clear()
    monkeypatch.setitem(compiled.LIMIT_SETTINGS, "max_grammar_size", 10)
    with pytest.raises(GrammarError, match="exceeds the server's parser limits"):
        build_constraint(tiny_info, response_format={"type": "json_object"})
    monkeypatch.setitem(compiled.LIMIT_SETTINGS, "max_grammar_size", 200_000)
    monkeypatch.setitem(compiled.LIMIT_SETTINGS, "max_lexer_states", 5)
    grammar_cache.clear()
    constraint = build_constraint(tiny_info, response_format={"type": "json_object"})
    tokens = [1, 2]
    for _ in range(50):
        masked = constraint(mx.array(tokens), mx.zeros((1, PADDED_VOCAB)))
        if constraint.error is not None:
            break
        tokens.append(int(np.flatnonzero(constraint.allowed())[0]))
    assert "exceeded the server's parser limits while decoding" in str(constraint.error)
    # The output ends at once: only EOS is left.
    finite = np.flatnonzero(np.isfinite(np.array(masked[0])))
    assert set(finite.tolist()) == set(tiny_info.eos_token_ids)
    grammar_cache.clear()
