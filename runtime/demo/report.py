"""The demo's numbers: success rates per task kind, the JSON summary, and the rich tables."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from tinygpt.runtime.contracts.base import Contract

from .agent import Episode


class Score(Contract):
    """Held-out success of one model (greedy), overall and per task kind."""

    model: str
    served_by: str
    n: int
    successes: int
    success_rate: float
    # 95% Wilson interval of the success rate (n is small: say how sure we are).
    ci95: tuple[float, float]
    first_call_accuracy: float
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


class Collection(Contract):
    """The sampled attempts on training tasks (rejection sampling: keep the successes)."""

    tasks: int
    attempts: int
    episodes: int
    successes: int
    tasks_solved: int
    temperature: float
    per_kind: dict[str, tuple[int, int]] = {}
    seconds: float = 0.0


class DemoSummary(Contract):
    """Everything `tinygpt demo` measured, written as JSON next to its work files."""

    model: str
    specialist: str
    project: str
    runtime_url: str
    before: Score
    after: Score | None
    collection: Collection
    pipeline: dict[str, Any]
    training: dict[str, Any] | None
    gate: dict[str, Any] | None
    published: dict[str, Any] | None
    settings: dict[str, Any]
    seconds: dict[str, float]
    improved: bool = False
    note: str = ""
    paired: Paired | None = None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _per_kind(episodes: list[Episode]) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in episodes:
        counts[e.outcome.kind][0] += e.outcome.success
        counts[e.outcome.kind][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


def score(model: str, episodes: list[Episode], seconds: float = 0.0) -> Score:
    n = len(episodes)
    k = sum(e.outcome.success for e in episodes)
    served = sorted({e.served_by for e in episodes})
    return Score(
        model=model, served_by=", ".join(served), n=n, successes=k, success_rate=k / n if n else 0.0,
        ci95=wilson(k, n), first_call_accuracy=sum(e.outcome.first_call_ok for e in episodes) / n if n else 0.0,
        per_kind=_per_kind(episodes), seconds=seconds, solved=sorted({e.task_id for e in episodes if e.outcome.success}),
    )  # fmt: skip


def paired(before: Score, after: Score) -> Paired:
    """Which of the same tasks flipped between `before` and `after`."""
    b, a = set(before.solved), set(after.solved)
    gained, lost = len(a - b), len(b - a)
    return Paired(gained=gained, lost=lost, p_value=sign_test(gained, lost))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign (binomial, p = 1/2) test; 1.0 when nothing flipped."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def collection(tasks: int, attempts: int, temperature: float, episodes: list[Episode], seconds: float) -> Collection:
    return Collection(
        tasks=tasks, attempts=attempts, episodes=len(episodes), successes=sum(e.outcome.success for e in episodes),
        tasks_solved=len({e.task_id for e in episodes if e.outcome.success}), temperature=temperature,
        per_kind=_per_kind(episodes), seconds=seconds,
    )  # fmt: skip


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
    table.add_row("first call right", f"{b.first_call_accuracy:.0%}", f"{a.first_call_accuracy:.0%}" if a else "-")
    if summary.paired is not None:
        p = summary.paired
        table.add_row("same tasks flipped", "", f"+{p.gained} / −{p.lost} (sign test p={p.p_value:.3g})")
    for kind in sorted(set(b.per_kind) | set(a.per_kind if a else {})):
        after = _pct(*a.per_kind[kind]) if a and kind in a.per_kind else "-"
        table.add_row(f"  {kind}", _pct(*b.per_kind.get(kind, (0, 0))), after)
    return table


def loop_table(summary: DemoSummary):
    """What each stage of the loop did, and how long it took."""
    from rich.table import Table

    c, p = summary.collection, summary.pipeline
    table = Table(title="the loop", title_justify="left")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    s = summary.seconds
    table.add_row("baseline (held-out, greedy)", _pct(summary.before.successes, summary.before.n), f"{s.get('before', 0):.0f}")
    table.add_row(
        "collect (rejection sampling)",
        f"{c.episodes} runs of {c.tasks} tasks at T={c.temperature}: {c.successes} succeeded, {c.tasks_solved} tasks solved",
        f"{s.get('collect', 0):.0f}",
    )
    if p:
        table.add_row(
            "pipeline (ingest ▶ dedupe ▶ label ▶ dataset)",
            f"{p.get('ingested', 0)} ingested, {p.get('duplicates', 0)} duplicates, {p.get('kept_by_label', 0)} kept by label; "
            f"rows {p.get('rows', {})}",
            f"{s.get('pipeline', 0):.0f}",
        )
    if summary.training:
        t = summary.training
        m = t.get("metrics", {})
        loss = f"val loss {m['initial_val_loss']:.3f} → {m['val_loss']:.3f}" if "val_loss" in m and "initial_val_loss" in m else ""
        table.add_row("train (LoRA)", f"{t.get('steps_done')} steps, best {t.get('best_step')}; {loss}", f"{s.get('train', 0):.0f}")
    if summary.gate:
        g = summary.gate
        base = "-" if g.get("baseline") is None else f"{g['baseline']:.0%}"
        table.add_row("gate (held-out first call)", f"{g.get('verdict')}: candidate {g.get('candidate', 0):.0%} vs base {base} (n={g.get('n')})",
                      f"{s.get('gate', 0):.0f}")  # fmt: skip
    if summary.published:
        pub = summary.published
        table.add_row("publish + hot swap", f"{pub.get('model')} via {pub.get('via')}", f"{s.get('publish', 0):.1f}")
    table.add_row("after (held-out, greedy)", _pct(summary.after.successes, summary.after.n) if summary.after else "skipped",
                  f"{s.get('after', 0):.0f}")  # fmt: skip
    return table
