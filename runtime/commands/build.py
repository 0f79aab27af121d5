"""Build a specialist on the queue: (dataset ▶) finetune ▶ eval gate ▶ publish.

Enqueues the jobs and returns; `tinygpt worker --queues data,train,eval` (or `tinygpt
up`) runs them, `tinygpt status` follows them. With --dataset NAME the dataset is first
rebuilt from the project's labelled trajectories; with --dataset-dir an existing
token-id dataset is used as is. The gate uses the project's eval suites; publish only
packages a candidate that passed, into the project's first registry. Enqueueing the same
build again finds its jobs instead of training twice."""

from __future__ import annotations

import argparse
import json

from tinygpt.runtime.contracts.specialist import METHODS

EXAMPLE = "tinygpt build fs-agent --dataset fs-agent-v1 --steps 200\n  tinygpt build sql --dataset-dir ./data/sql --method dora --hp learning_rate=2e-4"


def _hp(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specialist", help="the specialist's name (lower-case: a-z, 0-9, '.', '_', '-')")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME", help="rebuild this dataset from labelled trajectories first")
    source.add_argument("--dataset-dir", metavar="DIR", help="train on this token-id dataset directory")
    parser.add_argument("--project", help="tinygpt.project.json (default: the nearest one)")
    parser.add_argument("--method", default="lora", choices=METHODS)
    parser.add_argument("--steps", type=int, help="training steps (hyperparameter `steps`)")
    parser.add_argument("--hp", action="append", type=_hp, default=[], metavar="KEY=VALUE",
                        help="a training hyperparameter (repeatable), e.g. learning_rate=1e-4")
    parser.add_argument("--teacher", help="teacher model for distillation")
    parser.add_argument("--version", default="", help="version to publish as (default: the next number)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from tinygpt.queue import builds, pipeline
    from tinygpt.queue.connection import RedisUnavailable, connect
    from tinygpt.runtime import paths
    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.project import find_project, load_project

    err = Console(stderr=True, soft_wrap=True)
    try:
        project_file = Path(args.project) if args.project else find_project()
        if project_file is None:
            raise ContractError("tinygpt.project.json", "not found here or above: a build needs the project's eval suites")
        pins = load_project(project_file)
        conn = connect()
    except (ContractError, RedisUnavailable) as e:
        err.print(f"[red]tinygpt build:[/] {escape(str(e))}")
        return 2
    hyperparameters = dict(args.hp)
    if args.steps is not None:
        hyperparameters["steps"] = args.steps
    after: list[str] = []
    if args.dataset:
        job = pipeline.enqueue_dataset(args.dataset, pins.base_model, conn, project=pins.name,
                                       settings=pipeline.load_settings(project_file))
        after = [job.id]
        dataset_dir = paths.subdir("datasets") / args.dataset
    else:
        dataset_dir = Path(args.dataset_dir)
    registry = builds.project_registry(pins.registries, project_file)
    build = builds.enqueue_build(
        conn, specialist=args.specialist, base_model=pins.base_model, dataset_dir=dataset_dir,
        project_file=project_file, registry=registry, method=args.method, hyperparameters=hyperparameters,
        seed=args.seed, version=args.version, teacher_model=args.teacher, depends_on=after,
    )
    state = "already enqueued" if build.existing == len(build.jobs) else "enqueued"
    Console(soft_wrap=True).print(
        f"build {build.build_id} of {escape(args.specialist)} {state}: "
        + " ▶ ".join(([f"dataset {after[0]}"] if after else []) + list(build.jobs.values()))
        + f"\nfiles: {build.root}\nrun workers with `tinygpt worker --queues data,train,eval` (or `tinygpt up`)"
    )
    return 0
