"""The whole loop, end to end: baseline ▶ collect ▶ pipeline ▶ train ▶ gate ▶ swap ▶ after.

1. The scripted agent works held-out tasks greedily on the base model (the "before").
2. It works the training tasks several times each at a temperature, through the same
   runtime, which records every session; the checker's verdict goes back as feedback.
3. The recorded files go through the real queue (ingest ▶ dedupe ▶ label ▶ dataset, one
   burst worker process): only successful runs are kept (rejection sampling).
4. `tinygpt train` fits a LoRA specialist on the kept runs' token ids.
5. The eval gate compares it with the base model on other held-out tasks.
6. If it passes, the runtime loads it while serving (no restart, no base reload), and
7. the agent works the held-out tasks again, now asking for the specialist (the "after").

Eval runs are recorded like any session but never enqueued, so held-out tasks cannot
leak into training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tinygpt.runtime.contracts.base import Contract

from . import report, tasks
from .agent import AgentConfig, Episode, make_client, run_many
from .pipeline import PipelineError, run_pipeline, trajectory_file
from .specialist import TrainSettings, gate, train, write_gate_project

log = logging.getLogger("tinygpt.demo")

SUMMARY_FILE = "demo-summary.json"


class DemoConfig(Contract):
    """Every knob of `tinygpt demo`; the defaults finish in minutes on a 2-core CPU."""

    work: str
    model: str = "smollm2-135m-instruct"
    # An already running runtime (…/v1 optional); None starts one in this process.
    url: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    # Where that runtime writes trajectories (its --trajectories-dir), to read them back.
    trajectories_dir: str | None = None
    name: str = "fileops"
    project: str | None = None
    redis_url: str | None = None
    tasks: int = 24
    attempts: int = 4
    test_tasks: int = 24
    gate_tasks: int = 16
    temperature: float = 0.7
    max_turns: int = 3
    concurrency: int = 8
    seed: int = 0
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)


class DemoError(RuntimeError):
    """The loop could not go on (nothing to train on, a stage failed); the message says why."""


@dataclass
class Served:
    """The runtime the agent talks to, however it was started."""

    url: str
    base_name: str
    trajectories_dir: Path
    seal: Callable[[], None]
    load: Callable[[str, str], dict[str, Any]]


@contextlib.contextmanager
def local_runtime(cfg: DemoConfig, work: Path, project: str) -> Iterator[Served]:
    """A runtime in this process on 127.0.0.1 and a free port, recording into `work`."""
    from tinygpt.runtime.serving.app import Runtime, ServerConfig

    traj = work / "trajectories"
    config = ServerConfig(
        model=cfg.model, port=0, trajectories_dir=str(traj), project=project,
        # Sessions are sealed explicitly once collected; never mid-run by the idle timer.
        session_idle_s=24 * 3600.0, max_batch=max(16, cfg.concurrency), api_key=cfg.api_key,
    )  # fmt: skip
    # No queue hook: the demo puts the collection files on the pipeline itself, so eval
    # sessions (recorded too) never reach a training set.
    rt = Runtime(config).start()
    try:
        yield Served(
            url=rt.url,
            base_name=rt.registry.base_name,
            trajectories_dir=traj,
            seal=lambda: rt.recorder.seal_all().result(),
            load=lambda name, path: rt.load_adapter(name, path),
        )
    finally:
        rt.stop()


def _http_json(url: str, *, key: str | None = None, body: dict | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def remote_runtime(cfg: DemoConfig) -> Iterator[Served]:
    """A runtime started elsewhere on this machine (`tinygpt serve --no-queue ...`)."""
    if not cfg.trajectories_dir:
        raise DemoError("--url needs --trajectories-dir: the demo reads that runtime's recorded sessions from disk")
    root = cfg.url.rstrip("/").removesuffix("/v1")
    cards = _http_json(f"{root}/v1/models", key=cfg.api_key)["data"]
    base = next((c["id"] for c in cards if "root" not in c), None)
    if base is None:
        raise DemoError(f"{root}/v1/models lists no base model")

    def load(name: str, path: str) -> dict[str, Any]:
        return _http_json(f"{root}/admin/adapters", key=cfg.admin_key or cfg.api_key, body={"name": name, "path": path})

    yield Served(url=root, base_name=base, trajectories_dir=Path(cfg.trajectories_dir), seal=lambda: None, load=load)


def _episodes(client, task_list: list[tasks.Task], attempts: int, agent: AgentConfig, concurrency: int, progress) -> list[Episode]:
    jobs = [(t, a) for t in task_list for a in range(attempts)]
    advance = progress(len(jobs))
    return run_many(client, jobs, agent, concurrency=concurrency, on_done=lambda e: advance())


def _no_progress(total: int) -> Callable[[], None]:
    return lambda: None


def run_demo(
    cfg: DemoConfig,
    *,
    say: Callable[[str], None] = print,
    progress: Callable[[int], Callable[[], None]] = _no_progress,
) -> report.DemoSummary:
    """Run the loop and write `<work>/demo-summary.json`; raises DemoError when it cannot finish.

    `progress(total)` is called at the start of each agent phase and returns the
    function called once per finished run (for a progress bar).
    """
    work = Path(cfg.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = cfg.project or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    test = tasks.generate(cfg.test_tasks, cfg.seed, "test")
    gate_set = tasks.generate(cfg.gate_tasks, cfg.seed + 1, "test")
    train_set = tasks.generate(cfg.tasks, cfg.seed, "train")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(now - clock, 2)
        clock = now

    served_ctx = remote_runtime(cfg) if cfg.url else local_runtime(cfg, work, project)
    with served_ctx as srv:
        lap("start")
        say(f"runtime {srv.url}/v1 serving {srv.base_name}; work dir {work}")
        client = make_client(srv.url, cfg.api_key)
        greedy = AgentConfig(model=srv.base_name, temperature=0.0, max_turns=cfg.max_turns)

        say(f"1/6 baseline: {len(test)} held-out tasks, greedy, on the base model")
        before_eps = _episodes(client, test, 1, greedy, cfg.concurrency, progress)
        lap("before")
        before = report.score(srv.base_name, before_eps, seconds["before"])

        say(f"2/6 collect: {len(train_set)} training tasks x {cfg.attempts} attempts at temperature {cfg.temperature}")
        sampled = msgspec.structs.replace(greedy, temperature=cfg.temperature, seed=cfg.seed + 1)
        collect_eps = _episodes(client, train_set, cfg.attempts, sampled, cfg.concurrency, progress)
        srv.seal()
        lap("collect")
        collected = report.collection(len(train_set), cfg.attempts, cfg.temperature, collect_eps, seconds["collect"])
        say(f"   {collected.successes}/{collected.episodes} runs succeeded ({collected.tasks_solved} of {collected.tasks} tasks solved)")

        summary = report.DemoSummary(
            model=cfg.model, specialist=cfg.name, project=project, runtime_url=srv.url, before=before, after=None,
            collection=collected, pipeline={}, training=None, gate=None, published=None,
            settings=msgspec.to_builtins(cfg), seconds=seconds,
        )  # fmt: skip
        try:
            _specialize(cfg, srv, client, work, project, collect_eps, gate_set, test, summary, say, progress, lap)
        except DemoError as e:
            summary.note = str(e)
            raise
        finally:
            write_summary(work, summary)
    return summary


def _specialize(cfg, srv: Served, client, work: Path, project: str, collect_eps, gate_set, test, summary, say, progress, lap) -> None:
    """Steps 3-7; fills `summary` as it goes (so a failure still leaves what was measured)."""
    files = [trajectory_file(srv.trajectories_dir, e.trajectory_id) for e in collect_eps if e.trajectory_id]
    missing = sum(f is None for f in files)
    if missing:
        raise DemoError(f"{missing} recorded sessions are not in {srv.trajectories_dir} (is it the runtime's --trajectories-dir?)")
    if cfg.url:
        from tinygpt.runtime.contracts.io import read_any
        from tinygpt.runtime.contracts.trajectory import Trajectory

        # A runtime started elsewhere records under its own --project.
        project = summary.project = read_any(files[0], Trajectory).project
    redis_url = cfg.redis_url or _redis_url()
    say(f"3/6 pipeline: {len(files)} recorded sessions ▶ ingest ▶ dedupe ▶ label ▶ dataset (burst worker, {redis_url})")
    try:
        run = run_pipeline(files, base_model=srv.base_name, project=project, dataset_name=project, redis_url=redis_url, seed=cfg.seed)
    except PipelineError as e:
        raise DemoError(f"pipeline: {e}") from None
    summary.pipeline = {k: v for k, v in vars(run).items()}
    lap("pipeline")
    say(f"   kept {run.kept_by_label} of {run.ingested} sessions; dataset {run.dataset_dir} rows {run.rows}")
    if not run.rows.get("train"):
        raise DemoError("the dataset has no training rows: more --tasks or --attempts give the sampler more chances to succeed")

    adapter = work / "adapter"
    say(f"4/6 train: LoRA, {cfg.train.steps} steps on {run.rows.get('train', 0)} rows")
    trained = train(cfg.model, Path(run.dataset_dir), adapter, cfg.name, cfg.train)
    summary.training = msgspec.to_builtins(trained)
    lap("train")

    say(f"5/6 gate: candidate vs base model on {len(gate_set)} other held-out tasks (first call)")
    project_file = write_gate_project(work, cfg.model, gate_set, project)
    verdict = gate(project_file, adapter, cfg.name, work / "gate-result.json")
    summary.gate = msgspec.to_builtins(verdict)
    lap("gate")
    if verdict.verdict != "pass":
        raise DemoError(f"the eval gate refused the specialist ({verdict.verdict}: {verdict.message}); the base model keeps serving")

    say(f"6/6 publish: hot-swapping {cfg.name} into the running runtime, then the held-out tasks again")
    loaded = srv.load(cfg.name, str(adapter))
    info = loaded.get("loaded", {})
    summary.published = {
        "via": "runtime.load_adapter" if not cfg.url else "POST /admin/adapters",
        "model": f"{info.get('name', cfg.name)}@{info.get('version', '?')}",
        "digest": info.get("digest", ""),
        "swap_seconds": loaded.get("seconds"),
        "adapter_dir": str(adapter),
    }
    lap("publish")
    specialist = AgentConfig(model=cfg.name, temperature=0.0, max_turns=cfg.max_turns)
    after_eps = _episodes(client, test, 1, specialist, cfg.concurrency, progress)
    lap("after")
    summary.after = report.score(cfg.name, after_eps, summary.seconds["after"])
    summary.improved = summary.after.success_rate > summary.before.success_rate


def _redis_url() -> str:
    from tinygpt.queue.connection import redis_url

    return redis_url()


def write_summary(work: Path, summary: report.DemoSummary) -> Path:
    from tinygpt.runtime.contracts.io import write_json

    summary.seconds["total"] = round(sum(v for k, v in summary.seconds.items() if k != "total"), 2)
    path = work / SUMMARY_FILE
    write_json(path, summary)
    return path
