"""Import Berkeley Function Calling Leaderboard (BFCL) data as eval rows, without its package.

BFCL keeps a category in two JSON Lines files (named .json upstream):

    BFCL_v3_simple.json                    {"id": "simple_0", "question": [[{"role": "user", "content": ...}]],
                                            "function": [{"name": "calc.area", "parameters": {"type": "dict", ...}}]}
    possible_answer/BFCL_v3_simple.json    {"id": "simple_0", "ground_truth": [{"calc.area": {"base": [10], "unit": ["cm", ""]}}]}

A question becomes one row: its messages, its functions as OpenAI tools, and the ground
truth as `expected` calls with the acceptable values per argument ("" = may be omitted).
BFCL's own parameter types are mapped to JSON Schema (dict → object, float → number,
tuple → array, any → no type) and dots in function names become underscores (OpenAI
names allow [A-Za-z0-9_-] only; BFCL does the same for such models). Categories whose
id starts with "irrelevance" / "live_irrelevance" expect no call and need no answer.
Supported: the single-turn AST categories (simple, multiple, parallel, parallel_multiple
and their live_ variants, irrelevance); executable, multi-turn, relevance and Java /
JavaScript rows are refused with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .rows import EvalRow, GateInputError, Item

_TYPES = {"dict": "object", "float": "number", "tuple": "array", "integer": "integer", "string": "string",
          "boolean": "boolean", "array": "array", "object": "object", "number": "number", "any": None}
# BFCL-only keys that JSON Schema (and the grammar) would take as unknown constraints.
_DROP = ("optional",)
_NAME = re.compile(r"[^A-Za-z0-9_-]")
_CATEGORY = re.compile(r"^(.*?)_\d+(?:-\d+)*$")


def default_answers(questions: Path) -> Path:
    """Where BFCL keeps the possible answers of a question file."""
    return questions.parent / "possible_answer" / questions.name


def category(row_id: str) -> str:
    """`live_parallel_multiple_12` -> `live_parallel_multiple`."""
    m = _CATEGORY.match(row_id)
    return m.group(1) if m else row_id


def tool_name(name: str) -> str:
    return _NAME.sub("_", name)


def _schema(node: Any, where: str) -> Any:
    """A BFCL parameter schema as JSON Schema."""
    if isinstance(node, list):
        return [_schema(x, where) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "type" and isinstance(value, str):
            if value not in _TYPES:
                raise GateInputError(f"{where}: unsupported BFCL parameter type {value!r} (Java/JavaScript categories are not supported)")
            if _TYPES[value] is not None:
                out["type"] = _TYPES[value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _schema(sub, where) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
            out[key] = _schema(value, where)
        else:
            out[key] = value
    return out


def _tools(functions: Any, where: str) -> tuple[list[dict], dict[str, str]]:
    functions = [functions] if isinstance(functions, dict) else functions
    if not isinstance(functions, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise GateInputError(f"{where}: `function` must be a function object or a list of them")
    tools, names = [], {}
    for f in functions:
        name = tool_name(f["name"])
        if name in names.values():
            raise GateInputError(f"{where}: two functions become {name!r} once dots are replaced")
        names[f["name"]] = name
        fn = {"name": name, "description": f.get("description", ""), "parameters": _schema(f.get("parameters") or {"type": "object", "properties": {}}, where)}
        tools.append({"type": "function", "function": fn})
    return tools, names


def _messages(question: Any, where: str) -> list[dict]:
    if isinstance(question, str):  # BFCL v1
        return [{"role": "user", "content": question}]
    if isinstance(question, list) and question and all(isinstance(turn, list) for turn in question):
        if len(question) > 1:
            raise GateInputError(f"{where}: multi-turn BFCL rows are not supported ({len(question)} turns)")
        return question[0]
    if isinstance(question, list) and all(isinstance(m, dict) for m in question):
        return question
    raise GateInputError(f"{where}: `question` must be a string or a list of turns of messages")


def _expected(truth: Any, names: dict[str, str], where: str) -> list[dict]:
    truth = [truth] if isinstance(truth, dict) else truth
    if not isinstance(truth, list):
        raise GateInputError(f"{where}: `ground_truth` must be a list of {{function: {{argument: [values]}}}}")
    calls = []
    for entry in truth:
        if isinstance(entry, str):
            raise GateInputError(f"{where}: executable ground truth ({entry[:40]!r}) is not supported; use the AST categories")
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise GateInputError(f"{where}: each ground-truth call must be {{function: {{argument: [values]}}}}")
        (name, args), = entry.items()
        if not isinstance(args, dict):
            raise GateInputError(f"{where}: arguments of {name!r} must be an object")
        calls.append({"name": names.get(name, tool_name(name)), "arguments": args})
    return calls


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GateInputError(f"{path}: file not found") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise GateInputError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise GateInputError(f"{path}:{n}: expected a JSON object with a string `id`")
        rows.append((n, obj))
    return rows


def load_bfcl(questions: Path, answers: Path | None = None) -> list[Item]:
    """Rows of a BFCL question file, with expected calls from its possible-answer file."""
    answers = answers or default_answers(questions)
    questions_rows = _jsonl(questions)
    needs_answers = any(not category(obj["id"]).endswith("irrelevance") for _, obj in questions_rows)
    truth: dict[str, tuple[int, Any]] = {}
    if needs_answers:
        for n, obj in _jsonl(answers):
            if "ground_truth" not in obj:
                raise GateInputError(f"{answers}:{n}: missing `ground_truth`")
            truth[obj["id"]] = (n, obj["ground_truth"])
    items = []
    for n, obj in questions_rows:
        where = f"{questions}:{n}"
        cat = category(obj["id"])
        if "relevance" in cat and not cat.endswith("irrelevance"):
            raise GateInputError(f"{where}: BFCL relevance rows (any call counts) are not supported")
        if "exec" in cat or "rest" in cat or "multi_turn" in cat:
            raise GateInputError(f"{where}: BFCL category {cat!r} is not supported (single-turn AST categories only)")
        tools, names = _tools(obj.get("function"), where)
        if cat.endswith("irrelevance"):
            expected: list[dict] = []
        elif obj["id"] in truth:
            line, gt = truth[obj["id"]]
            expected = _expected(gt, names, f"{answers}:{line}")
        else:
            raise GateInputError(f"{where}: no possible answer for {obj['id']!r} in {answers}")
        row = EvalRow(id=obj["id"], messages=_messages(obj.get("question"), where), tools=tools, expected=expected,
                      metadata={"bfcl_category": cat, "bfcl_names": names})
        items.append(Item(obj["id"], n, row))
    return items
