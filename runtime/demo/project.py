"""The demo's `tinygpt.project.json`: what a user writes to make `tinygpt up` train a specialist.

- the base model and the demo's registry (`<home>/demo/specialists`, shared by every demo
  run so versions stay unique: the runtime caches pulled packages by name and version);
- the specialist pinned `"*"`: every version whose gate passed is hot-swapped in;
- its build policy: the collection episodes only (request metadata `demo: collect`; the
  held-out episodes are tagged otherwise and never train), a LoRA fit, and the gate on
  the environment's held-out split (tasks the before / after measurement does not use)
  plus the no-forgetting rule (the shipped general tool-calling suite);
- the pipeline's keep rule: an episode is kept only when the checker's reward (posted as
  feedback) is 1 and every tool call validated.

The trigger is the one knob the demo turns while `up` runs, as an operator would: builds
are held (`max_per_day` = the builds already started) while a round collects, and let go
once the daemon has labelled the round (`min_new_rows` = the rows it counted), so each
round gives exactly one build on everything collected so far.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

COLLECT_TAG = {"demo": "collect"}
HELD_OUT_TAG = {"demo": "held-out"}


def registry_dir() -> Path:
    from tinygpt.runtime import paths

    return paths.subdir("demo") / "specialists"


def suite_name(task: str) -> str:
    return f"{task}-held-out"


def write_project(path: Path, *, project: str, model: str, task: str, name: str, seed: int, test_tasks: int,
                  gate_tasks: int, training: dict, builds_started: int, release_rows: int = 0, entry: str | None = None) -> Path:
    """Write (atomically) the project file; builds held unless `release_rows` > 0."""
    from tinygpt.runtime.contracts.io import write_json
    from tinygpt.runtime.contracts.project import ProjectPins
    from tinygpt.runtime.environments.pipeline import episode_settings

    registry_dir().mkdir(parents=True, exist_ok=True)  # empty until the first publish, but there
    trigger = {"min_new_rows": max(1, release_rows), "min_interval_s": 0,
               "max_per_day": builds_started + (1 if release_rows > 0 else 0)}
    doc = {
        "name": project,
        "base_model": model,
        "registries": [str(registry_dir())],
        "eval_suites": [
            # Greedy, one episode per task, on held-out tasks after the before / after ones.
            {"name": suite_name(task), "kind": "environment", "environment": task, "seed": seed, "threshold": 0.0,
             "options": {"tasks": gate_tasks, "skip": test_tasks}},
        ],
        # Against what serves now (the last promoted version, else the base model). Any drop
        # counts, but only when it is statistically clear: with a dozen or two tasks, one
        # flipped answer is noise, not a regression. No forgetting: the shipped general
        # tool-calling suite (50 BFCL questions) may not get significantly worse either.
        "gate": {"baseline": "pinned", "cache": False, "require_significance": True, "rules": ["no-forgetting"]},
        "pipeline": msgspec.to_builtins(episode_settings(seed)),
        "environments": [{"name": task, "entry": entry}] if entry else [],
        "specialists": [{
            "name": name, "version": "*",
            "build": {"select": {"metadata": COLLECT_TAG}, "trigger": trigger, "method": "lora", "training": training,
                      "seed": seed, "gate": {"suites": [suite_name(task)]}},
        }],
    }
    write_json(path, msgspec.convert(doc, ProjectPins))
    return path
