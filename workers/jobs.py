"""The RQ jobs: thin wrappers that hand a payload to its stage's `run`.

They live with the stages: the queue names them by dotted path (`queue/stages.py`)
and never imports them. They import the stage when they run (a worker serving only
`train` never loads the data stages, and the other way round), pass the worker's Redis
connection along, and turn a `PermanentError` into an immediate failure: no retries,
the message is the reason in the failed registry.
"""

from __future__ import annotations

import importlib

from rq import get_current_job

from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts.jobs import (
    DatasetJob, DedupeJob, EnvironmentJob, EvalJob, FinetuneJob, IngestJob, LabelJob, PublishJob,
)


def _run(stage: str, payload, **options):
    job = get_current_job()
    module = importlib.import_module(f".{stage}", __package__)
    try:
        return module.run(payload, job.connection, **options)
    except PermanentError:
        job.retries_left = 0  # read by the worker when it handles this failure
        raise


def ingest(payload: IngestJob):
    return _run("ingest", payload)


def dedupe(payload: DedupeJob):
    return _run("dedupe", payload)


def label(payload: LabelJob):
    return _run("label", payload)


def dataset(payload: DatasetJob):
    return _run("dataset", payload)


def finetune(payload: FinetuneJob):
    """Train on the `train` queue, reporting steps as the job's progress. Bad input
    (TrainingError) fails at once, no retries."""
    from tinygpt.queue.progress import reporting

    from . import finetune as stage
    from .training.errors import TrainingError
    from .training.loop import Callbacks

    class Progress(Callbacks):
        def __init__(self, tick):
            self.tick = tick

        def on_step(self, step: int, total: int, loss: float, tokens_per_second: float) -> None:
            self.tick(step, total, f"loss {loss:.3f} · {tokens_per_second:,.0f} tok/s")

    job = get_current_job()
    with reporting("finetune", label=f"{payload.specialist}: {payload.method}", unit="step") as tick:
        try:
            return stage.run(payload, callbacks=Progress(tick) if tick else None)
        except TrainingError:
            job.retries_left = 0
            raise


def evalgate(payload: EvalJob):
    """Gate on the `eval` queue, reporting answered requests as the job's progress."""
    from tinygpt.queue.progress import reporting

    with reporting("evalgate", label=f"{payload.specialist}: gate", unit="answer") as tick:
        return _run("evalgate", payload, progress=tick)


def publish(payload: PublishJob):
    return _run("publish", payload)


def environment(payload: EnvironmentJob):
    """Rounds on an environment (`workers/environment.py`); a broken one fails at once."""
    return _run("environment", payload)
