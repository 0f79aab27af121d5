"""What a run tells the outside: a rich progress bar and a metrics JSONL file.

Every line of metrics.jsonl is one JSON object with `step` and `kind` ("train" or
"val"); dashboards and tests read it, the progress bar is only for people.
"""

from __future__ import annotations

import json
from pathlib import Path


class Reporter:
    """Progress bar (step, loss, tokens/s, ETA) plus metrics lines, appended and flushed."""

    def __init__(self, metrics_path: Path, total_steps: int, *, start: int = 0, show: bool = True, title: str = "train"):
        self.metrics_path = metrics_path
        self._file = open(metrics_path, "a", encoding="utf-8")
        self._progress = None
        self._task = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("val {task.fields[val]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task(title, total=total_steps, completed=start, loss="-", val="-", tps="-")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        self._file.close()

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(self, step: int, loss: float | None = None, tokens_per_second: float | None = None) -> None:
        if self._progress is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tokens_per_second is not None:
            fields["tps"] = f"{tokens_per_second:,.0f}"
        self._progress.update(self._task, completed=step, **fields)

    def val(self, step: int, loss: float) -> None:
        self.write({"step": step, "kind": "val", "val_loss": loss})
        if self._progress is not None:
            self._progress.update(self._task, val=f"{loss:.4f}")

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
