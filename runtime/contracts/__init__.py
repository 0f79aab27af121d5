"""Typed contracts at every boundary (msgspec Structs, versioned, unknown fields rejected).

`KINDS` names every top-level contract for `tinygpt schema` and `tinygpt validate`.
"""

from __future__ import annotations

from .base import Contract, ContractError
from .dataset import DatasetManifest, DatasetRow, PreferencePair
from .environments import EnvRunRecord, EnvTask, Reward
from .evals import EvalReport, EvalSuite, GateResult
from .io import atomic_write_bytes, decode_json, decode_msgpack, read_any, read_json, to_msgpack, write_json
from .jobs import JOB_KINDS
from .project import PROJECT_FILE, ProjectPins, SpecialistPin
from .specialist import PinsLock, PublishedNotice, RegistryIndex, SpecialistLock, SpecialistManifest
from .trajectory import Feedback, Step, Trajectory

KINDS: dict[str, type[Contract]] = {
    "project": ProjectPins,
    "trajectory": Trajectory,
    "feedback": Feedback,
    "dataset-row": DatasetRow,
    "dataset-manifest": DatasetManifest,
    "preference-pair": PreferencePair,
    "specialist-manifest": SpecialistManifest,
    "specialist-lock": SpecialistLock,
    "registry-index": RegistryIndex,
    "pins-lock": PinsLock,
    "published-notice": PublishedNotice,
    "eval-suite": EvalSuite,
    "eval-report": EvalReport,
    "gate-result": GateResult,
    "env-task": EnvTask,
    "env-reward": Reward,
    "env-run": EnvRunRecord,
    **{f"job-{name}": kind for name, kind in JOB_KINDS.items()},
}

__all__ = [
    "KINDS",
    "PROJECT_FILE",
    "Contract",
    "ContractError",
    "DatasetManifest",
    "DatasetRow",
    "EvalReport",
    "EvalSuite",
    "Feedback",
    "GateResult",
    "PreferencePair",
    "ProjectPins",
    "RegistryIndex",
    "SpecialistLock",
    "SpecialistManifest",
    "SpecialistPin",
    "Step",
    "Trajectory",
    "atomic_write_bytes",
    "decode_json",
    "decode_msgpack",
    "read_any",
    "read_json",
    "to_msgpack",
    "write_json",
]
