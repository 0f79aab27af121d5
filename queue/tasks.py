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

    job = get_current_job()
    try:
        return stage.run(payload)
    except TrainingError:
        job.retries_left = 0
        raise


def evalgate(payload: EvalJob):
    return _run("evalgate", payload)


def publish(payload: PublishJob):
    return _run("publish", payload)
