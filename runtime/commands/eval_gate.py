"""Gate a specialist on the project's eval suites: the candidate (base model + adapter)
against its baseline (the pinned version, the recorded baseline or the base model).

Exit codes: 0 pass, 1 regression, 2 configuration or input error (never a pass).
Writes gate-result.json (atomically) and prints a summary table. Results are cached by
content hash of model, adapter, suite data and settings: a commit that changes none of
them decides from the cache in well under two seconds, without loading a model.
--update-baseline records the candidate as the new baseline (tinygpt.eval-baseline.json);
only that flag ever changes the baseline."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from tinygpt.runtime.contracts.evals import PromotionRule

EXAMPLE = (
    "tinygpt eval-gate\n"
    "  tinygpt eval-gate --candidate adapters/weather --specialist weather --out gate-result.json\n"
    "  tinygpt eval-gate --specialist weather --passes 5          # 5 sampled passes per row\n"
    "  tinygpt eval-gate --candidate adapters/weather --update-baseline"
)

EXIT = {"pass": 0, "regression": 1, "error": 2}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=Path, help="tinygpt.project.json (default: the nearest one at or above the cwd)")
    parser.add_argument("--candidate", type=Path, metavar="ADAPTER_DIR", help="adapter directory to gate (mlx-lm format)")
    parser.add_argument("--specialist", metavar="NAME", help="the specialist gated (default: the adapter's manifest name, or the only pinned one)")
    parser.add_argument(
        "--baseline", metavar="REF",
        help="compare against: base | pinned | recorded | none | an adapter directory | NAME[@VERSION] "
             "(default: gate.baseline of the project, see README)",
    )
    parser.add_argument("--update-baseline", action="store_true", help="record the candidate as the new baseline (on purpose only)")
    parser.add_argument("--passes", type=int, metavar="K", help="K passes per row (K > 1 samples; temperature 0.7 unless the suite sets one)")
    parser.add_argument("--temperature", type=float, help="sampling temperature for every suite")
    parser.add_argument("--no-cache", action="store_true", help="rerun everything (results are still stored)")
    parser.add_argument("--out", type=Path, default=Path("gate-result.json"), help="where to write the GateResult (default: ./gate-result.json)")
    parser.add_argument("--json", action="store_true", help="print the GateResult as JSON instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--rule", action="append", default=[], choices=typing.get_args(PromotionRule),
                        help="a promotion rule on top of the project's gate.rules (no-forgetting: no significant "
                             "loss on the shipped general tool-calling suite)")


def _num(x: float) -> str:
    return f"{0.0 if abs(x) < 1e-9 else x:.3g}"


def _table(result):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"eval gate: {result.extra.get('candidate', '')} vs {result.baseline_source or '-'}", title_justify="left")
    for col in ("suite", "metric", "candidate", "95% CI", "baseline", "delta", "thr.", "clear?", ""):
        table.add_column(col, justify="right" if col in ("delta", "thr.") else "left", overflow="fold")
    reports = {s.suite: s for s in result.candidate.suites}
    for v in result.suites:
        rep = reports.get(v.suite)
        ci = f"{_num(rep.ci95[0])}–{_num(rep.ci95[1])}" if rep else "-"
        arrow = "↑" if v.direction == "higher" else "↓"
        delta = "-" if v.delta is None else f"{v.delta:+.4g}"
        clear = "-" if v.delta is None else ("yes" if v.significant else "no") + (f" p={v.p_value:.2g}" if v.p_value is not None else "")
        mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
        base = "-" if v.baseline is None else f"{v.baseline:.4g}"
        table.add_row(escape(v.suite), f"{v.metric} {arrow}", _num(v.candidate), ci, base, delta, f"{v.threshold:g}", clear, mark)
    return table


def _per_kind(result, suite: str) -> str:
    """Environment suites: success per task kind, baseline → candidate."""
    cand = result.candidate.suite(suite)
    base = result.baseline.suite(suite) if result.baseline else None
    if cand is None or not cand.per_kind:
        return ""
    base_kinds = base.per_kind if base else {}
    return ", ".join(f"{k} {f'{base_kinds[k].mean:.0%} → ' if k in base_kinds else ''}{c.mean:.0%} (n={c.n})"
                     for k, c in cand.per_kind.items())


def run(args: argparse.Namespace) -> int:
    import logging

    import msgspec
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.runtime.contracts.io import write_json
    from tinygpt.workers.evalgate import GateInputError, error_result, evaluate_gate

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    say = (lambda msg: None) if args.quiet or args.json else (lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
    logging.getLogger("tinygpt").setLevel(logging.WARNING)
    from ..progress_bar import progress_bar

    try:
        # A bar on a terminal only: a pre-commit hook's log or CI keeps the plain lines.
        with progress_bar(err, "evaluating", show=err.is_terminal and not (args.quiet or args.json)) as progress:
            result = evaluate_gate(
                args.project, candidate=args.candidate, specialist=args.specialist, baseline=args.baseline,
                passes=args.passes, temperature=args.temperature, update_baseline=args.update_baseline,
                use_cache=False if args.no_cache else None, rules=args.rule, out=args.out, say=say, progress=progress,
            )
    except GateInputError as e:
        result = error_result(str(e))
        try:
            write_json(args.out, result)
        except OSError:
            pass  # the message below is what matters
        if args.json:
            out.print_json(msgspec.json.encode(result).decode())
        err.print(f"[red]error[/]: {escape(str(e))}", highlight=False)
        return EXIT["error"]
    if args.json:
        out.print_json(msgspec.json.encode(result).decode())
        return 0 if args.update_baseline else EXIT[result.verdict]
    out.print(_table(result))
    for v in result.suites:
        out.print(f"  {'[green]✓[/]' if v.passed else '[red]✗[/]'} {escape(v.suite)}: {escape(v.reason)}", highlight=False)
        if kinds := _per_kind(result, v.suite):
            out.print(f"    per task kind (baseline → candidate): {escape(kinds)}", highlight=False)
    cache = result.extra.get("cache", {})
    ran = ", ".join(cache.get("ran", [])) or "nothing (all from the cache)"
    out.print(f"[dim]ran: {escape(ran)}; {result.extra.get('seconds', 0):.2f} s; result: {escape(str(args.out))}[/]")
    color = "green" if result.verdict == "pass" else "red"
    out.print(f"[bold {color}]{result.verdict.upper()}[/]: {escape(result.message)}", highlight=False)
    if args.update_baseline:
        if result.verdict == "regression":
            out.print("[yellow]recorded although it is a regression against the previous baseline (--update-baseline)[/]")
        return 0
    return EXIT[result.verdict]
