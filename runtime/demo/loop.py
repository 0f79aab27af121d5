"""The demo: a user's agent working an environment through `tinygpt up`, which gets better at it by itself.

1. Start `tinygpt up` (embedded Redis, the base model) on a project file written in the work
   directory (runtime/demo/project.py: the specialist pinned "*", its build policy, the
   environment's held-out split as the gate) — or use one already running (`--url`).
2. Before: the agent works held-out tasks greedily through the runtime (the base model).
3. Per round: the agent works every training task `attempts` times at a temperature with
   what serves now (chat with the environment's tools, results as `tool` messages, the
   checker's reward through the feedback endpoint: runtime/environments/runner.py), part of
   the attempts exploring under a constrained tool_choice. Then it waits: the daemon seals,
   ingests, dedupes and labels the sessions; the demo lets the build policy fire once the
   round is counted; the daemon builds the dataset, fine-tunes, gates, publishes and
   hot-swaps the new version in. The round ends when the runtime serves it.
4. After: the same held-out tasks again, now asking for the specialist; paired per task.

The demo never runs a pipeline stage itself; stage times and verdicts are read back from
the daemon's build folders. Held-out sessions are recorded too, but tagged so the build
policy's selection never takes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.environments.training import TrainSettings

from . import report
from .errors import DemoError
from .project import COLLECT_TAG, HELD_OUT_TAG, registry_dir, write_project

log = logging.getLogger("tinygpt.demo")

SUMMARY_FILE = "demo-summary.json"
PROJECT_FILE = "tinygpt.project.json"

__all__ = ["DemoConfig", "DemoError", "SUMMARY_FILE", "TrainSettings", "run_demo"]


class DemoConfig(Contract):
    """Every knob of `tinygpt demo`; the defaults finish in minutes on a 2-core CPU."""

    work: str
    # An environment: a bundled one (fileops, shop), or any with `entry`.
    task: str = "fileops"
    # `package.module:Class` of the environment (importable from the work directory), written
    # into the project file's `environments`; None: the bundled environment `task`.
    entry: str | None = None
    model: str = "smollm2-135m-instruct"
    # A running `tinygpt up` (…/v1 optional); None starts one.
    url: str | None = None
    api_key: str | None = None
    name: str = "fileops"
    project: str | None = None
    tasks: int = 24
    attempts: int = 4
    test_tasks: int = 24
    gate_tasks: int = 12
    rounds: int = 1
    explore: float = 0.0
    # Relabel failed collection episodes with the task they achieved (Environment.hindsight).
    hindsight: bool = False
    temperature: float = 0.7
    # Requests per episode; None: the environment's own (fileops: 3).
    max_turns: int | None = None
    # Agent sessions at once; None: by the daemon's device (device.CLIENTS_AT_ONCE, from /health).
    concurrency: int | None = None
    seed: int = 0
    # How long a session stays open after its last request in the `up` the demo starts.
    session_idle: float = 2.0
    train: TrainSettings = msgspec.field(default_factory=TrainSettings)


def _no_progress(total: int) -> Callable[[], None]:
    return lambda: None


def run_demo(cfg: DemoConfig, *, say: Callable[[str], None] = print,
             progress: Callable[[int], Callable[[], None]] = _no_progress) -> report.DemoSummary:
    """Run the demo and write `<work>/demo-summary.json`; raises DemoError when it cannot finish
    (whatever was measured before is in the summary file too)."""
    from tinygpt.runtime.environments import runner
    from tinygpt.runtime.environments.loader import EnvironmentBroken, load

    work = Path(cfg.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = _Demo(cfg, work, say, progress)
    try:
        run.env = load(run.project_file, cfg.task, run.pins()) if cfg.url is None else _standalone(cfg)
        train, test = runner.split_tasks(run.env, cfg.task, cfg.tasks, cfg.test_tasks, cfg.seed)
        run.start()
        run.measure_before(test)
        run.rounds(train)
        run.measure_after(test)
    except EnvironmentBroken as e:
        run.note(str(e))
        raise DemoError(str(e)) from None
    except DemoError as e:
        run.note(str(e))
        raise
    finally:
        run.close()
    return run.summary


def _standalone(cfg: DemoConfig):
    """The environment without a project file of ours (--url: the daemon has its own)."""
    from tinygpt.runtime.environments.loader import BUNDLED, EnvironmentBroken, instantiate

    entry = cfg.entry or BUNDLED.get(cfg.task)
    if entry is None:
        raise EnvironmentBroken(f"no bundled environment {cfg.task!r} (bundled: {', '.join(BUNDLED)})")
    return instantiate(entry, Path(cfg.work).resolve())


class _Demo:
    def __init__(self, cfg: DemoConfig, work: Path, say, progress):
        self.cfg, self.work, self.say, self.progress = cfg, work, say, progress
        # A daemon at --url records under its own project file's name, whatever the demo says.
        self.project = "" if cfg.url else cfg.project or f"demo-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.project_file = work / PROJECT_FILE
        self.up = None
        self.url = ""
        self.base = ""
        self.env = None
        self.summary: report.DemoSummary | None = None
        self.seconds: dict[str, float] = {}
        self.kinds: dict[str, str] = {}
        self.builds = 0
        if cfg.url is None:
            self.write(release_rows=0)

    # -- the project file and the daemon

    def write(self, release_rows: int) -> None:
        cfg = self.cfg
        training = msgspec.structs.replace(cfg.train, seed=cfg.seed).hyperparameters()
        write_project(self.project_file, project=self.project, model=cfg.model, task=cfg.task, name=cfg.name, seed=cfg.seed,
                      test_tasks=cfg.test_tasks, gate_tasks=cfg.gate_tasks, training=training, builds_started=self.builds, entry=cfg.entry,
                      release_rows=release_rows)

    def pins(self):
        from tinygpt.runtime.project import load_project

        return load_project(self.project_file)

    def start(self) -> None:
        from tinygpt.runtime.environments import runner

        from . import daemon

        clock = time.perf_counter()
        if self.cfg.url is None:
            self.say(f"starting `tinygpt up` on {self.project_file} (log: {self.work / 'up.log'})")
            self.up = daemon.Up(self.work, self.project_file, session_idle=self.cfg.session_idle, say=self.say)
            self.url = self.up.wait_line(r"Runtime: (http://\S+?)(/v1)?\s").group(1)
        else:
            self.url = self.cfg.url.rstrip("/").removesuffix("/v1")
        self.seconds["start"] = round(time.perf_counter() - clock, 2)
        self.base = daemon.base_name(self.url, self.cfg.api_key)
        self.client = runner.make_client(self.url, self.cfg.api_key)
        if self.cfg.concurrency is None:
            from tinygpt.runtime.device import CLIENTS_AT_ONCE

            try:
                health = daemon.get_json(f"{self.url}/health", self.cfg.api_key)
            except (OSError, ValueError):  # an unhealthy daemon fails the run soon enough; size for a CPU
                health = None
            device = health.get("device") if isinstance(health, dict) else None
            backend = device.get("backend") if isinstance(device, dict) else None
            self.cfg = msgspec.structs.replace(self.cfg, concurrency=CLIENTS_AT_ONCE.get(backend, CLIENTS_AT_ONCE["cpu"]))
        self.say(f"runtime {self.url}/v1 serving {self.base}; {self.cfg.concurrency} sessions at once; work dir {self.work}")

    def close(self) -> None:
        if self.up is not None:
            code = self.up.stop()
            if self.summary is not None:
                self.summary.peak_rss_mb = round(self.up.peak_rss / 2**20, 1)
                self.summary.daemon["exit_code"] = code
        if self.summary is not None:
            write_summary(self.work, self.summary)

    def note(self, text: str) -> None:
        if self.summary is not None:
            self.summary.note = text

    # -- episodes, as a user's agent runs them

    def sampling(self, model: str, temperature: float, seed: int | None, tag: dict[str, str]):
        from tinygpt.runtime.environments import runner

        # Held-out episodes are never relabeled: they are never trained on.
        return runner.Sampling(model=model, temperature=temperature, max_turns=self.cfg.max_turns or self.env.max_turns, max_tokens=self.env.max_tokens,
                               seed=seed, source=f"demo:{self.cfg.task}", metadata=tag,
                               hindsight=self.cfg.hindsight and tag == COLLECT_TAG)

    def episodes(self, jobs, cfg):
        from tinygpt.runtime.environments import runner

        advance = self.progress(len(jobs))
        return runner.run_many(self.client, self.env, self.cfg.task, jobs, cfg, concurrency=self.cfg.concurrency,
                               on_done=lambda r: advance())

    def held_out(self, model: str, test) -> list:
        from tinygpt.runtime.environments import runner

        return self.episodes([runner.Attempt(t) for t in test], self.sampling(model, 0.0, None, HELD_OUT_TAG))

    def measure_before(self, test) -> None:
        cfg = self.cfg
        self.kinds = {t.id: t.kind for t in test}
        self.say(f"before: {len(test)} held-out {cfg.task} tasks, greedy, on the base model")
        clock = time.perf_counter()
        before = report.score(self.base, self.held_out("base", test))
        before.seconds = self.seconds["before"] = round(time.perf_counter() - clock, 2)
        self.say(f"   {before.successes}/{before.n} succeeded")
        settings = msgspec.to_builtins(cfg)
        self.summary = report.DemoSummary(model=cfg.model, task=cfg.task, specialist=cfg.name, project=self.project,
                                          runtime_url=self.url, before=before, settings=settings, seconds=self.seconds,
                                          daemon={"project_file": str(self.project_file) if cfg.url is None else "",
                                                  "log": str(self.work / "up.log") if self.up else "",
                                                  "registry": str(registry_dir())})

    def rounds(self, train) -> None:
        from tinygpt.runtime.environments import runner

        from . import daemon

        cfg = self.cfg
        serving = daemon.served_version(self.url, cfg.name, cfg.api_key)
        tools = runner.tool_names(self.env)
        for r in range(1, cfg.rounds + 1):
            model = cfg.name if serving else "base"
            shown = f"{cfg.name}@{serving}" if serving else self.base
            plan = runner.exploration_plan(train, tools, cfg.attempts, cfg.explore, self.env, cfg.task)
            self.say(f"round {r}: collect {len(train)} tasks x {cfg.attempts} attempts at T={cfg.temperature} with {shown}"
                     + (f" ({sum(a.force is not None for a in plan)} exploring, {sum(bool(a.plan) for a in plan)} "
                        "along the environment's plan)" if cfg.explore else ""))
            clock, started = time.perf_counter(), time.time()
            got = self.episodes(plan, self.sampling(model, cfg.temperature, cfg.seed + 100 * r, COLLECT_TAG))
            c = report.collection(len(train), cfg.attempts, cfg.temperature, shown, got, round(time.perf_counter() - clock, 2))
            rnd = report.Round(round=r, collection=c)
            self.summary.rounds.append(rnd)
            self._add("collect", c.seconds)
            self.say(f"   {c.successes}/{c.episodes} runs succeeded ({c.tasks_solved} of {c.tasks} tasks solved)"
                     + (f"; {c.relabeled} failed runs relabeled with the task they achieved" if cfg.hindsight else ""))
            write_summary(self.work, self.summary)
            version = self.wait_for_build(rnd, serving, started)
            if not version:
                break
            serving = version

    def _add(self, key: str, value: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + value, 2)

    def wait_for_build(self, rnd: report.Round, serving: str, since: float) -> str:
        """Wait while the daemon labels the round, builds, gates, publishes and swaps; the new
        version ("" when the gate refused it after an earlier promotion). A daemon at --url
        follows its own trigger, which may fire while the round still collects (`since`)."""
        from . import daemon

        cfg = self.cfg
        after_line = len(self.up.lines) if self.up else 0
        if self.up is not None:
            self.say("   waiting for the daemon to seal, ingest, dedupe and label the sessions")
            clock = time.perf_counter()
            conn = daemon.redis_connection()
            try:
                rnd.rows = daemon.settle(conn, self.project, cfg.name, cfg.session_idle)
            finally:
                conn.close()
            self._add("settle", time.perf_counter() - clock)
            if not rnd.rows:
                raise DemoError("the daemon kept no training rows from this round: more --tasks, --attempts or --explore "
                                "give the sampler more chances")
            self.say(f"   {rnd.rows} new kept rows; the build policy may start a build now")
            since = time.time()
            self.write(release_rows=rnd.rows)
            self.builds += 1
        self.say("   waiting for the daemon: dataset ▶ finetune ▶ eval gate ▶ publish ▶ hot swap")
        try:
            version, served_at = daemon.wait_for_version(self.url, cfg.name, serving, key=cfg.api_key, project=self.build_project,
                                                         since=since, up=self.up, after_line=after_line)
        except DemoError:
            rnd.build = daemon.read_build(cfg.name, self.build_project, since, registry_dir(), "", None)
            if self.up is not None:
                self.write(release_rows=0)  # hold builds again: the demo is done collecting
            if rnd.build is not None:
                self._build_seconds(rnd.build)
            if not serving:
                raise
            self.say(f"   the gate refused the new candidate; {cfg.name}@{serving} keeps serving")
            return ""
        if self.up is not None:
            self.write(release_rows=0)
        rnd.promoted = f"{cfg.name}@{version}"
        rnd.build = daemon.read_build(cfg.name, self.build_project, since, registry_dir(), version, served_at)
        if rnd.build is not None:
            self._build_seconds(rnd.build)
            self.say(f"   {rnd.build.verdict}: {'; '.join(rnd.build.numbers)}")
        self.say(f"   the runtime serves {rnd.promoted} (hot-swapped by the daemon)")
        write_summary(self.work, self.summary)
        return version

    @property
    def build_project(self) -> str | None:
        """Whose builds to read: ours, or any project's (a daemon at --url records under its own)."""
        return self.project if self.cfg.url is None else None

    def _build_seconds(self, build: report.Build) -> None:
        for stage, value in build.seconds.items():
            self._add(stage if stage == "swap" else f"build_{stage}", value)

    def measure_after(self, test) -> None:
        from . import daemon

        cfg, summary = self.cfg, self.summary
        version = daemon.served_version(self.url, cfg.name, cfg.api_key)
        if not version:
            raise DemoError(f"no version of {cfg.name} was promoted; the base model keeps serving")
        self.say(f"after: the same {len(test)} held-out tasks on {cfg.name}@{version}")
        clock = time.perf_counter()
        after = report.score(cfg.name, self.held_out(cfg.name, test))
        after.seconds = self.seconds["after"] = round(time.perf_counter() - clock, 2)
        summary.after = after
        summary.improved = after.success_rate > summary.before.success_rate
        summary.paired = report.paired(summary.before, after, self.kinds)


def write_summary(work: Path, summary: report.DemoSummary) -> Path:
    from tinygpt.runtime.contracts.io import write_json

    summary.seconds["total"] = round(sum(v for k, v in summary.seconds.items() if k != "total"), 2)
    path = work / SUMMARY_FILE
    write_json(path, summary)
    return path
