"""From dataset to served specialist: train, gate against the base model, publish, swap in.

Training and the gate run in spawned processes (`tinygpt train`, the eval gate's
`evaluate_gate`): both load MLX models of their own, and the runtime's model thread in
the demo process must stay the only thread of it that touches MLX. The gate's suite is
built from held-out tasks the collection never saw: each row is a task's first request,
scored on the first tool call (right function, right arguments).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tinygpt.runtime.contracts.base import Contract

from .errors import DemoError
from .fs import TOOLS
from .tasks import Task, opening

GATE_SUITE = "fileops-first-call"
GATE_ENTRY = "import sys; from tinygpt.runtime.demo.specialist import gate_main; sys.exit(gate_main(sys.argv[1:]))"


def registry_dir() -> Path:
    """The demo's registry, `<tinygpt home>/demo/specialists`, shared by every demo run.

    One registry per home keeps versions unique (fileops@1, @2, ...): the runtime caches
    pulled packages by name and version, so two work-dir registries each holding a
    different fileops@1 would make it re-download on every swap.
    """
    from tinygpt.runtime import paths

    return paths.subdir("demo") / "specialists"


class TrainSettings(Contract):
    # About two passes over the twenty-odd distinct successes a default run keeps. Every
    # row is ~850 tokens (tool list and worked examples) for ~50 trained ones, so steps
    # are what costs: ~20 s each with batch 2 on 2 shared cores.
    steps: int = 24
    batch_size: int = 2
    learning_rate: float = 1e-4
    # Adapting only the top blocks keeps the backward pass short on a CPU.
    num_layers: int = 8
    lora_rank: int = 8
    seed: int = 0


class Trained(Contract):
    adapter_dir: str
    command: list[str]
    steps_done: int
    best_step: int
    metrics: dict[str, float]
    seconds: float


class GateOutcome(Contract):
    """The eval gate's verdict on the candidate against the base model."""

    verdict: str
    candidate: float
    baseline: float | None
    delta: float | None
    n: int
    result_file: str
    message: str = ""


def train_command(model: str, dataset_dir: Path, out: Path, name: str, s: TrainSettings, method: str = "lora") -> list[str]:
    """The `tinygpt train` command line the demo runs (printed, so it can be rerun by hand)."""
    return [
        sys.executable, "-m", "tinygpt.runtime.cli", "train", "--model", model, "--data", str(dataset_dir),
        "--out", str(out), "--name", name, "--method", method, "--no-progress", "--seed", str(s.seed), "--steps", str(s.steps),
        "--batch-size", str(s.batch_size), "--learning-rate", str(s.learning_rate), "--num-layers", str(s.num_layers),
        "--lora-rank", str(s.lora_rank), "--warmup-steps", str(max(1, s.steps // 10)),
        # Validate at the end only: a handful of validation rows would pick an early
        # checkpoint by noise (the gate is the real check), and each pass costs minutes here.
        "--eval-every", "0", "--checkpoint-every", str(max(1, s.steps // 2)),
        "--report-every", str(max(1, s.steps // 6)),
    ]  # fmt: skip


def train(model: str, dataset_dir: Path, out: Path, name: str, s: TrainSettings, method: str = "lora") -> Trained:
    """Run `tinygpt train` in its own process and read back its training record."""
    import time

    from tinygpt.runtime.contracts.io import read_json
    from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingRecord

    cmd = train_command(model, dataset_dir, out, name, s, method)
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise DemoError(f"training failed (exit {done.returncode}); its error is printed above")
    record = read_json(out / TRAINING_RECORD, TrainingRecord)
    return Trained(
        adapter_dir=str(out), command=cmd, steps_done=record.steps_done, best_step=record.best_step,
        metrics=dict(record.metrics), seconds=time.perf_counter() - started,
    )  # fmt: skip


# ---------------------------------------------------------------- the gate


def _acceptable_paths(path: str, *, folder_ok: bool = False) -> list[str]:
    # The sandbox reads "docs/a.txt" as "/docs/a.txt", and `mv` semantics accept the folder.
    options = [path, path.lstrip("/")]
    if folder_ok:
        folder = path.rsplit("/", 1)[0]
        options += [folder, folder.lstrip("/")]
    return options


def gate_row(task: Task) -> dict[str, Any]:
    """One eval-gate row: the task's first request and its acceptable first calls."""
    first = task.solution[0]
    expected: dict[str, Any] = {}
    for key, value in first.arguments.items():
        if key in ("path", "source"):
            expected[key] = _acceptable_paths(value)
        elif key == "destination":
            expected[key] = _acceptable_paths(value, folder_ok=task.kind == "move")
        else:
            expected[key] = [value]
    return {
        "id": task.id,
        "messages": opening(task.prompt),
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "expected": [{"name": first.name, "arguments": expected}],
        "metadata": {"kind": task.kind},
    }


def write_gate_project(work: Path, model: str, tasks: list[Task], project: str, name: str) -> Path:
    """The demo's `tinygpt.project.json` in `work`: the base model, a pin for the specialist
    (any version until one is published), the demo's registry, and one eval
    suite made of the held-out gate tasks. Returns its path."""
    from tinygpt.runtime.contracts.evals import EvalSuite
    from tinygpt.runtime.contracts.io import write_json
    from tinygpt.runtime.contracts.project import GateSettings, ProjectPins, SpecialistPin

    data = work / "gate.jsonl"
    data.write_text("".join(json.dumps(gate_row(t)) + "\n" for t in tasks))
    pins = ProjectPins(
        name=project,
        base_model=model,
        specialists=[SpecialistPin(name=name)],
        registries=[str(registry_dir())],
        # Greedy, one pass: the same decoding the agent uses on held-out tasks. Any drop below
        # the base model counts, but only when it is statistically clear: with a dozen or two
        # items, one flipped answer is noise, not a regression.
        eval_suites=[EvalSuite(name=GATE_SUITE, kind="tool_call", data=data.name, threshold=0.0, max_tokens=96)],
        gate=GateSettings(baseline="base", cache=False, require_significance=True),
    )
    path = work / "tinygpt.project.json"
    write_json(path, pins)
    return path


def gate(project_file: Path, adapter_dir: Path, name: str, out: Path) -> GateOutcome:
    """Run the eval gate in its own process: the candidate adapter against the base model."""
    cmd = [sys.executable, "-X", "faulthandler", "-c", GATE_ENTRY, str(project_file), str(adapter_dir), name, str(out)]
    done = subprocess.run(cmd, check=False)
    if done.returncode < 0 and not out.is_file():
        # Killed by a signal (a native crash, or the OOM killer), not a verdict: the gate is
        # deterministic, so running it again costs time but cannot change what it decides.
        print(f"the eval gate process died ({_signal_name(-done.returncode)}; its stack is printed above); "
              "running it once more", file=sys.stderr)
        done = subprocess.run(cmd, check=False)
    if not out.is_file():
        why = _signal_name(-done.returncode) if done.returncode < 0 else f"exit {done.returncode}"
        raise DemoError(f"the eval gate wrote no result ({why}); its error is printed above")
    from tinygpt.runtime.contracts.evals import GateResult
    from tinygpt.runtime.contracts.io import read_json

    result = read_json(out, GateResult)
    verdict = next((v for v in result.suites if v.suite == GATE_SUITE), None)
    report = result.candidate.suite(GATE_SUITE)
    return GateOutcome(
        verdict=result.verdict,
        candidate=verdict.candidate if verdict else float("nan"),
        baseline=verdict.baseline if verdict else None,
        delta=verdict.delta if verdict else None,
        n=report.n if report else 0,
        result_file=str(out),
        message=result.message or (verdict.reason if verdict else ""),
    )


def _signal_name(number: int) -> str:
    import signal

    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"


def gate_main(argv: list[str]) -> int:
    """Entry point of the gate process: PROJECT_FILE ADAPTER_DIR NAME OUT."""
    import logging

    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.workers.evalgate import GateInputError, error_result, evaluate_gate

    logging.basicConfig(level=logging.WARNING)
    project_file, adapter_dir, name, out = Path(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    try:
        result = evaluate_gate(project_file, candidate=adapter_dir, specialist=name, baseline="base", use_cache=False, out=out)
    except GateInputError as e:
        from tinygpt.runtime.contracts.io import write_json

        write_json(out, error_result(str(e)))
        return 2
    return 0 if result.verdict == "pass" else 1


def publish(work: Path, project_file: Path, adapter_dir: Path, name: str, redis_url: str) -> dict[str, Any]:
    """The publish stage on the gated adapter (package, index, "published" notice on Redis),
    then the project's pin set to exactly that version and lock digest."""
    from tinygpt.queue.connection import connect
    from tinygpt.runtime.contracts.jobs import PublishJob
    from tinygpt.runtime.registry.pinfile import set_pin
    from tinygpt.workers.publish import run as publish_stage

    job = PublishJob(specialist=name, version="", candidate_dir=str(adapter_dir), registry=str(registry_dir()),
                     gate_result=str(work / "gate-result.json"))  # fmt: skip
    conn = connect(redis_url)
    try:
        result = publish_stage(job, conn)
    finally:
        conn.close()
    set_pin(project_file, name, result.version, result.digest)
    return {"model": f"{name}@{result.version}", "version": result.version, "digest": result.digest,
            "path": result.path, "registry": result.registry, "notified": result.notified}  # fmt: skip
