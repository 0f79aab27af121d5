"""Put recorded trajectory files on the pipeline (ingest -> dedupe -> label), optionally
followed by a dataset build. Directories are searched for *.msgpack, *.mpk and *.json
files. Workers do the work: start them with `tinygpt worker`. Settings come from the
nearest tinygpt.project.json ("pipeline").

--reconcile puts back on the pipeline the sealed trajectory files (default: the ones the
runtime recorded, <home>/trajectories) that Redis has no record of - after a FLUSHALL, a
Redis without persistence, a restore, or files sealed while Redis was down. Files Redis
knows are left alone, so running it twice adds nothing. `tinygpt up` does it on start."""

from __future__ import annotations

import argparse
import time

EXAMPLE = ("tinygpt ingest ~/.cache/tinygpt/trajectories --dataset support-v1 --wait\n"
           "  tinygpt ingest --dataset support-v1   # rebuild from what is labelled\n"
           "  tinygpt ingest --reconcile           # after a Redis wipe: re-enqueue what it forgot")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="trajectory files or directories")
    parser.add_argument("--batch", type=int, default=64, help="trajectories per job (default 64)")
    parser.add_argument("--dataset", metavar="NAME", help="then build this dataset (after the files above are labelled)")
    parser.add_argument("--base-model", help="base model of the dataset (default: the project's base_model)")
    parser.add_argument("--project", default="default", help="project whose trajectories the dataset takes (default: default)")
    parser.add_argument("--wait", action="store_true", help="wait until the jobs are done and print the outcome")
    parser.add_argument("--reconcile", action="store_true",
                        help="enqueue only the sealed files Redis has no record of (PATHs: directories; default: <home>/trajectories)")


def _wait(conn, job_ids: list[str], err) -> dict[str, int]:
    from rq.exceptions import NoSuchJobError
    from rq.job import JobStatus

    from tinygpt.queue import stages
    from tinygpt.queue.overview import pipeline_workers

    warned = False
    while True:
        statuses = {}
        for jid in job_ids:
            try:
                statuses[jid] = stages.fetch_job(conn, jid).get_status()
            except NoSuchJobError:
                statuses[jid] = JobStatus.FINISHED  # its result expired: it finished long ago
        done = [s for s in statuses.values() if s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)]
        blocked = [j for j, s in statuses.items() if s == JobStatus.DEFERRED]
        if len(done) == len(job_ids):
            break
        if not warned and not pipeline_workers(conn):
            err.print("no worker is running: start one with `tinygpt worker --queues data` (waiting)")
            warned = True
        if blocked and len(done) + len(blocked) == len(job_ids) and any(s == JobStatus.FAILED for s in statuses.values()):
            break  # the rest waits on failed jobs: `tinygpt jobs retry`
        time.sleep(0.5)
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[str(s.value)] = counts.get(str(s.value), 0) + 1
    return counts


def run(args: argparse.Namespace) -> int:
    import redis
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.queue import pipeline
    from tinygpt.queue.connection import RedisUnavailable, connect
    from tinygpt.runtime.redact import redact
    from tinygpt.runtime.contracts import ContractError

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    if not args.paths and not args.dataset and not args.reconcile:
        err.print("[red]error[/]: give trajectory files / directories, --reconcile, or --dataset NAME to build one")
        return 2
    try:
        settings = pipeline.load_settings()
        conn = connect()
    except (RedisUnavailable, ContractError) as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2
    try:
        with conn:
            return _enqueue_and_wait(args, conn, settings, out, err)
    except redis.RedisError as e:
        # Redis went away after the first PING: say so, without a traceback.
        err.print(f"[red]error[/]: Redis failed ({type(e).__name__}: {escape(redact(str(e)))}); what was enqueued stays queued")
        return 1


def _enqueue_and_wait(args, conn, settings, out, err) -> int:
    from rich.markup import escape

    from tinygpt.queue import pipeline, stages

    enq = pipeline.Enqueued()
    if args.reconcile:
        from tinygpt.queue.reconcile import reconcile
        from tinygpt.runtime import paths

        done = reconcile(args.paths or [paths.subdir("trajectories")], conn, settings=settings, batch_size=args.batch)
        enq = done.enqueued
        out.print(done.summary)
    elif args.paths:
        try:
            enq = pipeline.enqueue_files(args.paths, conn, batch_size=args.batch, settings=settings)
        except (FileNotFoundError, ValueError) as e:
            err.print(f"[red]error[/]: {escape(str(e))}")
            return 2
        out.print(f"enqueued {enq.files} trajectory file(s) in {len(enq.ingest_jobs)} batch(es)" + (f" ({enq.existing} job(s) already existed)" if enq.existing else ""))
    waiting = list(enq.jobs)
    if args.dataset:
        base = args.base_model or _project_base_model()
        job = pipeline.enqueue_dataset(args.dataset, base, conn, project=args.project, settings=settings, depends_on=enq.label_jobs)
        out.print(f"dataset {args.dataset!r} ({base}) will build as job {job.id}")
        waiting.append(job.id)
    if not args.wait:
        return 0
    counts = _wait(conn, waiting, err)
    out.print("jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.dataset:
        ds = stages.fetch_job(conn, waiting[-1])
        result = ds.return_value()
        if result is not None:
            out.print(f"dataset {result.name} {result.digest[:16]}: {result.trajectories} trajectories, {result.rows} rows, {result.pairs} pairs -> {result.path}")
    return 1 if counts.get("failed") else 0


def _project_base_model() -> str:
    from tinygpt.runtime.project import find_project, load_project

    path = find_project()
    if path is not None:
        return load_project(path).base_model
    from tinygpt.runtime.contracts.project import ProjectPins

    return ProjectPins(name="default").base_model
