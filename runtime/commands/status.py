"""Show Redis, the pipeline's queues, running and failed jobs, quarantined files,
the latest trajectories and the datasets, at a glance. Never imports MLX and never
starts a server."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime

EXAMPLE = "tinygpt status\n  tinygpt status --limit 25 --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=10, help="rows per table (default 10)")
    parser.add_argument("--json", action="store_true", help="print the queue and pipeline state as JSON")


def _when(ts: float | datetime | None) -> str:
    if ts is None or ts == 0:
        return "-"
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts)
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def pipeline_section(console, args: argparse.Namespace) -> dict:
    """Redis, queues, workers, running / failed jobs, quarantine, trajectories, datasets."""
    import msgspec
    from rich.markup import escape
    from rich.table import Table

    from tinygpt.queue.overview import collect

    ov = collect(limit=max(1, args.limit))
    if console is None:
        return {"pipeline": msgspec.to_builtins(ov)}
    r = ov.redis
    if r.reachable:
        aof = "AOF on" if r.aof else "[yellow]AOF off: jobs do not survive a restart[/]"
        console.print(f"[bold]Redis[/] {escape(r.url)}  version {r.version}, {r.memory} used, {aof}")
    else:
        console.print(f"[bold]Redis[/] {escape(r.url)}  [red]unreachable[/]: {escape(r.error)}")

    if ov.queues:
        t = Table(title="queues")
        for col in ("queue", "queued", "running", "waiting on deps", "retry backoff", "failed", "finished"):
            t.add_column(col, justify="left" if col == "queue" else "right")
        for q in ov.queues:
            failed = f"[red]{q.failed}[/]" if q.failed else "0"
            t.add_row(q.name, str(q.queued), str(q.running), str(q.deferred), str(q.scheduled), failed, str(q.finished))
        console.print(t)
    if r.reachable:
        if ov.workers:
            t = Table(title=f"workers ({len(ov.workers)})")
            for col in ("worker", "queues", "state", "job"):
                t.add_column(col, overflow="fold")
            for w in ov.workers:
                t.add_row(w.name, w.queues, w.state, w.job or "-")
            console.print(t)
        else:
            console.print("no workers: start some with `tinygpt worker --queues data`")
    if ov.running:
        t = Table(title="running jobs")
        from ..progress_bar import job_progress

        for col in ("job", "queue", "stage", "worker", "started", "progress"):
            t.add_column(col, overflow="fold")
        for j in ov.running:
            t.add_row(j.job_id, j.queue, j.stage, j.worker or "-", _when(j.started_at), job_progress(j.progress))
        console.print(t)
    if ov.failed:
        t = Table(title=f"failed jobs ({ov.failed_total}; `tinygpt jobs retry|drop`)")
        for col in ("job", "stage", "failed at", "reason"):
            t.add_column(col, overflow="fold")
        for d in ov.failed:
            t.add_row(d.job_id, d.stage, _when(d.failed_at), escape(d.reason))
        console.print(t)
    if ov.quarantine:
        t = Table(title=f"quarantined trajectories ({ov.quarantine_total})")
        for col in ("file", "when", "reason"):
            t.add_column(col, overflow="fold")
        for q in ov.quarantine:
            t.add_row(escape(q.origin), _when(q.at), escape(q.reason))
        console.print(t)
    if ov.recent:
        t = Table(title="latest trajectories")
        for col in ("trajectory", "project", "steps", "tokens", "ingested", "dedupe", "label"):
            t.add_column(col, overflow="fold", justify="right" if col in ("steps", "tokens") else "left")
        for tr in ov.recent:
            t.add_row(tr.trajectory_id, tr.project, str(tr.steps), str(tr.tokens), _when(tr.ingested_at), escape(tr.dedupe), escape(tr.label))
        console.print(t)
    if ov.datasets:
        t = Table(title="datasets")
        for col in ("dataset", "digest", "trajectories", "rows", "tokens", "trained", "pairs", "left out", "built"):
            t.add_column(col, overflow="fold")
        for d in ov.datasets:
            left = ", ".join(f"{k} {v}" for k, v in sorted(d.dropped.items())) or "-"
            t.add_row(d.name, d.digest, str(d.trajectories), str(d.rows), str(d.tokens), str(d.trained_tokens), str(d.pairs), left, _when(d.created_at))
        console.print(t)
    return {"pipeline": msgspec.to_builtins(ov)}


# A section prints one part of the status (nothing when `console` is None, for --json)
# and returns its data under its own key. The models / BLAS section goes in this list.
def machine_section(console, args: argparse.Namespace) -> dict:
    """The cache directory, the device (asked of a subprocess), the active BLAS, cached models
    and the project pins (no MLX in this process)."""
    import msgspec
    from rich.markup import escape
    from rich.table import Table

    from tinygpt.runtime import paths
    from tinygpt.runtime.blas import blas_info
    from tinygpt.runtime.contracts import ContractError
    from tinygpt.runtime.models.cache import list_models
    from tinygpt.runtime.project import find_project, load_project

    from tinygpt.runtime.device import probe

    blas = blas_info()
    dev = probe()
    models = list_models()
    project_file = find_project()
    project: dict = {"file": str(project_file) if project_file else None}
    if project_file is not None:
        try:
            pins = load_project(project_file)
            project.update(name=pins.name, base_model=pins.base_model,
                           specialists=[f"{p.name}@{p.version}" for p in pins.specialists])
        except ContractError as e:
            project["error"] = str(e)
    data = {
        "home": str(paths.home()),
        "blas": {k: v for k, v in blas.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "device": {"error": dev} if isinstance(dev, str) else {**msgspec.structs.asdict(dev), "line": dev.describe()},
        "models": [{"name": m.name, "path": m.path, "size": m.size, "complete": m.manifest is not None,
                    "digest": m.manifest.digest if m.manifest else None} for m in models],
        "project": project,
    }
    if console is None:
        return data
    console.print(f"[bold]Home[/] {escape(data['home'])}")
    console.print(f"[bold]Device[/] {escape(dev if isinstance(dev, str) else dev.describe())}")
    active = blas.get("active")
    console.print(f"[bold]BLAS[/] {escape(active) if active else '[yellow]reference BLAS (slow fp32; apt-get install libopenblas0-pthread)[/]'}")
    if project_file is None:
        console.print("[bold]Project[/] no tinygpt.project.json here or above")
    elif "error" in project:
        console.print(f"[bold]Project[/] [red]invalid[/]: {escape(project['error'])}")
    else:
        pinned = ", ".join(project["specialists"]) or "no specialists pinned"
        console.print(f"[bold]Project[/] {escape(project['name'])} ({escape(str(project_file))}): "
                      f"base {escape(project['base_model'])}, {escape(pinned)}")
    t = Table(title=f"models ({len(models)})")
    for col in ("model", "size", "digest", "state"):
        t.add_column(col)
    for m in data["models"]:
        state = "[green]ready[/]" if m["complete"] else "[yellow]incomplete (re-pulled on use)[/]"
        t.add_row(m["name"], f"{m['size'] / 2**20:.0f} MiB", (m["digest"] or "-")[:12], state)
    console.print(t)
    return data


def specialists_section(console, args: argparse.Namespace) -> dict:
    """What the pins resolved to (pins.lock.json): no MLX, no Redis."""
    from tinygpt.runtime.registry.status import section

    return section(console, args)


def daemon_section(console, args: argparse.Namespace) -> dict:
    """What a running `tinygpt up` reports about Redis and its workers (even with Redis down)."""
    from tinygpt.runtime.commands.daemon_status import section

    return section(console, args)


def policies_section(console, args: argparse.Namespace) -> dict:
    """The project's build policies: rows toward the next build, the build running, the last verdict."""
    from tinygpt.queue.autopilot import status_of_project

    rows = status_of_project()
    if console is not None and rows:
        from tinygpt.runtime.policy_view import policy_table

        console.print(policy_table(rows))
    return {"build_policies": rows}


SECTIONS: list[Callable[[object, argparse.Namespace], dict]] = [machine_section, specialists_section, policies_section,
                                                                daemon_section, pipeline_section]


def run(args: argparse.Namespace) -> int:
    import msgspec
    from rich.console import Console

    console = None if args.json else Console(soft_wrap=True)
    data: dict = {}
    for section in SECTIONS:
        data.update(section(console, args))
    if args.json:
        print(msgspec.json.encode(data).decode())
    return 0
