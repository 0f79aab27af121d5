"""The tiny-model fixture is a real mlx-lm checkpoint: it loads, templates tools, round-trips text, generates."""

from __future__ import annotations

import json

# First: tiny_model imports tinygpt.runtime, which must load the fast BLAS before mlx does.
from tests.tiny_model import EOS, SPECIAL_TOKENS, build_tiny_model

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step

# Registers the session fixture here too, so this file also runs before conftest adds
# the plugin; pytest registers a plugin module once, whoever names it first.
pytest_plugins = ["tests.tiny_model"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return mlx_lm.load(str(tiny_model_dir))


def test_loads_with_mlx_lm_and_matches_config(loaded, tiny_model_dir):
    model, tokenizer = loaded
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer.vocab)
    assert 400 <= config["vocab_size"] <= 512  # a trained BPE, not just the 256 bytes
    assert model.args.hidden_size == 64 and len(model.layers) == 2
    assert tokenizer.eos_token == EOS
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids(EOS)}


def test_chat_template_renders_tools(loaded):
    _, tokenizer = loaded
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert "<tools>\n" + json.dumps(TOOLS[0]["function"]) + "\n</tools>" in text
    assert text.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")

    ids = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True)
    assert tokenizer.decode(ids) == text
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids.count(im_start) == 3


def test_tokenizer_round_trips_text_and_keeps_special_tokens_whole(loaded):
    _, tokenizer = loaded
    text = (
        '<|im_start|>user\nnaïve café, 東京 🚀  tabs\tand "quotes" .<|im_end|>\n'
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|><|endoftext|>"
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
        assert ids.count(token_id) == text.count(token)
    # The trained merges compress ordinary text well below one id per byte.
    plain = "The weather in Paris is sunny."
    assert len(tokenizer.encode(plain, add_special_tokens=False)) < len(plain.encode()) / 2


def test_generates_a_few_tokens(loaded):
    model, tokenizer = loaded
    prompt = mx.array(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True))
    tokens = [int(token) for token, _ in generate_step(prompt, model, max_tokens=6)]
    assert len(tokens) == 6
    assert all(0 <= t < len(tokenizer.vocab) for t in tokens)
    # Greedy decoding of the same weights is deterministic.
    assert [int(token) for token, _ in generate_step(prompt, model, max_tokens=6)] == tokens


def _weights(path):
    model, _ = mlx_lm.load(str(path))
    return dict(tree_flatten(model.parameters()))


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    base, same, diff = _weights(tiny_model_dir), _weights(again), _weights(other)
    assert base.keys() == same.keys() == diff.keys()
    assert all(mx.array_equal(base[k], same[k]).item() for k in base)
    assert not mx.array_equal(base["model.embed_tokens.weight"], diff["model.embed_tokens.weight"]).item()
    # The tokenizer is trained deterministically too.
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_overrides_apply_and_unknown_names_are_rejected(tmp_path):
    path = build_tiny_model(tmp_path / "one-layer", num_hidden_layers=1)
    model, _ = mlx_lm.load(str(path))
    assert len(model.layers) == 1
    with pytest.raises(ValueError, match="hidden_sise"):
        build_tiny_model(tmp_path / "typo", hidden_sise=32)
