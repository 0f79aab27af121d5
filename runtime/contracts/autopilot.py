"""What the autopilot (queue/autopilot.py) leaves behind: a record per build, a status per policy."""

from __future__ import annotations

from .base import Contract
from .jobs import JobProgress


class AutopilotBuild(Contract):
    """`autopilot.json` in a build's folder: what a policy built from, written when it enqueued
    the build. The autopilot rebuilds its Redis state from these after a Redis wipe."""

    specialist: str
    project: str
    build_id: str
    dataset_dir: str
    dataset_digest: str
    # The dataset's trajectory files (sha256): rows counted toward the next build are those
    # not in here.
    sources: list[str]
    rows: int
    started_at: float
    schema_version: int = 1


class PolicyStatus(Contract):
    """One build policy at a glance (`tinygpt status`, `up`'s screen, `status --json`)."""

    specialist: str
    project: str
    # Kept rows of the selection not in the last build, and the trigger's threshold.
    rows: int
    needed: int
    # Why no build starts now ("" while one runs or when it is about to).
    waiting: str = ""
    # The build in progress: its id, the stage it is in, job ids by stage.
    building: str = ""
    stage: str = ""
    jobs: dict[str, str] = {}
    # What the running stage's job last reported (training steps, gate answers).
    progress: JobProgress | None = None
    # The last finished build: verdict ("pass", "regression", "error", "failed"), the gate's
    # numbers per suite, the version it published, its folder (adapter + gate report).
    last_verdict: str = ""
    last_message: str = ""
    last_numbers: list[str] = []
    last_version: str = ""
    last_root: str = ""
    last_at: float = 0.0
    # The version the runtime serves (when known to the caller).
    serving: str = ""
