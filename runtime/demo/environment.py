"""`tinygpt demo --task NAME` for a bundled environment other than the demo's own fileops loop.

The demo's settings become an environment run (`tinygpt.runtime.environments.factory`):
a project file in the work directory names the base model and the demo's registry, and
the run does its rounds there — held-out success of the base, collection, the pipeline,
LoRA, the held-out gate, publish, and the next round with the specialist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tinygpt.runtime.contracts.environments import EnvRunRecord, EnvRunSettings


def run_environment_demo(work: Path, model: str, project: str, settings: EnvRunSettings,
                         say: Callable[[str], None] = print,
                         progress: Callable[[int], Callable[[], None]] | None = None) -> EnvRunRecord:  # fmt: skip
    from tinygpt.runtime.contracts.io import write_json
    from tinygpt.runtime.contracts.project import ProjectPins
    from tinygpt.runtime.environments.factory import run_environment

    from .specialist import registry_dir

    work.mkdir(parents=True, exist_ok=True)
    project_file = work / "tinygpt.project.json"
    write_json(project_file, ProjectPins(name=project, base_model=model, registries=[str(registry_dir())]))
    kwargs = {"progress": progress} if progress is not None else {}
    return run_environment(project_file, settings, work, model=model, say=say, **kwargs)
