"""`tinygpt status`'s section about a running `tinygpt up`: Redis outages, worker restarts, logs.

Read from the report `up` keeps in `<home>/daemon.json` (tinygpt.queue.health), so it is
shown even when this process cannot reach Redis itself.
"""

from __future__ import annotations

import argparse
import time


def section(console, args: argparse.Namespace) -> dict:
    import msgspec
    from rich.markup import escape

    from tinygpt.queue import health

    report = health.read()
    if console is None or report is None:
        return {"daemon": msgspec.to_builtins(report) if report else None}
    r = report.redis
    up_for = time.time() - report.started_at
    console.print(f"[bold]Daemon[/] tinygpt up, pid {report.pid}, up {up_for:.0f}s"
                  + (f", logs in {escape(report.log_dir)}" if report.log_dir else ""))
    if not r.reachable:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.down_since))
        console.print(f"  [red]Redis OUTAGE[/]: {escape(r.url)} unreachable since {since} ({time.time() - r.down_since:.0f}s): "
                      f"{escape(r.error)}; the runtime keeps serving, sealed trajectories wait on disk")
    elif r.restarts:
        console.print(f"  Redis {escape(r.url)}: restarted {r.restarts} time(s) by the daemon")
    for w in report.workers:
        restarts = f", {w.restarts} restart(s), last {w.last_exit}" if w.restarts else ""
        style = "" if w.state == "running" else "[yellow]"
        console.print(f"  worker {w.index} ({w.queues}): {style}{escape(w.state)}{'[/]' if style else ''}"
                      + (f" pid {w.pid}" if w.pid else "") + restarts)
    if report.reconciled:
        console.print(f"  {report.reconciled} sealed trajectory file(s) put back on the pipeline since start")
    return {"daemon": msgspec.to_builtins(report)}
