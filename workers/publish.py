"""The publish stage: a specialist that passed the eval gate goes into a registry and is announced.

    run(job: PublishJob, conn=None) -> PublishResult

Reads the gate's result (`job.gate_result`, the eval stage's gate-result.json), refuses
anything but a pass for exactly the weights in `job.candidate_dir`, writes the package
(adapter, model card, eval report, manifest, lock.json last) into `job.registry`, adds
it to the registry's index and publishes a "published" notification on Redis, so every
runtime whose pins accept the version pulls, verifies and swaps it in.

Idempotent: a retried job finds the package and the index entry already there and only
repeats the notification. Bad input (no pass, other weights, a malformed package) is a
PermanentError: retrying cannot fix it. `job.version` empty takes the next whole number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts.jobs import PublishJob
from tinygpt.runtime.contracts.specialist import PublishResult
from tinygpt.runtime.registry.errors import PackageError
from tinygpt.runtime.registry.publish import check_gate, local_registry, publish, read_gate

log = logging.getLogger("tinygpt.publish")


class PublishError(PermanentError):
    """The candidate may not, or cannot, be published; the message says why."""


def run(job: PublishJob, conn=None, *, say: Callable[[str], None] | None = None) -> PublishResult:
    """Publish `job.candidate_dir` as `job.specialist`; see the module doc."""
    say = say or log.info
    candidate = Path(job.candidate_dir)
    try:
        gate = read_gate(Path(job.gate_result))
        check_gate(gate, candidate, job.specialist)
        registry = local_registry(job.registry, Path.cwd())
        result = publish(candidate, registry, name=job.specialist, version=job.version or None, gate=gate, conn=conn)
    except PackageError as e:
        raise PublishError(f"publish {job.specialist}: {e}") from None
    what = "published" if result.created else "already published"
    say(f"{what} {result.name}@{result.version} ({result.digest[:12]}) in {result.registry}; "
        f"notified {max(result.notified, 0)} runtime(s)")
    return result
