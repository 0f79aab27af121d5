"""The whole loop, end to end: baseline ▶ collect ▶ pipeline ▶ train ▶ gate ▶ swap ▶ after.

1. The scripted agent works held-out tasks greedily on the base model (the "before").
2. It works the training tasks several times each at a temperature, through the same
   runtime, which records every session; the checker's verdict goes back as feedback.
3. The recorded files go through the real queue (ingest ▶ dedupe ▶ label ▶ dataset, one
   burst worker process): only successful runs are kept (rejection sampling).
4. `tinygpt train` fits a LoRA specialist on the kept runs' token ids.
5. The eval gate compares it with the base model on other held-out tasks.
6. If it passes, the publish stage packages it into a registry in the work directory, the
   demo's project pins that version, and the runtime pulls, verifies and hot-swaps it in
   while serving (no restart, no base reload), as `tinygpt up` does on a pin change;
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
from .errors import DemoError
from .pipeline import PipelineError, run_pipeline, trajectory_file
from .specialist import TrainSettings, gate, publish, registry_dir, train, write_gate_project

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
    gate_tasks: int = 12
    temperature: float = 0.7
    max_turns: int = 3
    concurrency: int = 8
    seed: int = 0
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)


@dataclass
class Served:
    """The runtime the agent talks to, however it was started."""

    url: str
    base_name: str
    trajectories_dir: Path
    seal: Callable[[], None]
    # (project file, name, published version, its package dir) -> what the swap did.
    swap: Callable[[Path, str, str, str], dict[str, Any]]


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

    def swap(project_file: Path, name: str, version: str, package: str) -> dict[str, Any]:
        # What `tinygpt up` does when a pin changes: pull from the registry, verify, hot-swap.
        from tinygpt.runtime.registry.swap import Swapper

        report = Swapper(rt, project_file, say=log.info).sync("demo: published")
        if name in report.errors or f"{name}@{version}" not in report.loaded + report.kept:
            raise DemoError(f"the runtime did not swap in {name}@{version}: {report.errors.get(name, 'not loaded')}")
        return {"via": "pin + registry pull + hot swap (Swapper)", "swap_seconds": report.swap_seconds.get(f"{name}@{version}")}

    try:
        yield Served(url=rt.url, base_name=rt.registry.base_name, trajectories_dir=traj,
                     seal=lambda: rt.recorder.seal_all().result(), swap=swap)  # fmt: skip
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

    def swap(project_file: Path, name: str, version: str, package: str) -> dict[str, Any]:
        # That runtime follows its own project's pins; load the published package directly.
        body = {"name": name, "path": package, "version": version}
        result = _http_json(f"{root}/admin/adapters", key=cfg.admin_key or cfg.api_key, body=body)
        return {"via": "POST /admin/adapters (hot swap)", "swap_seconds": result.get("seconds")}

    yield Served(url=root, base_name=base, trajectories_dir=Path(cfg.trajectories_dir), seal=lambda: None, swap=swap)


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
    function called once per finished run (for a progress bar). Whatever was measured
    before a DemoError is in the summary file too.
    """
    work = Path(cfg.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = cfg.project or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    served = remote_runtime(cfg) if cfg.url else local_runtime(cfg, work, project)
    with served as srv:
        run = _Loop(cfg, srv, work, project, say, progress)
        try:
            run.measure_before_and_collect()
            run.specialize()
        except DemoError as e:
            if run.summary is not None:
                run.summary.note = str(e)
            raise
        finally:
            if run.summary is not None:
                write_summary(work, run.summary)
    return run.summary


class _Loop:
    """One demo run: the steps in order, each filling in the summary as it goes."""

    def __init__(self, cfg: DemoConfig, srv: Served, work: Path, project: str, say, progress):
        self.cfg, self.srv, self.work, self.project, self.say, self.progress = cfg, srv, work, project, say, progress
        self.client = make_client(srv.url, cfg.api_key)
        # One list of distinct held-out tasks, cut in two: the gate's tasks and the before /
        # after tasks are disjoint by construction, not by chance.
        held_out = tasks.generate(cfg.test_tasks + cfg.gate_tasks, cfg.seed, "test")
        self.test, self.gate_set = held_out[: cfg.test_tasks], held_out[cfg.test_tasks :]
        self.train_set = tasks.generate(cfg.tasks, cfg.seed, "train")
        self.summary: report.DemoSummary | None = None
        self.collected: list[Episode] = []
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._clock, 2)
        self._clock = now
        return self.seconds[phase]

    def episodes(self, task_list: list[tasks.Task], attempts: int, agent: AgentConfig) -> list[Episode]:
        jobs = [(t, a) for t in task_list for a in range(attempts)]
        advance = self.progress(len(jobs))
        return run_many(self.client, jobs, agent, concurrency=self.cfg.concurrency, on_done=lambda e: advance())

    def measure_before_and_collect(self) -> None:
        cfg, srv = self.cfg, self.srv
        self.say(f"runtime {srv.url}/v1 serving {srv.base_name}; work dir {self.work}")
        greedy = AgentConfig(model=srv.base_name, temperature=0.0, max_turns=cfg.max_turns)
        self.say(f"1/6 baseline: {len(self.test)} held-out tasks, greedy, on the base model")
        before = report.score(srv.base_name, self.episodes(self.test, 1, greedy))
        before.seconds = self.lap("before")
        self.say(f"   {before.successes}/{before.n} succeeded")

        self.say(f"2/6 collect: {len(self.train_set)} training tasks x {cfg.attempts} attempts at temperature {cfg.temperature}")
        sampled = msgspec.structs.replace(greedy, temperature=cfg.temperature, seed=cfg.seed + 1)
        self.collected = self.episodes(self.train_set, cfg.attempts, sampled)
        srv.seal()
        c = report.collection(len(self.train_set), cfg.attempts, cfg.temperature, self.collected, self.lap("collect"))
        self.say(f"   {c.successes}/{c.episodes} runs succeeded ({c.tasks_solved} of {c.tasks} tasks solved)")
        self.summary = report.DemoSummary(
            model=cfg.model, specialist=cfg.name, project=self.project, runtime_url=srv.url, before=before,
            after=None, collection=c, pipeline={}, training=None, gate=None, published=None,
            settings=msgspec.to_builtins(cfg), seconds=self.seconds,
        )  # fmt: skip

    def specialize(self) -> None:
        """Steps 3-6, then the held-out tasks again on the specialist."""
        cfg, srv, summary = self.cfg, self.srv, self.summary
        files = [trajectory_file(srv.trajectories_dir, e.trajectory_id) for e in self.collected if e.trajectory_id]
        if None in files:
            raise DemoError(f"recorded sessions are missing from {srv.trajectories_dir} (is it the runtime's --trajectories-dir?)")
        if cfg.url:
            from tinygpt.runtime.contracts.io import read_any
            from tinygpt.runtime.contracts.trajectory import Trajectory

            # A runtime started elsewhere records under its own --project.
            self.project = summary.project = read_any(files[0], Trajectory).project
        redis_url = cfg.redis_url or _redis_url()
        self.say(f"3/6 pipeline: {len(files)} recorded sessions ▶ ingest ▶ dedupe ▶ label ▶ dataset (burst worker)")
        try:
            run = run_pipeline(files, base_model=srv.base_name, project=self.project, dataset_name=self.project,
                               redis_url=redis_url, seed=cfg.seed)  # fmt: skip
        except PipelineError as e:
            raise DemoError(f"pipeline: {e}") from None
        summary.pipeline = dict(vars(run))
        self.lap("pipeline")
        self.say(f"   kept {run.kept_by_label} of {run.ingested} sessions; dataset {run.dataset_dir} rows {run.rows}")
        if not run.rows.get("train"):
            raise DemoError("the dataset has no training rows: more --tasks or --attempts give the sampler more chances")

        adapter = self.work / "adapter"
        self.say(f"4/6 train: LoRA, {cfg.train.steps} steps on {run.rows['train']} rows")
        summary.training = msgspec.to_builtins(train(cfg.model, Path(run.dataset_dir), adapter, cfg.name, cfg.train))
        self.lap("train")

        self.say(f"5/6 gate: candidate vs base model on {len(self.gate_set)} other held-out tasks (first call)")
        project_file = write_gate_project(self.work, cfg.model, self.gate_set, self.project, cfg.name)
        verdict = gate(project_file, adapter, cfg.name, self.work / "gate-result.json")
        summary.gate = msgspec.to_builtins(verdict)
        self.lap("gate")
        if verdict.verdict != "pass":
            raise DemoError(f"the eval gate refused the specialist ({verdict.verdict}: {verdict.message}); the base model keeps serving")

        self.say(f"6/6 publish {cfg.name} to the registry {registry_dir()}, pin it, hot-swap it in")
        published = publish(self.work, project_file, adapter, cfg.name, redis_url)
        summary.published = {**published, **srv.swap(project_file, cfg.name, published["version"], published["path"])}
        self.lap("publish")
        specialist = AgentConfig(model=cfg.name, temperature=0.0, max_turns=cfg.max_turns)
        after = report.score(cfg.name, self.episodes(self.test, 1, specialist))
        after.seconds = self.lap("after")
        summary.after = after
        summary.improved = after.success_rate > summary.before.success_rate
        summary.paired = report.paired(summary.before, after)


def _redis_url() -> str:
    from tinygpt.queue.connection import redis_url

    return redis_url()


def write_summary(work: Path, summary: report.DemoSummary) -> Path:
    from tinygpt.runtime.contracts.io import write_json

    summary.seconds["total"] = round(sum(v for k, v in summary.seconds.items() if k != "total"), 2)
    path = work / SUMMARY_FILE
    write_json(path, summary)
    return path
