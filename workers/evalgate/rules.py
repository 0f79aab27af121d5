"""Eval suites shipped with TinyGPT, and the promotion rules that add them to a gate.

`general-tools` (the "no-forgetting" rule): 50 questions of the Berkeley Function Calling
Leaderboard's BFCL v4 `simple_python` category (every 8th of its 400: simple_python_0,
_8, _16, ...) with their possible answers, copied unchanged from
github.com/ShishirPatil/gorilla (berkeley-function-call-leaderboard/bfcl_eval/data,
commit 6ea57973, Apache-2.0) and read through the BFCL import (bfcl.py); the data sits in general_tools/.
A specialist is trained on one project's tools; this suite checks it did not get worse at
calling tools in general. It fails only on a loss that is statistically clear, whatever
its size (`EvalSuite.regression = "significant"`), against the same baseline as the
project's own suites.
"""

from __future__ import annotations

from pathlib import Path

from tinygpt.runtime.contracts.evals import EvalSuite

HERE = Path(__file__).resolve().parent
GENERAL_TOOLS = "general-tools"
NO_FORGETTING = "no-forgetting"


def general_tools_suite() -> EvalSuite:
    """The shipped general tool-calling suite (absolute path: it works from any project)."""
    return EvalSuite(
        name=GENERAL_TOOLS,
        kind="tool_call",
        format="bfcl",
        data=str(HERE / "general_tools" / "BFCL_v4_simple_python.json"),
        # BFCL's own setting: tool_choice "auto", the model decides whether to call.
        max_tokens=128,
        regression="significant",
    )


# Promotion rule name -> the suites it adds to a gate.
RULES = {NO_FORGETTING: general_tools_suite}


def rule_suites(rules: list[str], declared: list[EvalSuite]) -> list[EvalSuite]:
    """The suites `rules` add, except any the project already declares by the same name."""
    names = {s.name for s in declared}
    out = []
    for rule in dict.fromkeys(rules):
        if rule not in RULES:
            raise ValueError(f"unknown promotion rule {rule!r} (known: {', '.join(sorted(RULES))})")
        suite = RULES[rule]()
        if suite.name not in names:
            out.append(suite)
    return out
