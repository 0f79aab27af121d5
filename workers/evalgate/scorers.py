"""Scorers: one model answer (an `Output`) against one row, as (score, detail).

    scorer_for(suite) -> Scorer        Scorer(item, output) -> (score, detail)
    metric_spec(suite) -> MetricSpec    direction and percentile of the suite's metric

Kinds: tool_call (accuracy), exact_match (accuracy), json_schema (accuracy = valid
answers), latency (ttft_ms, ttft_pNN_ms, latency_ms, latency_pNN_ms, tokens_per_s) and
custom (`module:function(row, output)` returning a number, a bool or (number, detail)).

Tool calls are judged the way the Berkeley Function Calling Leaderboard's AST checker
judges them (the same rules, our own code): the set of calls must match the expected set
in any order; each call needs the right function name, no unknown arguments, every
required argument, values of the declared JSON-schema type (an integer is a fine
"number", a bool is never an integer) and one of the acceptable values per argument.
Strings compare loosely by default (case, spaces and ,./-_*^ ignored, as BFCL does:
"April 1, 2024" matches "april 1 2024"); `options: {"strings": "exact"}` turns that off.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from tinygpt.runtime.contracts.evals import Direction, EvalSuite

from .rows import Item, Output

Scorer = Callable[[Item, Output], tuple[float, str]]

_LATENCY = re.compile(r"^(ttft|latency)(?:_p(\d{1,2}))?_ms$")
ACCURACY_KINDS = ("tool_call", "exact_match", "json_schema")
NORMALIZERS = ("strip", "lower", "collapse_whitespace")


class ScorerError(ValueError):
    """A suite whose scorer or metric cannot work (a configuration error)."""


@dataclass(frozen=True)
class MetricSpec:
    direction: Direction
    percentile: float | None = None  # the metric is this percentile of item values, not their mean


def metric_spec(suite: EvalSuite) -> MetricSpec:
    """The suite's metric: its direction (declared or known) and whether it is a percentile."""
    known: Direction | None = None
    q: float | None = None
    if suite.kind in ACCURACY_KINDS:
        if suite.metric != "accuracy":
            raise ScorerError(f"suite {suite.name!r}: kind {suite.kind} measures `accuracy`, not {suite.metric!r}")
        known = "higher"
    elif suite.kind == "latency":
        m = _LATENCY.match(suite.metric)
        if m:
            known, q = "lower", float(m.group(2)) if m.group(2) else None
        elif suite.metric == "tokens_per_s":
            known = "higher"
        else:
            raise ScorerError(
                f"suite {suite.name!r}: unknown latency metric {suite.metric!r} "
                "(ttft_ms, ttft_p95_ms, latency_ms, latency_p95_ms, tokens_per_s; any pNN)"
            )
    elif suite.metric == "accuracy":
        known = "higher"
    direction = suite.direction or known
    if direction is None:
        raise ScorerError(
            f"suite {suite.name!r}: metric {suite.metric!r} has no direction; "
            'add "direction": "higher" or "lower" (which way is better)'
        )
    return MetricSpec(direction, q)


# ---------------------------------------------------------------- tool calls

_LOOSE_DROP = re.compile(r"[ ,./\-_*^]")


def _norm(s: str, loose: bool) -> str:
    return _LOOSE_DROP.sub("", s).lower().replace("'", '"') if loose else s


def _typed(value: Any, schema: dict | None) -> bool:
    """Whether `value` has the JSON-schema type `schema` declares (no type: anything goes)."""
    t = (schema or {}).get("type")
    if not isinstance(t, str):
        return True
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = {"string": str, "boolean": bool, "array": list, "object": dict, "null": type(None)}.get(t)
    return expected is None or isinstance(value, expected)


def _equal(value: Any, accepted: Any, loose: bool) -> bool:
    if isinstance(accepted, bool) or isinstance(value, bool):
        return isinstance(accepted, bool) and isinstance(value, bool) and value == accepted
    if isinstance(accepted, (int, float)):
        return isinstance(value, (int, float)) and value == accepted
    if isinstance(accepted, str):
        return isinstance(value, str) and _norm(value, loose) == _norm(accepted, loose)
    if isinstance(accepted, list):
        return isinstance(value, list) and len(value) == len(accepted) and all(_equal(v, a, loose) for v, a in zip(value, accepted))
    if isinstance(accepted, dict):
        return isinstance(value, dict) and _args_problem(value, accepted, {}, loose) is None
    return value == accepted


def _acceptable(spec: Any) -> list[Any]:
    return spec if isinstance(spec, list) else [spec]


def _args_problem(args: dict, expected: dict, params: dict, loose: bool) -> str | None:
    """Why `args` does not satisfy `expected` ({arg: acceptable values}), or None."""
    props = params.get("properties") or {}
    for name in params.get("required") or []:
        if name not in args:
            return f"missing required argument {name!r}"
    for name, value in args.items():
        if name not in expected:
            return f"unexpected argument {name!r}"
        if name in props and not _typed(value, props[name]):
            return f"argument {name!r}: {value!r} is not of type {props[name].get('type')}"
        options = [a for a in _acceptable(expected[name]) if a != ""]
        if not any(_equal(value, a, loose) for a in options):
            return f"argument {name!r}: {value!r} is not one of {options!r}"
    for name, spec in expected.items():
        if name not in args and "" not in _acceptable(spec):
            return f"missing argument {name!r}"
    return None


def _call_problem(call: tuple[str, dict], exp: dict, params: dict[str, dict], loose: bool) -> str | None:
    name, args = call
    if name != exp.get("name"):
        return f"called {name!r}, expected {exp.get('name')!r}"
    return _args_problem(args, exp.get("arguments") or {}, params.get(name) or {}, loose)


def _match(calls: list, expected: list[dict], params: dict[str, dict], loose: bool) -> str | None:
    """Find an assignment of calls to expected calls (any order); the likeliest problem if none.

    The problem reported is one of a call with the right name when there is such a call
    (a wrong value says more than "called the other function")."""
    problems: list[tuple[int, str]] = []

    def assign(i: int, used: frozenset) -> bool:
        if i == len(expected):
            return True
        for j, call in enumerate(calls):
            if j in used:
                continue
            problem = _call_problem(call, expected[i], params, loose)
            if problem is None and assign(i + 1, used | {j}):
                return True
            if problem:
                problems.append((int(call[0] != expected[i].get("name")), f"expected call {i + 1}: {problem}"))
        return False

    if assign(0, frozenset()):
        return None
    return min(problems, key=lambda p: p[0])[1] if problems else "no assignment of calls to expected calls"


def check_tool_calls(output: Output, expected: list[dict], tools: list[dict] | None, *, loose: bool = True) -> tuple[float, str]:
    """1.0 when the answer's calls match `expected` (see module doc), else 0.0 with the reason."""
    if not expected:
        return (1.0, "") if not output.calls else (0.0, f"expected no call, got {len(output.calls)}")
    calls = []
    for k, c in enumerate(output.calls):
        try:
            args = json.loads(c.arguments) if c.arguments.strip() else {}
        except ValueError:
            return 0.0, f"call {k + 1} ({c.name}): arguments are not JSON"
        if not isinstance(args, dict):
            return 0.0, f"call {k + 1} ({c.name}): arguments are not a JSON object"
        calls.append((c.name, args))
    if len(calls) != len(expected):
        return 0.0, f"expected {len(expected)} call(s), got {len(calls)}"
    params = {}
    for tool in tools or []:
        fn = tool.get("function") or {}
        params[fn.get("name")] = fn.get("parameters") or {}
    problem = _match(calls, expected, params, loose)
    return (1.0, "") if problem is None else (0.0, problem)


# ---------------------------------------------------------------- other kinds


def _normalizer(options: dict, suite: str) -> Callable[[str], str]:
    steps = options.get("normalize", ["strip"])
    steps = [steps] if isinstance(steps, str) else steps
    unknown = [s for s in steps if s not in NORMALIZERS]
    if unknown:
        raise ScorerError(f"suite {suite!r}: unknown normalize step(s) {unknown} (choose from {', '.join(NORMALIZERS)})")

    def norm(s: str) -> str:
        for step in steps:
            s = s.strip() if step == "strip" else s.lower() if step == "lower" else " ".join(s.split())
        return s

    return norm


def _schema_of(item: Item) -> dict | None:
    row = item.row
    if row.schema is not None:
        return row.schema
    fmt = row.response_format or {}
    return (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None


def _latency_value(metric: str, out: Output) -> float:
    if metric == "tokens_per_s":
        decode_s = out.latency_s - out.ttft_s
        if out.completion_tokens > 1 and decode_s > 0:
            return (out.completion_tokens - 1) / decode_s
        return out.completion_tokens / out.latency_s if out.latency_s > 0 else 0.0
    return 1e3 * (out.ttft_s if metric.startswith("ttft") else out.latency_s)


def load_custom(spec: str | None, suite: str) -> Callable:
    """Import `module:function`; a ScorerError names what is wrong."""
    if not spec or ":" not in spec:
        raise ScorerError(f"suite {suite!r}: a custom suite needs \"scorer\": \"module:function\", got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # the user's module, named in the suite: a config error, not ours
        raise ScorerError(f"suite {suite!r}: unknown scorer {spec!r}: cannot import {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise ScorerError(f"suite {suite!r}: unknown scorer {spec!r}: {module_name} has no function {attr!r}")
    return fn


def _custom_result(value: Any, spec: str) -> tuple[float, str]:
    detail = ""
    if isinstance(value, tuple) and len(value) == 2:
        value, detail = value
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise ScorerError(f"custom scorer {spec} returned {type(value).__name__}; expected a number, a bool or (number, detail)")
    return float(value), str(detail)


def scorer_for(suite: EvalSuite) -> Scorer:
    """The scorer of `suite` (raises ScorerError for an unknown scorer or bad options)."""
    options = suite.options
    if suite.kind == "tool_call":
        strings = options.get("strings", "loose")
        if strings not in ("loose", "exact"):
            raise ScorerError(f"suite {suite.name!r}: options.strings must be \"loose\" or \"exact\", got {strings!r}")
        return lambda item, out: check_tool_calls(out, item.row.expected or [], item.row.tools, loose=strings == "loose")
    if suite.kind == "exact_match":
        norm = _normalizer(options, suite.name)

        def exact(item: Item, out: Output) -> tuple[float, str]:
            accepted = _acceptable(item.row.expected)
            got = norm(out.content or "")
            if any(got == norm(str(a)) for a in accepted):
                return 1.0, ""
            return 0.0, f"{got[:80]!r} is not one of {[str(a)[:80] for a in accepted][:5]!r}"

        return exact
    if suite.kind == "json_schema":
        import jsonschema

        def valid(item: Item, out: Output) -> tuple[float, str]:
            try:
                value = json.loads(out.content or "")
            except ValueError:
                return 0.0, "the answer is not JSON"
            error = next(iter(jsonschema.Draft202012Validator(_schema_of(item)).iter_errors(value)), None)
            if error is not None:
                return 0.0, f"schema: {error.message[:200]}"
            if item.row.expected is not None and value != item.row.expected:
                return 0.0, "valid, but not the expected value"
            return 1.0, ""

        return valid
    if suite.kind == "latency":
        metric = suite.metric
        return lambda item, out: (_latency_value(metric, out), "")
    fn = load_custom(suite.scorer, suite.name)
    return lambda item, out: _custom_result(fn(item.row, out), suite.scorer or "")
