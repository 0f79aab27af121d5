"""Eval suites: where they are declared, checked, and their rows read (JSON Lines or BFCL).

    declared_suites(project, project_dir) -> list[EvalSuite]   project file + gate.suites_file
    check_suite(suite) -> MetricSpec                         configuration errors, before any work
    data_files(suite, project_dir) -> list[Path]             what the suite's numbers depend on
    load_items(suite, project_dir) -> list[Item]             parsed, validated rows

Every problem is a `GateInputError` whose message names the suite, and for rows the
file and line: a gate must never pass because it could not read its own tests.
Reading rows is only needed when a suite actually runs; a cache hit only hashes files.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.evals import EvalSuite
from tinygpt.runtime.contracts.project import ProjectPins

from .rows import EvalRow, GateInputError, Item
from .scorers import MetricSpec, ScorerError, metric_spec, scorer_for
from .rules import rule_suites


def declared_suites(project: ProjectPins, project_dir: Path, rules: list[str] = (), *,
                    only: list[str] | None = None, threshold: float | None = None) -> list[EvalSuite]:
    """The project's suites: `eval_suites`, then those in `gate.suites_file` (a JSON list),
    then the shipped suites its promotion rules (`gate.rules` plus `rules`) add.

    A build policy narrows the project's own suites to `only` and sets `threshold` on
    them; the suites a promotion rule adds keep their own rule (e.g. no-forgetting)."""
    suites = list(project.eval_suites)
    if project.gate.suites_file:
        path = project_dir / project.gate.suites_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise GateInputError(f"gate.suites_file {path}: file not found") from None
        try:
            suites += msgspec.json.decode(data, type=list[EvalSuite])
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise GateInputError(f"{path}: {e}") from None
    names = [s.name for s in suites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GateInputError(f"duplicate suite names: {', '.join(dupes)}")
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise GateInputError(f"no eval suite named {', '.join(unknown)} in the project")
        suites = [s for s in suites if s.name in only]
    if threshold is not None:
        suites = [msgspec.structs.replace(s, threshold=threshold) for s in suites]
    try:
        suites += rule_suites([*project.gate.rules, *rules], suites)
    except ValueError as e:
        raise GateInputError(str(e)) from None
    if not suites:
        raise GateInputError("no eval suites declared: add `eval_suites` to tinygpt.project.json (see README, Eval gate)")
    from .environment import bind

    return [bind(s, project, project_dir) if s.kind == "environment" else s for s in suites]


def check_suite(suite: EvalSuite) -> MetricSpec:
    """The suite's metric spec, or a GateInputError for a declaration that cannot work."""
    where = f"suite {suite.name!r}"
    problems = []
    if suite.passes < 1:
        problems.append("passes must be at least 1")
    if not 0.0 <= suite.temperature <= 2.0:
        problems.append("temperature must be within [0, 2]")
    if suite.passes > 1 and suite.temperature == 0.0:
        problems.append("several passes need sampling (temperature > 0); greedy passes would all be the same")
    if suite.max_tokens < 1:
        problems.append("max_tokens must be at least 1")
    if suite.threshold < 0:
        problems.append("threshold must not be negative (it is the tolerated regression)")
    if suite.format == "bfcl" and suite.kind != "tool_call":
        problems.append('format "bfcl" is for kind "tool_call"')
    if suite.scorer and suite.kind != "custom":
        problems.append('`scorer` is only for kind "custom"')
    if not suite.data:
        problems.append("`data` (the rows file) is missing" if suite.kind != "environment" else "it was not bound to its environment")
    if suite.environment is not None and suite.kind != "environment":
        problems.append('`environment` is only for kind "environment"')
    if problems:
        raise GateInputError(f"{where}: " + "; ".join(problems))
    try:
        spec = metric_spec(suite)
        if suite.kind != "environment":  # its checker is the environment's own
            scorer_for(suite)  # imports a custom scorer now: an unknown one is a config error
    except ScorerError as e:
        raise GateInputError(str(e)) from None
    return spec


def data_files(suite: EvalSuite, project_dir: Path) -> list[Path]:
    """The files the suite reads (its data, and BFCL answers), each checked to exist."""
    from .bfcl import default_answers

    files = [project_dir / suite.data]
    if suite.format == "bfcl":
        files.append(project_dir / suite.answers if suite.answers else default_answers(files[0]))
    elif suite.answers:
        raise GateInputError(f"suite {suite.name!r}: `answers` is only for format \"bfcl\"")
    for path in files:
        if not path.is_file():
            raise GateInputError(f"suite {suite.name!r}: data file {path} not found")
    return files


def _check_row(suite: EvalSuite, row: EvalRow) -> str | None:
    """Why `row` cannot be scored by `suite`'s kind, or None."""
    if (row.prompt is None) == (row.messages is None):
        return "a row needs exactly one of `prompt` or `messages`"
    if row.messages is not None and not (row.messages and all(isinstance(m.get("role"), str) for m in row.messages)):
        return "`messages` must be a non-empty list of {role, content} objects"
    if row.max_tokens is not None and row.max_tokens < 1:
        return "max_tokens must be at least 1"
    if suite.kind == "tool_call":
        if not row.tools:
            return "a tool_call row needs `tools`"
        exp = row.expected
        if not isinstance(exp, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments", {}), dict) and set(c) <= {"name", "arguments"}
            for c in exp
        ):
            return '`expected` must be a list of {"name": ..., "arguments": {arg: [acceptable values]}} ([] = no call)'
    elif suite.kind == "exact_match":
        exp = row.expected
        if not (isinstance(exp, str) or (isinstance(exp, list) and exp and all(isinstance(x, str) for x in exp))):
            return "`expected` must be a string or a non-empty list of strings"
    elif suite.kind == "json_schema":
        fmt = row.response_format or {}
        if row.schema is None and not (fmt.get("type") == "json_schema" and (fmt.get("json_schema") or {}).get("schema")):
            return "a json_schema row needs `schema` (or a response_format with json_schema.schema)"
    return None


def _read_jsonl(suite: EvalSuite, path: Path) -> list[Item]:
    decoder = msgspec.json.Decoder(EvalRow)
    items: list[Item] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = decoder.decode(raw)
            except msgspec.ValidationError as e:
                raise GateInputError(f"{path}:{n}: {e}") from None
            except msgspec.DecodeError as e:
                raise GateInputError(f"{path}:{n}: not valid JSON ({e})") from None
            problem = _check_row(suite, row)
            if problem:
                raise GateInputError(f"{path}:{n}: {problem}")
            item_id = row.id if row.id is not None else f"line-{n}"
            if item_id in first_line:
                raise GateInputError(f"{path}:{n}: duplicate id {item_id!r} (first on line {first_line[item_id]})")
            first_line[item_id] = n
            items.append(Item(item_id, n, row))
    return items


def load_items(suite: EvalSuite, project_dir: Path) -> list[Item]:
    """The suite's rows, parsed and checked for its kind."""
    files = data_files(suite, project_dir)
    if suite.kind == "environment":
        from .environment import load_items as environment_items

        items = environment_items(suite)
    elif suite.format == "bfcl":
        from .bfcl import load_bfcl

        items = load_bfcl(files[0], files[1])
    else:
        items = _read_jsonl(suite, files[0])
    if not items:
        raise GateInputError(f"suite {suite.name!r}: {files[0]} has no rows")
    return items
