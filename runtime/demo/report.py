"""The demo's numbers: success rates per task kind, what each round and build did, the JSON
summary, and the rich tables."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.environments import EpisodeResult


class Score(Contract):
    """Held-out success of one model (greedy), overall and per task kind."""

    model: str
    served_by: str
    n: int
    successes: int
    success_rate: float
    # 95% Wilson interval of the success rate (n is small: say how sure we are).
    ci95: tuple[float, float]
    per_kind: dict[str, tuple[int, int]] = {}
    seconds: float = 0.0
    # Ids of the tasks that succeeded: before and after run the same tasks, so the
    # comparison can be paired (which tasks flipped), not just two rates side by side.
    solved: list[str] = []


class Paired(Contract):
    """Before vs after on the same tasks: tasks gained, tasks lost, and a sign test."""

    gained: int
    lost: int
    # Exact two-sided sign test on the flipped tasks: the chance of a split at least this
    # lopsided if the specialist were no better than the base.
    p_value: float
    # Per task kind: (gained, lost).
    per_kind: dict[str, tuple[int, int]] = {}


class Collection(Contract):
    """The sampled attempts on training tasks (rejection sampling: keep the successes)."""

    tasks: int
    attempts: int
    episodes: int
    successes: int
    tasks_solved: int
    temperature: float
    collected_with: str = ""
    explored: int = 0
    explored_successes: int = 0
    per_kind: dict[str, tuple[int, int]] = {}
    seconds: float = 0.0
    # Failed runs recorded again under the task they achieved (hindsight), by that task's kind.
    relabeled: int = 0
    relabeled_per_kind: dict[str, int] = {}


class Build(Contract):
    """One build the daemon ran by itself, read back from its files under <home>/builds/."""

    build_id: str
    folder: str
    rows: int
    verdict: str
    message: str = ""
    version: str = ""
    # The gate's per-suite numbers and its environment suite's success per task kind.
    numbers: list[str] = []
    per_kind: dict[str, Any] = {}
    # Wall seconds per stage: dataset, finetune, gate, publish (from the files' times) and
    # swap (publish until the runtime served the version).
    seconds: dict[str, float] = {}


class Round(Contract):
    round: int
    collection: Collection
    # Kept rows the daemon counted for this round's build when the demo let it start.
    rows: int = 0
    build: Build | None = None
    promoted: str = ""


class DemoSummary(Contract):
    """Everything `tinygpt demo` measured, written as JSON next to its work files."""

    model: str
    task: str
    specialist: str
    project: str
    runtime_url: str
    before: Score
    after: Score | None = None
    rounds: list[Round] = []
    settings: dict[str, Any] = {}
    # Wall seconds per stage, summed over rounds: before, collect, settle (the daemon's
    # pipeline catching up), build_dataset, build_finetune, build_gate, build_publish,
    # swap, after, total.
    seconds: dict[str, float] = {}
    # Peak resident memory of `tinygpt up` and every process under it (its Redis, its
    # workers and what they spawn), sampled twice a second; None with --url.
    peak_rss_mb: float | None = None
    daemon: dict[str, Any] = {}
    improved: bool = False
    note: str = ""
    paired: Paired | None = None


def per_kind(results: list[EpisodeResult]) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for r in results:
        c = counts.setdefault(r.kind, [0, 0])
        c[0] += r.success
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


def score(model: str, results: list[EpisodeResult], seconds: float = 0.0) -> Score:
    from tinygpt.workers.evalgate.stats import wilson

    n = len(results)
    k = sum(r.success for r in results)
    return Score(
        model=model, served_by=", ".join(sorted({r.served_by for r in results})), n=n, successes=k,
        success_rate=k / n if n else 0.0, ci95=wilson(k, n), per_kind=per_kind(results), seconds=seconds,
        solved=sorted({r.task_id for r in results if r.success}),
    )


def paired(before: Score, after: Score, kinds: dict[str, str]) -> Paired:
    """Which of the same tasks flipped between `before` and `after` (`kinds`: task id -> kind)."""
    from tinygpt.workers.evalgate.stats import sign_test

    b, a = set(before.solved), set(after.solved)
    by_kind: dict[str, list[int]] = {}
    for tid in a ^ b:
        c = by_kind.setdefault(kinds.get(tid, "?"), [0, 0])
        c[0 if tid in a else 1] += 1
    gained, lost = len(a - b), len(b - a)
    return Paired(gained=gained, lost=lost, p_value=sign_test(gained, lost),
                  per_kind={k: (v[0], v[1]) for k, v in sorted(by_kind.items())})


def collection(tasks: int, attempts: int, temperature: float, served: str, results: list[EpisodeResult], seconds: float) -> Collection:
    explored = [r for r in results if r.forced_tool is not None]
    relabeled = Counter(r.relabeled_as for r in results if r.relabeled_as is not None)
    return Collection(
        tasks=tasks, attempts=attempts, episodes=len(results), successes=sum(r.success for r in results),
        tasks_solved=len({r.task_id for r in results if r.success}), temperature=temperature, collected_with=served,
        explored=len(explored), explored_successes=sum(r.success for r in explored), per_kind=per_kind(results),
        seconds=seconds, relabeled=sum(relabeled.values()), relabeled_per_kind=dict(sorted(relabeled.items())),
    )


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "-"


def before_after_table(summary: DemoSummary):
    """The headline: held-out success before (base model) and after (the specialist)."""
    from rich.table import Table

    b, a = summary.before, summary.after
    table = Table(title="held-out tasks, greedy: base model vs specialist", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("served by", b.served_by, a.served_by if a else "-")
    table.add_row("task success", _pct(b.successes, b.n), _pct(a.successes, a.n) if a else "-")
    table.add_row("95% interval", f"{b.ci95[0]:.0%}–{b.ci95[1]:.0%}", f"{a.ci95[0]:.0%}–{a.ci95[1]:.0%}" if a else "-")
    if summary.paired is not None:
        p = summary.paired
        table.add_row("same tasks flipped", "", f"+{p.gained} / −{p.lost} (sign test p={p.p_value:.3g})")
    for kind in sorted(set(b.per_kind) | set(a.per_kind if a else {})):
        after = _pct(*a.per_kind[kind]) if a and kind in a.per_kind else "-"
        flips = summary.paired.per_kind.get(kind) if summary.paired else None
        table.add_row(f"  {kind}", _pct(*b.per_kind.get(kind, (0, 0))), after + (f"  +{flips[0]}/−{flips[1]}" if flips else ""))
    return table


def loop_table(summary: DemoSummary):
    """What each stage of the loop did, and how long it took."""
    from rich.table import Table

    table = Table(title="the loop (the daemon builds by itself)", title_justify="left")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    s = summary.seconds
    table.add_row("baseline (held-out, greedy)", _pct(summary.before.successes, summary.before.n), f"{s.get('before', 0):.0f}")
    for r in summary.rounds:
        c = r.collection
        explored = f" ({c.explored_successes}/{c.explored} exploring)" if c.explored else ""
        relabeled = f", {c.relabeled} failed runs relabeled" if c.relabeled else ""
        table.add_row(f"round {r.round}: collect with {c.collected_with}",
                      f"{c.episodes} runs of {c.tasks} tasks at T={c.temperature}: {c.successes} succeeded{explored}, "
                      f"{c.tasks_solved} tasks solved{relabeled}", f"{c.seconds:.0f}")
        b = r.build
        if b is None:
            continue
        bs = b.seconds
        table.add_row("  daemon: dataset ▶ finetune ▶ gate ▶ publish",
                      f"{b.rows} rows; build {b.build_id}: {b.verdict}" + (f" → {r.promoted}" if r.promoted else "")
                      + (f"; {'; '.join(b.numbers)}" if b.numbers else ""),
                      " / ".join(f"{bs.get(k, 0):.0f}" for k in ("dataset", "finetune", "gate", "publish")))
        if "swap" in bs:
            table.add_row("  hot swap (pin \"*\")", r.promoted, f"{bs['swap']:.1f}")
    table.add_row("after (held-out, greedy)", _pct(summary.after.successes, summary.after.n) if summary.after else "skipped",
                  f"{s.get('after', 0):.0f}")
    if summary.peak_rss_mb is not None:
        table.add_row("peak memory of up + workers", f"{summary.peak_rss_mb:.0f} MB RSS", "")
    return table
