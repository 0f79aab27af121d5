"""The build policies as a table: `tinygpt up`'s screen and `tinygpt status` draw the same one.

Per specialist: rows collected toward the next build, the build in progress with its
progress bar, the last gate verdict with its numbers, and the version being served.
"""

from __future__ import annotations

from datetime import datetime


def policy_table(rows, title: str = "build policies"):
    """A rich Table of `PolicyStatus` rows (queue/autopilot.py `overview`)."""
    from rich.markup import escape
    from rich.table import Table

    from .progress_bar import job_progress

    t = Table(title=title)
    for col in ("specialist", "serving", "next build", "building", "last gate"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r.building:
            building = job_progress(r.progress) if r.progress else f"{r.stage} (build {r.building[:12]})"
            if r.progress:
                from rich.table import Table as Grid

                grid = Grid.grid()
                grid.add_row(f"{r.stage} (build {r.building[:12]})")
                grid.add_row(building)
                building = grid
        else:
            building = "-"
        if r.last_verdict:
            style = "green" if r.last_verdict == "pass" else "red"
            when = datetime.fromtimestamp(r.last_at).strftime("%H:%M:%S") if r.last_at else ""
            head = f"[{style}]{r.last_verdict}[/]" + (f" → {escape(r.specialist)}@{escape(r.last_version)}" if r.last_version else "")
            lines = [f"{head} {when}".rstrip(), *(escape(n) for n in r.last_numbers)]
            if r.last_verdict != "pass" and r.last_message:
                lines.append(escape(r.last_message))
            last = "\n".join(lines)
        else:
            last = "-"
        nxt = f"{r.rows}/{r.needed} new rows" + (f" · {escape(r.waiting.split('; ', 1)[1])}" if "; " in r.waiting else "")
        serving = f"{r.specialist}@{r.serving}" if r.serving else "-"
        t.add_row(escape(r.specialist), escape(serving), nxt, building, last)
    return t
