"""Environment suites: an environment's held-out split as an eval-gate suite.

    {"name": "shop-heldout", "kind": "environment", "environment": "shop", "options": {"tasks": 24}}

The environment is found by name in the project file the gate reads (or among the bundled
ones), never from a job payload: `bind` turns the declaration into a suite whose `data` is
the environment's module file (so editing the environment reruns the suite, like editing
a data file) and whose options carry the entry point the project file names.

Each task of the split is one episode through the runtime serving the target — the same
runner `tinygpt env run` and `tinygpt demo` drive (chat with the environment's tools,
results as `tool` messages, the checker's reward) — greedy unless the suite says
otherwise. An item's score is 1 when the episode reached a reward of 1, else 0, so the
gate's paired comparison of candidate and baseline on the same task ids is the exact
McNemar test (stats.compare); the report adds success per task kind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.evals import EvalSuite, ItemResult, KindScore, SuiteReport
from tinygpt.runtime.contracts.project import ProjectPins

from .rows import EvalRow, GateInputError, Item
from .stats import summarize

DEFAULT_TASKS = 24
OPTIONS = ("tasks", "skip")


def bind(suite: EvalSuite, project: ProjectPins, project_dir: Path) -> EvalSuite:
    """The declared environment suite, resolved against the project file (see the module doc)."""
    from tinygpt.runtime.environments.loader import EnvironmentBroken, entry_for, import_entry

    where = f"suite {suite.name!r}"
    if not suite.environment:
        raise GateInputError(f'{where}: kind "environment" needs `environment` (the name of one of the project\'s environments)')
    if suite.data:
        raise GateInputError(f'{where}: `data` is not for kind "environment" (the environment makes the tasks)')
    unknown = sorted(set(suite.options) - set(OPTIONS))
    if unknown:
        raise GateInputError(f'{where}: unknown option(s) {", ".join(unknown)} for kind "environment" (known: {", ".join(OPTIONS)})')
    for key, least in (("tasks", 1), ("skip", 0)):
        value = suite.options.get(key, DEFAULT_TASKS if key == "tasks" else 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise GateInputError(f"{where}: options.{key} must be an integer of at least {least}, got {value!r}")
    if suite.passes != 1:
        raise GateInputError(f"{where}: an environment suite runs one episode per task (passes must be 1)")
    try:
        entry = entry_for(project, suite.environment)
        cls = import_entry(entry, project_dir)
    except EnvironmentBroken as e:
        raise GateInputError(f"{where}: {e}") from None
    source = getattr(sys.modules.get(getattr(cls, "__module__", "")), "__file__", None)
    if not source:
        raise GateInputError(f"{where}: cannot find the source file of {entry!r}")
    options = {"tasks": DEFAULT_TASKS, "skip": 0, **suite.options, "entry": entry, "project_dir": str(project_dir)}
    return msgspec.structs.replace(suite, data=str(Path(source).resolve()), options=options)


def _env(suite: EvalSuite):
    from tinygpt.runtime.environments.loader import EnvironmentBroken, instantiate

    try:
        return instantiate(suite.options["entry"], Path(suite.options["project_dir"]))
    except EnvironmentBroken as e:
        raise GateInputError(f"suite {suite.name!r}: {e}") from None


def tasks(suite: EvalSuite, env=None):
    """(environment, the suite's held-out tasks)."""
    from tinygpt.runtime.environments.loader import EnvironmentBroken
    from tinygpt.runtime.environments.runner import get_tasks

    env = env or _env(suite)
    n, skip = suite.options["tasks"], suite.options["skip"]
    try:
        got = get_tasks(env, suite.environment, "test", skip + n, suite.seed)[skip:]
    except EnvironmentBroken as e:
        raise GateInputError(f"suite {suite.name!r}: {e}") from None
    if len(got) < n:
        raise GateInputError(f"suite {suite.name!r}: environment {suite.environment!r} gave {len(got)} held-out tasks, not {n}")
    return env, got


def load_items(suite: EvalSuite) -> list[Item]:
    """The suite's tasks as items (ids and kinds; the episodes need the environment itself)."""
    env, got = tasks(suite)
    return [Item(t.id, i + 1, EvalRow(id=t.id, messages=t.messages, tools=env.tools, metadata={"kind": t.kind}))
            for i, t in enumerate(got)]


def run(port: int, suite: EvalSuite, model: str, key: str, concurrency: int, on_done) -> SuiteReport:
    """Every task of the suite once through the runtime on `port`, as `model`."""
    from tinygpt.runtime.environments import runner
    from tinygpt.runtime.environments.loader import EnvironmentBroken

    env, got = tasks(suite)
    cfg = runner.Sampling(model=model, temperature=suite.temperature, max_turns=env.max_turns, max_tokens=env.max_tokens,
                          seed=suite.seed if suite.temperature > 0 else None, source=f"eval:{suite.name}")
    client = runner.make_client(f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    try:
        results = runner.run_many(client, env, suite.environment, [runner.Attempt(t) for t in got], cfg,
                                  concurrency=concurrency, on_done=lambda r: on_done())
    except EnvironmentBroken as e:
        raise GateInputError(f"suite {suite.name!r}: {e}") from None
    scores = [1.0 if r.success else 0.0 for r in results]
    s = summarize(scores)
    items = [ItemResult(id=r.task_id, score=x, passes=[x], output=" ".join(r.calls)[:2000], detail=f"{r.kind}: {r.reason}"[:300],
                        line=i + 1) for i, (r, x) in enumerate(zip(results, scores))]
    kinds: dict[str, list[float]] = {}
    for r, x in zip(results, scores):
        kinds.setdefault(r.kind, []).append(x)
    return SuiteReport(
        suite=suite.name, metric=suite.metric, direction="higher", n=len(items), passes=1, mean=s.mean, std=s.std,
        stderr=s.stderr, ci95=s.ci95, items=items, key=key, seconds=time.perf_counter() - start,
        per_kind={k: KindScore(n=len(v), mean=sum(v) / len(v)) for k, v in sorted(kinds.items())},
    )
