"""Watch `tinygpt up` get better at a task by itself, driven only by an agent's traffic.

The demo plays a user's agent: it starts `tinygpt up` on a project file it writes in its
work directory (the specialist pinned "*", a build policy, the environment's held-out
split as the gate) — or talks to one already running (--url) — and then only talks to
the runtime: chat completions with the environment's tools, tool results as `tool`
messages, the checker's reward through the feedback endpoint. The daemon ingests,
labels, builds, gates, publishes and hot-swaps by itself; the demo waits, then measures
held-out success before / after on the same tasks (paired, per task kind).
  --task fileops   six file tools on a sandboxed in-memory filesystem (the default)
  --task shop      a shop API: search products, add to and remove from the cart, place the order
Prints the before / after table and writes demo-summary.json (with per-stage wall times
and peak memory) to the work directory. Exit codes: 0 the loop completed (the summary
says whether it improved), 1 it stopped early (nothing to train on, the gate refused),
2 bad options.

With --url the running daemon's own project file must carry the build policy (write one
with a local demo run: <work>/tinygpt.project.json) and its home must be this one."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = (
    "tinygpt demo\n"
    "  tinygpt demo --task shop --rounds 2 --explore 0.25          # the shop API family, two rounds\n"
    "  tinygpt demo --tasks 48 --attempts 4 --iters 48            # more data, longer training\n"
    "  tinygpt demo --tasks 8 --attempts 2 --test-tasks 8 --iters 10   # a quick look\n"
    "  tinygpt demo --url http://127.0.0.1:8000                   # a `tinygpt up` already running"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from tinygpt.runtime.demo.loop import DemoConfig, TrainSettings

    d, t = DemoConfig(work=""), TrainSettings()
    parser.add_argument("--task", default="fileops", choices=["fileops", "shop"], help="bundled environment (default fileops)")
    parser.add_argument("--rounds", type=int, default=d.rounds,
                        help="rounds: collect with what serves now, wait for the next promoted version (default 1)")
    parser.add_argument("--explore", type=float, default=d.explore, help="fraction of attempts exploring a forced tool (default 0)")
    parser.add_argument("--hindsight", action=argparse.BooleanOptionalAction, default=d.hindsight,
                        help="record failed runs again under the task they did achieve, so they train too (default: off)")
    parser.add_argument("--model", default=d.model, help=f"base model: a cached name or a model directory (default: {d.model})")
    parser.add_argument("--work", type=Path, help="where the project file, up's log and the summary go "
                        "(default: <tinygpt home>/demo/<timestamp>)")
    parser.add_argument("--tasks", type=int, default=d.tasks, help=f"training tasks (default: {d.tasks})")
    parser.add_argument("--attempts", type=int, default=d.attempts, help=f"sampled attempts per training task (default: {d.attempts})")
    parser.add_argument("--test-tasks", type=int, default=d.test_tasks, help=f"held-out tasks for before / after (default: {d.test_tasks})")
    parser.add_argument("--gate-tasks", type=int, default=d.gate_tasks, help=f"other held-out tasks for the eval gate (default: {d.gate_tasks})")
    parser.add_argument("--iters", type=int, default=t.steps, help=f"LoRA training steps (default: {t.steps})")
    parser.add_argument("--batch-size", type=int, default=t.batch_size, help=f"training batch size (default: {t.batch_size})")
    parser.add_argument("--learning-rate", type=float, default=t.learning_rate, help=f"peak learning rate (default: {t.learning_rate})")
    parser.add_argument("--lora-layers", type=int, default=t.num_layers, help=f"adapt the last N blocks, -1 all (default: {t.num_layers})")
    parser.add_argument("--temperature", type=float, default=d.temperature, help=f"sampling temperature of the attempts (default: {d.temperature})")
    parser.add_argument("--max-turns", type=int, default=None, help="requests per task before the agent gives up (default: the environment's)")
    parser.add_argument("--concurrency", type=int, default=None, help="agent sessions at once (default: 8 on a CPU, 48 on a GPU)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of tasks, sampling and training (default: 0)")
    parser.add_argument("--name", default=None, help="specialist name (default: the task's name)")
    parser.add_argument("--project", help="project the sessions are recorded under (default: demo-<task>-<timestamp>)")
    parser.add_argument("--url", help="drive this running `tinygpt up` instead of starting one")
    parser.add_argument("--api-key", help="API key of that runtime")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _config(args: argparse.Namespace):
    import time

    from tinygpt.runtime import paths
    from tinygpt.runtime.demo.loop import DemoConfig, TrainSettings

    for name in ("tasks", "attempts", "test_tasks", "gate_tasks", "iters", "batch_size", "concurrency", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_turns is not None and args.max_turns < 1:
        raise ValueError(f"--max-turns must be at least 1, got {args.max_turns}")
    if not 0.0 < args.temperature <= 2.0:
        raise ValueError(f"--temperature must be in (0, 2] (sampling needs randomness), got {args.temperature}")
    if not 0.0 <= args.explore <= 1.0:
        raise ValueError(f"--explore must be within [0, 1], got {args.explore}")
    work = args.work or paths.subdir("demo") / time.strftime("%Y%m%d-%H%M%S")
    return DemoConfig(
        work=str(work), task=args.task, model=args.model, url=args.url, api_key=args.api_key, name=args.name or args.task,
        project=args.project, tasks=args.tasks, attempts=args.attempts, test_tasks=args.test_tasks, gate_tasks=args.gate_tasks,
        rounds=args.rounds, explore=args.explore, hindsight=args.hindsight, temperature=args.temperature, max_turns=args.max_turns,
        concurrency=args.concurrency, seed=args.seed,
        train=TrainSettings(steps=args.iters, batch_size=args.batch_size, learning_rate=args.learning_rate, num_layers=args.lora_layers),
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    import msgspec
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from openai import OpenAIError

    from tinygpt.runtime.demo import loop, report

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = _config(args)
    except (ValueError, msgspec.ValidationError) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2

    bars = Progress("  agent runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)

    def progress(total: int):
        task = bars.add_task("runs", total=total)
        return lambda: bars.advance(task)

    def terminated(signum, frame):
        # SIGTERM unwinds like Ctrl-C, so the loop's cleanup stops the `tinygpt up` it started
        # (its own process group: nothing else would) instead of leaving it running.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    summary = None
    try:
        with bars:
            summary = loop.run_demo(cfg, say=lambda m: err.print(escape(m), highlight=False), progress=progress)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the daemon was stopped")
        return 130
    except loop.DemoError as e:
        err.print(f"[yellow]the loop stopped[/]: {escape(str(e))}")
    except (ValueError, OSError, OpenAIError) as e:
        # A runtime that cannot be reached, a model that cannot be loaded.
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 1
    path = Path(cfg.work).resolve() / loop.SUMMARY_FILE
    if summary is None:
        if path.is_file():
            err.print(f"what was measured: {path}")
        return 1
    if args.json:
        print(msgspec.json.encode(summary).decode())
        return 0
    out = Console(soft_wrap=True)
    out.print(report.loop_table(summary))
    out.print(report.before_after_table(summary))
    b, a = summary.before, summary.after
    out.print(f"held-out success: {b.success_rate:.0%} before → {a.success_rate:.0%} after "
              f"({'improved' if summary.improved else 'not improved'}); "
              f"{summary.seconds.get('total', 0) / 60:.1f} min in all; summary: {path}")
    return 0
