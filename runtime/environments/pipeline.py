"""`tinygpt env run`'s trip through the real queue: recorded trajectories in, a token-id dataset out.

The trajectory files the runtime recorded for the collection episodes are put on the
pipeline exactly as `tinygpt ingest` does (content-addressed store, ingest ▶ dedupe ▶
label per batch, then a dataset build that waits for the label jobs), and a burst-mode
`tinygpt worker` process drains the data queue. The run's own settings travel in the
payloads: the checker's verdict (posted as feedback) decides keep / drop, so only
successful runs become training rows. (`tinygpt demo` goes through `tinygpt up` instead,
whose project file carries the same settings: `episode_settings`.)
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tinygpt.runtime.contracts.pipeline import DatasetSettings, DedupeSettings, LabelRule, PipelineSettings

# A run is kept only when the checker said it succeeded (feedback reward 1) and every
# tool call validated. The default rule averages feedback with tool validity and
# outcome, which would keep a valid call that deleted the wrong file.
KEEP_RULE = LabelRule(min_reward=0.5, require={"feedback": 1.0, "tool_validity": 1.0}, keep_unlabelled=False)
# Every trajectory starts with the same ~500-token system prompt and tool list, so two
# different tasks can share most of their 5-token shingles; only near-copies should go.
NEAR_THRESHOLD = 0.97


def episode_settings(seed: int = 0) -> PipelineSettings:
    """Pipeline settings for environment episodes: the checker's verdict decides, a small valid split."""
    return PipelineSettings(
        dedupe=DedupeSettings(near_threshold=NEAR_THRESHOLD),
        label=KEEP_RULE,
        # Held-out evaluation uses tasks of its own, so the dataset's test split stays empty,
        # and validation only reports a loss: every distinct success is worth training on.
        dataset=DatasetSettings(valid_fraction=0.05, test_fraction=0.0, seed=seed),
    )


class PipelineError(RuntimeError):
    """A stage failed or left nothing to train on; the message says which and why."""


@dataclass
class PipelineRun:
    """What the queue made of the collection: counts per stage and the dataset built."""

    files: int
    ingested: int
    quarantined: int
    kept_by_dedupe: int
    duplicates: int
    kept_by_label: int
    dropped_by_label: int
    dataset_dir: str
    dataset_digest: str
    rows: dict[str, int]
    worker_exit: int


def trajectory_file(root: Path, trajectory_id: str) -> Path | None:
    """Where the runtime keeps a trajectory: sealed, or still open (already complete once its
    feedback was acknowledged: the recorder writes the open file after every change)."""
    for path in (root / f"{trajectory_id}.msgpack", root / "open" / f"{trajectory_id}.msgpack"):
        if path.is_file():
            return path
    return None


def run_pipeline(
    files: list[Path], *, base_model: str, project: str, dataset_name: str, redis_url: str, seed: int = 0,
    settings: PipelineSettings | None = None,
) -> PipelineRun:
    """Enqueue `files` and a dataset build, drain the data queue with a burst worker, report.
    `settings` default to `episode_settings`."""
    from rq.job import JobStatus

    from tinygpt.queue import stages
    from tinygpt.queue.connection import connect
    from tinygpt.queue.pipeline import enqueue_dataset, enqueue_files
    from tinygpt.queue.worker import child_command

    settings = settings or episode_settings(seed)
    conn = connect(redis_url)
    try:
        enqueued = enqueue_files(files, conn, settings=settings)
        dataset_job = enqueue_dataset(
            dataset_name, base_model, conn, project=project, settings=settings, depends_on=enqueued.label_jobs
        )
        # A separate, spawned worker process, as in production (`tinygpt worker --burst`):
        # it exits once the data queue is drained, retries included.
        worker = subprocess.run(
            child_command(["--queues", "data", "--burst", "--log-level", "WARNING"]), check=False,
            env={**os.environ, "REDIS_URL": redis_url},  # never on the command line (ps shows it)
        )
        results: dict[str, list] = {"ingest": [], "dedupe": [], "label": []}
        for job_id in enqueued.jobs:
            job = stages.fetch_job(conn, job_id)
            stage = job_id.split("-", 1)[0]
            if job.get_status(refresh=True) != JobStatus.FINISHED:
                raise PipelineError(f"{stage} job {job_id} did not finish ({job.get_status()}): {_why(job)}")
            results[stage].append(job.return_value())
        job = stages.fetch_job(conn, dataset_job.id)
        if job.get_status(refresh=True) != JobStatus.FINISHED:
            raise PipelineError(f"the dataset build did not finish ({job.get_status()}): {_why(job)}")
        built = job.return_value()
    finally:
        conn.close()
    rows = _split_rows(Path(built.path))
    return PipelineRun(
        files=enqueued.files,
        ingested=sum(r.ingested for r in results["ingest"]),
        quarantined=sum(r.quarantined for r in results["ingest"]),
        kept_by_dedupe=sum(r.kept for r in results["dedupe"]),
        duplicates=sum(r.exact + r.near for r in results["dedupe"]),
        kept_by_label=sum(r.kept for r in results["label"]),
        dropped_by_label=sum(r.dropped for r in results["label"]),
        dataset_dir=built.path,
        dataset_digest=built.digest,
        rows=rows,
        worker_exit=worker.returncode,
    )


def _why(job) -> str:
    """The last line of a failed job's error (the stage's own message), or its status."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else "") or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"


def _split_rows(dataset_dir: Path) -> dict[str, int]:
    from tinygpt.runtime.contracts.dataset import DatasetManifest
    from tinygpt.runtime.contracts.io import read_json

    manifest = read_json(dataset_dir / "manifest.json", DatasetManifest)
    return {name: f.rows for name, f in sorted(manifest.splits.items())}
