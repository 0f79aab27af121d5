"""Tool-call validity over a corpus of real-world function schemas (tests/data/schemas/).

Every schema is used as a named tool_choice and sampled with random logits over the
tiny byte-level BPE vocabulary: 100% of the calls must parse and validate against their
parameters (formats included), `uniqueItems` over an enum included (rewritten to the enum
of its distinct-value arrays, runtime/grammar/schemas.py).
Compile times over 3,400 real-world schemas are measured by benchmarks/grammar_compile.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_grammar_sampling import (
    assert_valid_calls,
    sample,
    text_of,
    tiny_info,  # noqa: F401 - fixture
)
from tinygpt.runtime.grammar import build_constraint

CORPUS_DIR = Path(__file__).parent / "data" / "schemas"
CORPUS = sorted(CORPUS_DIR.glob("*.json"))
SEEDS = 8


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_corpus_is_large_and_varied():
    tools = [load(p) for p in CORPUS]
    assert len(tools) >= 50
    text = json.dumps(tools)
    for feature in ('"enum"', '"format"', '"pattern"', '"maxLength"', '"minimum"', '"maxItems"', '"$ref"', '"anyOf"', '"oneOf"', '"allOf"', '"uniqueItems"', '"additionalProperties"'):
        assert feature in text, feature
    assert any(len(t["function"].get("description", "")) > 300 for t in tools)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_sampled_call_parses_and_validates(tiny_info, path):
    tool = load(path)
    name = tool["function"]["name"]
    choice = {"type": "function", "function": {"name": name}}
    for seed in range(SEEDS):
        constraint = build_constraint(tiny_info, tools=[tool], tool_choice=choice, parallel_tool_calls=False)
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=100))
        calls = assert_valid_calls(text, [tool])
        assert [c.name for c in calls] == [name]


def test_whole_corpus_as_one_tool_set(tiny_info):
    tools = [load(p) for p in CORPUS]
    assert len(tools) >= 50
    names = set()
    for seed in range(12):
        constraint = build_constraint(tiny_info, tools=tools, tool_choice="required")
        text = text_of(tiny_info, sample(constraint, np.random.default_rng(seed), budget=100))
        names |= {c.name for c in assert_valid_calls(text, tools)}
    assert len(names) > 3
