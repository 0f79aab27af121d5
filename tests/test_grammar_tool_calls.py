"""Reading tool calls back out of text, and re-rendering them with the chat template."""

from __future__ import annotations

import importlib.resources

from tests.test_grammar_sampling import tiny_tokenizer  # noqa: F401 - fixture
from tinygpt.runtime.grammar import ParsedCall, parse_tool_calls, split_tool_calls

WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city" : "Paris","days": 3}}\n</tool_call>'
TIMER_CALL = '<tool_call>\n{"name": "set_timer", "arguments": {}}\n</tool_call>'


def test_arguments_text_is_kept_byte_for_byte():
    (call,) = parse_tool_calls(WEATHER_CALL)
    assert call == ParsedCall("get_weather", '{"city" : "Paris","days": 3}')


def test_parallel_calls_in_order():
    calls = parse_tool_calls(WEATHER_CALL + "\n" + TIMER_CALL)
    assert [c.name for c in calls] == ["get_weather", "set_timer"]
    assert calls[1].arguments_json == "{}"


def test_malformed_and_unfinished_blocks_are_skipped():
    text = (
        "<tool_call>\nnot json\n</tool_call>"
        '<tool_call>\n{"arguments": {}}\n</tool_call>'
        '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>'
        + WEATHER_CALL
        + '\n<tool_call>\n{"name": "cut", "argu'
    )
    assert [c.name for c in parse_tool_calls(text)] == ["get_weather"]


def test_other_layouts_are_normalized():
    text = '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call><tool_call>{"name": "g", "arguments": "{\\"b\\": 2}"}</tool_call>'
    assert parse_tool_calls(text) == [ParsedCall("f", '{"a": 1}'), ParsedCall("g", '{"b": 2}')]


def test_split_separates_content_from_calls():
    assert split_tool_calls("Let me look.\n" + WEATHER_CALL) == ("Let me look.", parse_tool_calls(WEATHER_CALL))
    assert split_tool_calls("No tools today.") == ("No tools today.", [])
    assert split_tool_calls(TIMER_CALL)[0] == ""


def test_template_rerenders_the_exact_text(tiny_tokenizer):
    """Parsed calls fed back as an assistant turn render to the same text (same tokens)."""
    template = importlib.resources.files("tinygpt.runtime.models").joinpath("templates/chatml_tools.jinja").read_text()
    for text in (WEATHER_CALL, WEATHER_CALL + "\n" + TIMER_CALL, "Sure.\n" + TIMER_CALL):
        content, calls = split_tool_calls(text)
        message = {
            "role": "assistant",
            "content": content,
            "tool_calls": [{"type": "function", "function": {"name": c.name, "arguments": c.arguments_json}} for c in calls],
        }
        rendered = tiny_tokenizer.apply_chat_template([{"role": "system", "content": "s"}, message], chat_template=template, tokenize=False)
        assert rendered.endswith("<|im_start|>assistant\n" + text + "<|im_end|>\n")
