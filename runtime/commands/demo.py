"""Run the self-improvement loop end to end on a bundled file-operations task.

A scripted agent (an ordinary OpenAI client) works tasks on a sandboxed in-memory
filesystem with six tools (list_dir, read_file, write_file, move_file, delete_file,
search) through the runtime, which records every session. The demo then
  1. measures held-out success of the base model (greedy),
  2. samples several attempts per training task and reports each verdict as feedback,
  3. runs the recordings through the queue (ingest, dedupe, label, dataset) with a
     burst worker, keeping only successful runs,
  4. trains a LoRA specialist on them (`tinygpt train`),
  5. gates it against the base model on other held-out tasks (the eval gate),
  6. hot-swaps it into the running runtime and measures held-out success again.
Prints the before / after table and writes demo-summary.json to the work directory.
Exit codes: 0 the loop completed (the summary says whether it improved), 1 it stopped
early (nothing to train on, the gate refused), 2 bad options.

With --url the demo uses a runtime that is already running on this machine; start it
with `tinygpt serve --no-queue --admin-key KEY --trajectories-dir DIR --adapter-dir
<tinygpt home>/demo/specialists` (the admin API loads only from listed directories) and
pass the same --admin-key and --trajectories-dir (the demo enqueues only its training sessions)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = (
    "tinygpt demo\n"
    "  tinygpt demo --task shop --rounds 2 --explore 0.25          # the shop API family, two rounds\n"
    "  tinygpt demo --tasks 48 --attempts 4 --iters 48            # more data, longer training\n"
    "  tinygpt demo --tasks 8 --attempts 2 --test-tasks 8 --iters 10   # a quick look\n"
    "  tinygpt demo --url http://127.0.0.1:8000 --admin-key KEY --trajectories-dir /srv/traj"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from tinygpt.runtime.demo.loop import DemoConfig
    from tinygpt.runtime.demo.specialist import TrainSettings

    d, t = DemoConfig(work=""), TrainSettings()
    parser.add_argument("--task", default="fileops", choices=["fileops", "shop"],
                        help="task family: fileops (the demo's loop) or shop (a bundled environment, run in rounds; default fileops)")
    parser.add_argument("--rounds", type=int, default=1, help="--task shop: rounds of expert iteration (default 1)")
    parser.add_argument("--explore", type=float, default=0.0, help="--task shop: fraction of attempts exploring a forced tool (default 0)")
    parser.add_argument("--model", default=d.model, help=f"base model: a cached name or a model directory (default: {d.model})")
    parser.add_argument("--work", type=Path, help="where trajectories, the adapter, the registry, the gate result and the summary go "
                        "(default: <tinygpt home>/demo/<timestamp>)")  # fmt: skip
    parser.add_argument("--tasks", type=int, default=d.tasks, help=f"training tasks (default: {d.tasks})")
    parser.add_argument("--attempts", type=int, default=d.attempts, help=f"sampled attempts per training task (default: {d.attempts})")
    parser.add_argument("--test-tasks", type=int, default=d.test_tasks, help=f"held-out tasks for before / after (default: {d.test_tasks})")
    parser.add_argument("--gate-tasks", type=int, default=d.gate_tasks, help=f"other held-out tasks for the eval gate (default: {d.gate_tasks})")
    parser.add_argument("--iters", type=int, default=t.steps, help=f"LoRA training steps (default: {t.steps})")
    parser.add_argument("--batch-size", type=int, default=t.batch_size, help=f"training batch size (default: {t.batch_size})")
    parser.add_argument("--learning-rate", type=float, default=t.learning_rate, help=f"peak learning rate (default: {t.learning_rate})")
    parser.add_argument("--lora-layers", type=int, default=t.num_layers, help=f"adapt the last N blocks, -1 all (default: {t.num_layers})")
    parser.add_argument("--temperature", type=float, default=d.temperature, help=f"sampling temperature of the attempts (default: {d.temperature})")
    parser.add_argument("--max-turns", type=int, default=d.max_turns, help=f"requests per task before the agent gives up (default: {d.max_turns})")
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help=f"agent sessions at once (default: {d.concurrency})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of tasks, sampling and training (default: 0)")
    parser.add_argument("--name", default=d.name, help=f"specialist name (default: {d.name})")
    parser.add_argument("--project", help="project the sessions are recorded under (default: demo-<timestamp>)")
    parser.add_argument("--url", help="use this running runtime instead of starting one in-process")
    parser.add_argument("--api-key", help="API key of that runtime")
    parser.add_argument("--admin-key", help="admin key of that runtime (to load the specialist)")
    parser.add_argument("--trajectories-dir", help="that runtime's --trajectories-dir")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _config(args: argparse.Namespace):
    import time

    from tinygpt.runtime import paths
    from tinygpt.runtime.demo.loop import DemoConfig
    from tinygpt.runtime.demo.specialist import TrainSettings

    for name in ("tasks", "attempts", "test_tasks", "gate_tasks", "iters", "batch_size", "max_turns", "concurrency"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0.0 < args.temperature <= 2.0:
        raise ValueError(f"--temperature must be in (0, 2] (sampling needs randomness), got {args.temperature}")
    work = args.work or paths.subdir("demo") / time.strftime("%Y%m%d-%H%M%S")
    return DemoConfig(
        work=str(work), model=args.model, url=args.url, api_key=args.api_key, admin_key=args.admin_key,
        trajectories_dir=args.trajectories_dir, name=args.name, project=args.project, tasks=args.tasks,
        attempts=args.attempts, test_tasks=args.test_tasks, gate_tasks=args.gate_tasks, temperature=args.temperature,
        max_turns=args.max_turns, concurrency=args.concurrency, seed=args.seed,
        train=TrainSettings(steps=args.iters, batch_size=args.batch_size, learning_rate=args.learning_rate,
                            num_layers=args.lora_layers, seed=args.seed),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import logging

    import msgspec
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from openai import OpenAIError

    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.queue.connection import RedisUnavailable
    from tinygpt.runtime.demo import loop, report

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = _config(args)
    except ValueError as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2

    bars = Progress("  agent runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)

    def progress(total: int):
        task = bars.add_task("runs", total=total)
        return lambda: bars.advance(task)

    if args.task != "fileops":
        return _environment_demo(args, cfg, bars, progress, err)

    summary = None
    try:
        with bars:
            summary = loop.run_demo(cfg, say=lambda m: err.print(escape(m), highlight=False), progress=progress)
    except loop.DemoError as e:
        err.print(f"[yellow]the loop stopped[/]: {escape(str(e))}")
    except (ValueError, OSError, RedisUnavailable, OpenAIError) as e:
        # A runtime or Redis that cannot be reached, a model that cannot be loaded.
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
              f"{summary.seconds.get('total', 0) / 60:.1f} min in all; summary: {path}")  # fmt: skip
    return 0


def _environment_demo(args, cfg, bars, progress, err) -> int:
    """`--task shop`: the bundled environment through `tinygpt env run`'s rounds."""
    import time

    import msgspec
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.queue.connection import RedisUnavailable
    from tinygpt.runtime.commands.env import per_kind_change, rounds_table
    from tinygpt.runtime.contracts.environments import EnvRunSettings, EnvTrainSettings
    from tinygpt.runtime.demo.environment import run_environment_demo
    from tinygpt.runtime.environments.factory import RECORD_FILE, EnvRunError
    from tinygpt.runtime.environments.loader import EnvironmentBroken

    name = args.name if args.name != "fileops" else args.task
    try:
        settings = EnvRunSettings(
            environment=args.task, specialist=name, train_tasks=cfg.tasks, test_tasks=cfg.test_tasks, attempts=cfg.attempts,
            explore=args.explore, rounds=args.rounds, temperature=cfg.temperature, concurrency=cfg.concurrency, seed=cfg.seed,
            train=EnvTrainSettings(steps=cfg.train.steps, batch_size=cfg.train.batch_size, learning_rate=cfg.train.learning_rate,
                                   num_layers=cfg.train.num_layers),
        )  # fmt: skip
    except (ValueError, msgspec.ValidationError) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2
    work = Path(cfg.work).resolve()
    project = cfg.project or f"demo-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        with bars:
            record = run_environment_demo(work, cfg.model, project, settings, say=lambda m: err.print(escape(m), highlight=False),
                                          progress=progress)  # fmt: skip
    except (EnvRunError, EnvironmentBroken) as e:
        err.print(f"[yellow]the loop stopped[/]: {escape(str(e))}\nwhat was measured: {work / RECORD_FILE}")
        return 1
    except (ValueError, OSError, RedisUnavailable) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 1
    if args.json:
        print(msgspec.json.encode(record).decode())
        return 0
    out = Console(soft_wrap=True)
    out.print(rounds_table(record))
    b, f = record.baseline, record.final
    out.print(f"held-out success: {b.successes}/{b.n} ({b.success_rate:.0%}) on {b.model} → {f.successes}/{f.n} "
              f"({f.success_rate:.0%}) on {f.model}; {per_kind_change(b, f)}; record: {work / RECORD_FILE}")  # fmt: skip
    return 0
