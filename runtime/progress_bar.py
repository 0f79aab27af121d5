"""A rich progress bar driven by `(done, total)` calls, for long steps run in this process.

The long loops (GGUF conversion, evaluation) take a plain `progress(done, total)`
callable and know nothing about terminals; the commands wrap one of these around them.
On a non-terminal (logs, CI) no bar is drawn and the callable does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(console, description: str, *, show: bool | None = None) -> Iterator[Callable[[int, int], None]]:
    """Yield `progress(done, total)` drawing a bar on `console` (a rich Console) until the block ends."""
    if show is None:
        show = console.is_terminal
    if not show:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def job_progress(p, width: int = 24):
    """A rich renderable for a worker's `JobProgress` (None: the job reports nothing)."""
    import time

    from rich.progress_bar import ProgressBar
    from rich.table import Table

    row = Table.grid(padding=(0, 1))
    if p is None or p.total <= 0:
        row.add_row("-")
        return row
    text = f"{p.done}/{p.total} {p.unit}".rstrip()
    if p.done and p.updated > p.started:
        left = (p.updated - p.started) / p.done * (p.total - p.done)
        text += f" · ETA {_duration(left)}"
    if p.detail:
        text += f" · {p.detail}"
    if p.updated and time.time() - p.updated > 120:
        text += f" · no news for {_duration(time.time() - p.updated)}"
    row.add_row(ProgressBar(total=p.total, completed=p.done, width=width), text)
    return row


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
