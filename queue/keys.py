"""Every Redis key the pipeline writes, one helper per kind.

Keys share the ``tinygpt:`` prefix (RQ's own keys start with ``rq:``), so one Redis can
serve several tools and `tinygpt status` can find everything the pipeline owns.
Project names are validated before they become part of a key.
"""

from __future__ import annotations

import re

PREFIX = "tinygpt"

# Same rule as project / specialist names in tinygpt.project.json, plus "default".
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _project(project: str) -> str:
    if not _PROJECT.match(project):
        raise ValueError(f"project name {project!r} must be lower-case a-z, 0-9, '.', '_', '-' (at most 64)")
    return project


# --- global (keyed by the sha256 of a trajectory file) -----------------------------------


def files() -> str:
    """HASH file sha256 -> FileRecord (ingested or quarantined)."""
    return f"{PREFIX}:files"


def quarantine() -> str:
    """ZSET file sha256 scored by quarantine time (newest last)."""
    return f"{PREFIX}:quarantine"


def recent() -> str:
    """ZSET file sha256 scored by ingest time; trimmed to the newest few hundred."""
    return f"{PREFIX}:recent"


def pending() -> str:
    """HASH file sha256 -> id of the ingest job enqueued for it; ingest removes the entry
    when it records the file. Reconcile reads both to tell what Redis knows of a file."""
    return f"{PREFIX}:pending"


def projects() -> str:
    """SET of project names that have ingested trajectories."""
    return f"{PREFIX}:projects"


# --- per project ---------------------------------------------------------------------------


def versions(project: str) -> str:
    """HASH trajectory id -> sha256 of its current (most complete) file."""
    return f"{PREFIX}:p:{_project(project)}:versions"


def dedupe(project: str) -> str:
    """HASH file sha256 -> DedupeRecord."""
    return f"{PREFIX}:p:{_project(project)}:dedupe"


def labels(project: str) -> str:
    """HASH file sha256 -> LabelRecord."""
    return f"{PREFIX}:p:{_project(project)}:labels"


def exact_index(project: str) -> str:
    """HASH digest of a trajectory's token ids -> id of the trajectory kept with them."""
    return f"{PREFIX}:p:{_project(project)}:exact"


def lsh_buckets(project: str) -> str:
    """HASH band number + band hash (9 bytes) -> packed uint32 member numbers (a few)."""
    return f"{PREFIX}:p:{_project(project)}:lsh"


def lsh_members(project: str) -> str:
    """HASH member number -> msgpack [trajectory id, file sha256, MinHash signature bytes]."""
    return f"{PREFIX}:p:{_project(project)}:lsh:members"


def lsh_next(project: str) -> str:
    """STRING counter handing out member numbers."""
    return f"{PREFIX}:p:{_project(project)}:lsh:next"


def lsh_meta(project: str) -> str:
    """HASH of the index's fixed parameters (bands, rows, shingle), set on first use."""
    return f"{PREFIX}:p:{_project(project)}:lsh:meta"


def dedupe_lock(project: str) -> str:
    """Lock around the dedupe index's check-and-insert (one writer per project)."""
    return f"{PREFIX}:p:{_project(project)}:lock:dedupe"


def prompt_refs(project: str) -> str:
    """HASH prompt key -> sha256 of the first labelled answer (pairwise judge reference)."""
    return f"{PREFIX}:p:{_project(project)}:prompts"


def label_log(project: str) -> str:
    """STREAM of labelled file sha256s (field `sha`), in the order their labels were written."""
    return f"{PREFIX}:p:{_project(project)}:labelled"


def autopilot(project: str, specialist: str) -> str:
    """HASH of a build policy's state: stream cursor, last build, current build's job ids."""
    return f"{PREFIX}:p:{_project(project)}:autopilot:{_project(specialist)}"


def autopilot_pending(project: str, specialist: str) -> str:
    """HASH trajectory id -> kept training rows of the policy's selection not yet in a build."""
    return f"{PREFIX}:p:{_project(project)}:autopilot:{_project(specialist)}:pending"


def autopilot_trained(project: str, specialist: str) -> str:
    """SET of trajectory file sha256s in the dataset of the policy's last build."""
    return f"{PREFIX}:p:{_project(project)}:autopilot:{_project(specialist)}:trained"


def autopilot_lock(project: str, specialist: str) -> str:
    """Lock around one autopilot tick of a policy (two daemons on one Redis never both build)."""
    return f"{PREFIX}:p:{_project(project)}:autopilot:{_project(specialist)}:lock"


def autopilot_builds(project: str, specialist: str) -> str:
    """ZSET build id scored by the time the autopilot started it (the daily cap counts these)."""
    return f"{PREFIX}:p:{_project(project)}:autopilot:{_project(specialist)}:builds"


def datasets() -> str:
    """HASH dataset name -> msgpack DatasetManifest of its latest build."""
    return f"{PREFIX}:datasets"


def progress(job_id: str) -> str:
    """STRING JobProgress (JSON) of a running job; expires unless refreshed."""
    return f"{PREFIX}:progress:{job_id}"
