"""The RQ jobs: thin wrappers that hand a payload to its stage's `run`.

They import the stage when they run (a worker serving only `train` never loads the data
stages, and the other way round), pass the worker's Redis connection along, and turn a
`PermanentError` into an immediate failure: no retries, the message is the reason in
the failed registry.
"""

from __future__ import annotations

import importlib

from rq import get_current_job

from tinygpt.runtime.contracts.jobs import DatasetJob, DedupeJob, EvalJob, FinetuneJob, IngestJob, LabelJob, PublishJob

from .errors import PermanentError


def _run(stage: str, payload):
    job = get_current_job()
    module = importlib.import_module(f"tinygpt.workers.{stage}")
    try:
        return module.run(payload, job.connection)
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
    """Train on the `train` queue. Bad input (TrainingError) fails at once, no retries."""
    from tinygpt.workers import finetune as stage
    from tinygpt.workers.training.errors import TrainingError

    from tinygpt.workers.training.loop import Callbacks

    from .progress import for_current_job

    job = get_current_job()
    tick = for_current_job("finetune", label=f"{payload.specialist}: {payload.method}", unit="step")

    class Progress(Callbacks):
        def on_step(self, step: int, total: int, loss: float, tokens_per_second: float) -> None:
            tick(step, total, f"loss {loss:.3f} · {tokens_per_second:,.0f} tok/s")

    try:
        return stage.run(payload, callbacks=Progress() if tick else None)
    except TrainingError:
        job.retries_left = 0
        raise
    finally:
        if tick:
            tick.clear()


def evalgate(payload: EvalJob):
    """Gate on the `eval` queue, reporting answered requests as the job's progress."""
    from tinygpt.workers import evalgate as stage

    from .progress import for_current_job

    job = get_current_job()
    tick = for_current_job("evalgate", label=f"{payload.specialist}: gate", unit="answer")
    try:
        return stage.run(payload, job.connection, progress=tick)
    except PermanentError:
        job.retries_left = 0
        raise
    finally:
        if tick:
            tick.clear()


def publish(payload: PublishJob):
    return _run("publish", payload)
