"""Environments: list them, check one's checker on the current model, or train on one.

An environment is your tools, tasks and checker in a Python module, named in
tinygpt.project.json (`"environments": [{"name": "shop", "entry": "my_pkg.shop:Shop"}]`;
`fileops` and `shop` are bundled). `check` runs a few episodes through a runtime on the
project's base model and prints each reward with its reason and the success per task
kind — what to look at before training. `run` does rounds of expert iteration: collect
episodes through the runtime (part of them exploring under a constrained tool_choice),
keep the successes through the pipeline, train a LoRA, gate it on the held-out split
against what serves (paired, exact sign test, per kind), publish it when it passes and
collect the next round with it. `--queue` hands the run to a `train` worker instead.
Exit codes: 0 done, 1 the environment is broken or the run stopped (the reason is
printed), 2 bad options or project file."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = (
    "tinygpt env list\n"
    "  tinygpt env check shop --tasks 10\n"
    "  tinygpt env run shop --specialist shop-agent --rounds 2 --explore 0.25 --gate better --alpha 0.05\n"
    "  tinygpt env run my-env --queue          # a `tinygpt up` / `tinygpt worker --queues train` runs it"
)


def configure(parser: argparse.ArgumentParser) -> None:
    from tinygpt.runtime.contracts.environments import EnvRunSettings, EnvTrainSettings

    d, t = EnvRunSettings(environment="x", specialist="x"), EnvTrainSettings()
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the project's environments and the bundled ones")
    check = sub.add_parser("check", help="a few episodes on the current model: rewards, reasons, success per kind")
    check.add_argument("name")
    check.add_argument("--tasks", type=int, default=6, help="tasks to run (default 6)")
    check.add_argument("--split", choices=["train", "test"], default="train")
    check.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    check.add_argument("--seed", type=int, default=0)
    run = sub.add_parser("run", help="rounds of collect ▶ train ▶ gate ▶ publish on an environment")
    run.add_argument("name")
    run.add_argument("--specialist", help="name to publish as (default: the environment's name)")
    run.add_argument("--rounds", type=int, default=d.rounds, help=f"rounds of expert iteration (default {d.rounds})")
    run.add_argument("--tasks", type=int, default=d.train_tasks, help=f"training tasks (default {d.train_tasks})")
    run.add_argument("--test-tasks", type=int, default=d.test_tasks, help=f"held-out tasks: the gate (default {d.test_tasks})")
    run.add_argument("--attempts", type=int, default=d.attempts, help=f"sampled attempts per training task (default {d.attempts})")
    run.add_argument("--explore", type=float, default=d.explore, help="fraction of attempts forced to one tool after another (default 0)")
    run.add_argument("--hindsight", action=argparse.BooleanOptionalAction, default=d.hindsight,
                     help="record failed episodes again under the task they did achieve, so they train too (default: off)")
    run.add_argument("--temperature", type=float, default=d.temperature, help=f"sampling temperature (default {d.temperature})")
    run.add_argument("--max-turns", type=int, help="requests per episode (default: the environment's)")
    run.add_argument("--success-reward", type=float, default=d.success_reward, help="reward that counts as success (default 1.0)")
    run.add_argument("--gate", choices=["better", "no-worse"], default=d.gate, help=f"promotion rule on the held-out split (default {d.gate})")
    run.add_argument("--alpha", type=float, default=d.alpha, help="also require sign-test p < alpha for a gain (default 1: off)")
    run.add_argument("--iters", type=int, default=t.steps, help=f"training steps per round (default {t.steps})")
    run.add_argument("--batch-size", type=int, default=t.batch_size)
    run.add_argument("--learning-rate", type=float, default=t.learning_rate)
    run.add_argument("--lora-layers", type=int, default=t.num_layers)
    run.add_argument("--method", choices=["lora", "dora"], default=t.method)
    run.add_argument("--concurrency", type=int, default=d.concurrency)
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--work", type=Path, help="where the run's files go (default: <tinygpt home>/env/<name>/<timestamp>)")
    run.add_argument("--queue", action="store_true", help="enqueue the run for a `train` worker instead of running it here")
    run.add_argument("--json", action="store_true", help="print the run record as JSON")
    for p in (check, run):
        p.add_argument("--project", type=Path, help="tinygpt.project.json (default: the nearest one)")
        p.add_argument("--model", help="base model (default: the project's)")
        p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub.choices["list"].add_argument("--project", type=Path, help="tinygpt.project.json (default: the nearest one)")


def settings_from_args(args: argparse.Namespace):
    """The run's settings from `tinygpt env run` flags (the same Struct a build policy fills)."""
    from tinygpt.runtime.contracts.environments import EnvRunSettings, EnvTrainSettings

    return EnvRunSettings(
        environment=args.name, specialist=args.specialist or args.name, train_tasks=args.tasks, test_tasks=args.test_tasks,
        attempts=args.attempts, explore=args.explore, hindsight=args.hindsight, rounds=args.rounds, temperature=args.temperature,
        max_turns=args.max_turns, concurrency=args.concurrency, seed=args.seed, success_reward=args.success_reward,
        gate=args.gate, alpha=args.alpha,
        train=EnvTrainSettings(method=args.method, steps=args.iters, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, num_layers=args.lora_layers),
    )


def _project(args, err):
    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.project import find_project, load_project

    path = args.project or find_project()
    if path is None:
        raise ContractError("tinygpt.project.json", "not found here or above: environments are named in the project file")
    return Path(path).resolve(), load_project(Path(path))


def run(args: argparse.Namespace) -> int:
    import logging

    import msgspec
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.runtime.contracts import ContractError

    logging.basicConfig(level=getattr(args, "log_level", "WARNING"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True, soft_wrap=True)
    try:
        project_file, pins = _project(args, err)
        settings = settings_from_args(args) if args.action == "run" else None
    except (ContractError, ValueError, msgspec.ValidationError) as e:
        err.print(f"[red]tinygpt env:[/] {escape(str(e))}")
        return 2
    if args.action == "list":
        return _list(project_file, pins)
    if args.action == "check":
        return _check(args, project_file, pins, err)
    return _run(args, project_file, pins, settings, err)


def _list(project_file: Path, pins) -> int:
    from rich.console import Console
    from rich.table import Table

    from tinygpt.runtime.environments.loader import BUNDLED, EnvironmentBroken, instantiate

    table = Table(title=f"environments of {pins.name} ({project_file})", title_justify="left")
    for col in ("name", "entry", "tools", "status"):
        table.add_column(col)
    rows = [(e.name, e.entry) for e in pins.environments] + [(n, e) for n, e in BUNDLED.items() if pins.environment(n) is None]
    for name, entry in rows:
        try:
            env = instantiate(entry, project_file.parent)
            table.add_row(name, entry, ", ".join(t["function"]["name"] for t in env.tools), "ok")
        except EnvironmentBroken as e:
            table.add_row(name, entry, "-", f"[red]broken[/]: {e}")
    Console(soft_wrap=True).print(table)
    return 0


def _check(args, project_file: Path, pins, err) -> int:
    import tempfile

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.runtime.environments import runner
    from tinygpt.workers.environment.rounds import _client, local_runtime
    from tinygpt.runtime.environments.loader import EnvironmentBroken, load

    if args.tasks < 1:
        err.print("[red]tinygpt env:[/] --tasks must be at least 1")
        return 2
    try:
        env = load(project_file, args.name, pins)
        tasks = runner.get_tasks(env, args.name, args.split, args.tasks, args.seed)
        with tempfile.TemporaryDirectory(prefix="tinygpt-env-check-") as work, \
                local_runtime(args.model or pins.base_model, Path(work), f"{pins.name}-check", 8) as srv:
            cfg = runner.Sampling(model=srv.base_name, temperature=args.temperature, max_turns=env.max_turns,
                                  max_tokens=env.max_tokens, seed=args.seed if args.temperature > 0 else None,
                                  source=f"env-check:{args.name}")
            results = runner.run_many(_client(srv.url), env, args.name, [runner.Attempt(t) for t in tasks], cfg)
    except EnvironmentBroken as e:
        err.print(f"[red]environment {escape(args.name)} is broken[/]: {escape(str(e))}")
        return 1
    out = Console(soft_wrap=True)
    table = Table(title=f"{args.name}: {len(results)} {args.split} episodes on {srv.base_name}", title_justify="left")
    for col in ("task", "kind", "calls", "reward", "reason"):
        table.add_column(col)
    for r in results:
        table.add_row(r.task_id, r.kind, " ▶ ".join(r.calls) or "-", f"{r.reward:.2f}", escape(r.reason))
    out.print(table)
    kinds = runner.per_kind(results)
    out.print("success per kind: " + ", ".join(f"{k} {c.successes}/{c.n}" for k, c in kinds.items()))
    return 0


def _run(args, project_file: Path, pins, settings, err) -> int:
    import time

    import msgspec
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.queue.connection import RedisUnavailable
    from tinygpt.runtime import paths

    if args.queue:
        from tinygpt.queue.connection import connect

        if args.model:
            err.print("[red]tinygpt env:[/] --model does not travel with --queue: the worker uses the project's base model")
            return 2
        from tinygpt.queue.environment_runs import enqueue_environment

        try:
            conn = connect()
        except RedisUnavailable as e:
            err.print(f"[red]tinygpt env:[/] {escape(str(e))}")
            return 2
        job_id, work, existed = enqueue_environment(conn, project_file, settings, args.work)
        Console(soft_wrap=True).print(f"{'already enqueued' if existed else 'enqueued'} {job_id}; files: {work}\n"
                                      "a train worker runs it: `tinygpt up` or `tinygpt worker --queues train,data`")
        return 0

    work = (args.work or paths.subdir("env") / args.name / time.strftime("%Y%m%d-%H%M%S")).resolve()
    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.workers.environment.rounds import RECORD_FILE, EnvRunError, run_environment
    from tinygpt.runtime.environments.loader import EnvironmentBroken

    try:
        record = run_environment(project_file, settings, work, model=args.model, say=lambda m: err.print(escape(m), highlight=False))
    except EnvironmentBroken as e:
        err.print(f"[red]environment {escape(args.name)} is broken[/]: {escape(str(e))}")
        return 1
    except (EnvRunError, RedisUnavailable) as e:
        err.print(f"[yellow]the run stopped[/]: {escape(str(e))}\nwhat was measured: {work / RECORD_FILE}")
        return 1
    if args.json:
        print(msgspec.json.encode(record).decode())
        return 0
    out = Console(soft_wrap=True)
    out.print(rounds_table(record))
    b, f = record.baseline, record.final
    out.print(f"held-out success: {b.successes}/{b.n} on {b.model} → {f.successes}/{f.n} on {f.model}; {per_kind_change(b, f)}")
    out.print(f"record: {work / RECORD_FILE}")
    return 0


def per_kind_change(before, after) -> str:
    """'by kind: add 1/3 → 3/3, buy 0/2 → 1/2' for two held-out results on the same tasks."""
    kinds = sorted(set(before.per_kind) | set(after.per_kind))

    def one(h, k):
        c = h.per_kind.get(k)
        return f"{c.successes}/{c.n}" if c else "-"

    return "by kind: " + ", ".join(f"{k} {one(before, k)} → {one(after, k)}" for k in kinds)


def rounds_table(record):
    """Per round: collected with, attempts, successes by kind, rows, method, gate verdict."""
    from rich.table import Table

    table = Table(title=f"{record.environment} → {record.specialist}", title_justify="left")
    for col in ("round", "collected with", "successes / attempts", "by kind", "explored", "relabeled", "rows", "method", "gate"):
        table.add_column(col)
    for r in record.rounds:
        gate = "-"
        if r.gate is not None:
            g = r.gate
            gate = f"{g.verdict}: {g.baseline.successes}/{g.baseline.n} → {g.candidate.successes}/{g.candidate.n} (+{g.gained}/−{g.lost}, p={g.p_value:.3g})"
        kinds = ", ".join(f"{k} {c.successes}/{c.n}" for k, c in r.per_kind.items())
        table.add_row(str(r.round), r.collected_with, f"{r.successes}/{r.attempts}", kinds, f"{r.explored_successes}/{r.explored}",
                      str(r.relabeled), str(r.rows), r.method, gate + (f"; {r.promoted}" if r.promoted else ""))
    return table
