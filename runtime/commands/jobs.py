"""List, retry or drop failed pipeline jobs (the dead-letter queue), with their reasons.

A retried job gets its stage's full retry budget again; dropping a job also drops the
jobs that were waiting on it."""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt jobs list\n  tinygpt jobs retry ingest-3f2a9c...\n  tinygpt jobs drop --all"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "retry", "drop"], help="what to do with failed jobs")
    parser.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="failed job ids (see `tinygpt jobs list`)")
    parser.add_argument("--all", action="store_true", help="every failed job (retry / drop)")
    parser.add_argument("--traceback", action="store_true", help="list: show each job's full traceback")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tinygpt.queue import failed
    from tinygpt.queue.connection import RedisUnavailable, connect

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    if args.action != "list" and bool(args.job_ids) == args.all:
        err.print(f"[red]error[/]: `tinygpt jobs {args.action}` needs job ids or --all (not both)")
        return 2
    try:
        conn = connect()
    except RedisUnavailable as e:
        err.print(f"[red]error[/]: {escape(str(e))}")
        return 2
    with conn:
        if args.action == "list":
            letters = failed.dead_letters(conn)
            if not letters:
                out.print("no failed jobs")
                return 0
            table = Table(title=f"failed jobs ({len(letters)})")
            for col in ("job", "queue", "stage", "failed at", "reason"):
                table.add_column(col, overflow="fold")
            for d in letters:
                when = d.failed_at.strftime("%Y-%m-%d %H:%M:%S") if d.failed_at else "-"
                table.add_row(d.job_id, d.queue, d.stage, when, escape(d.reason))
            out.print(table)
            if args.traceback:
                for d in letters:
                    out.rule(d.job_id)
                    out.print(escape(d.traceback), highlight=False)
            return 0
        ids = None if args.all else args.job_ids
        try:
            done = failed.retry(conn, ids) if args.action == "retry" else failed.drop(conn, ids)
        except ValueError as e:
            err.print(f"[red]error[/]: {escape(str(e))}")
            return 2
        verb = "requeued" if args.action == "retry" else "dropped"
        out.print(f"{verb} {len(done)} job(s)" + (": " + ", ".join(done) if done else ""))
        return 0
