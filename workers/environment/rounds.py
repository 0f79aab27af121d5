"""Rounds of expert iteration on an environment: collect ▶ pipeline ▶ train ▶ gate ▶ promote.

`run_environment(project_file, settings, work)` is the one function `tinygpt env run`,
the queue's `environment` job and a build policy call. It starts a runtime in this
process (the project's base model, recording into `work/trajectories`) and then:

0. measures the held-out split greedily on the base model (what serves now);
1. per round, works every training task `attempts` times at a temperature with the
   model that serves now (the base, then the last promoted specialist), part of the
   attempts exploring under a constrained `tool_choice`; each reward goes back as feedback;
2. puts those recordings through the real queue (ingest ▶ dedupe ▶ label ▶ dataset, a
   burst worker): only episodes at `success_reward` are kept;
3. fits a LoRA from the base on the dataset in a spawned `tinygpt train` (MLX stays out of
   this process's other threads); the dataset holds every episode kept so far for this
   environment's project, so round 2 trains on round 1's successes and its own;
4. gates the candidate on the held-out split against what serves now — the same tasks,
   greedy, paired, an exact sign test on the tasks that flipped, results per task kind —
   and writes a `GateResult` the publish stage checks;
5. on a pass, publishes it into the project's registry (a "published" notice on Redis, so a
   `tinygpt up` whose pins accept the version swaps it in) and serves it here for the
   next round's collection.

Held-out episodes are recorded like any session but never enqueued, so the gate's tasks
cannot leak into training. `env-run.json` in `work` is rewritten after every step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.environments import (
    EnvGate, EnvRunRecord, EnvRunSettings, EpisodeResult, HeldOut, RoundRecord,
)
from tinygpt.runtime.contracts.pipeline import DatasetSettings, DedupeSettings, LabelRule, PipelineSettings

from tinygpt.runtime.environments import runner
from tinygpt.runtime.environments.interface import Environment
from tinygpt.runtime.environments.loader import EnvironmentBroken, load

log = logging.getLogger("tinygpt.environments")

RECORD_FILE = "env-run.json"
# A candidate is served under its own name while the gate measures it, never as the
# specialist: what serves keeps serving until the gate says otherwise.
CANDIDATE_SUFFIX = "-candidate"


class EnvRunError(RuntimeError):
    """The run cannot go on (nothing to train on, a stage failed); the record says how far it got."""


def _no_progress(total: int) -> Callable[[], None]:
    return lambda: None


@dataclass
class _Runtime:
    url: str
    base_name: str
    base_digest: str
    trajectories: Path
    rt: object

    def seal(self) -> None:
        self.rt.recorder.seal_all().result()

    def load(self, name: str, path: Path, version: str) -> None:
        self.rt.load_adapter(name, str(path), version)

    def unload(self, name: str) -> None:
        self.rt.unload_adapter(name)


@contextlib.contextmanager
def local_runtime(model: str, work: Path, project: str, concurrency: int) -> Iterator[_Runtime]:
    """A runtime in this process on 127.0.0.1 and a free port, recording into `work`."""
    from tinygpt.runtime.serving.config import ServerConfig
    from tinygpt.runtime.stack import start_runtime

    traj = work / "trajectories"
    # Sessions are sealed explicitly once collected, never by the idle timer mid-round; no
    # queue hook: only collection sessions go to the pipeline, never held-out ones.
    config = ServerConfig(model=model, port=0, trajectories_dir=str(traj), project=project,
                          session_idle_s=24 * 3600.0, max_batch=max(16, concurrency))
    rt = start_runtime(config)
    try:
        yield _Runtime(url=rt.url, base_name=rt.registry.base_name, base_digest=rt.registry.base_digest, trajectories=traj, rt=rt)
    finally:
        rt.stop()


def pipeline_settings(s: EnvRunSettings) -> PipelineSettings:
    """Keep an episode only when its reward reached `success_reward` and every call validated."""
    from tinygpt.runtime.environments.pipeline import NEAR_THRESHOLD

    return PipelineSettings(
        dedupe=DedupeSettings(near_threshold=NEAR_THRESHOLD),
        label=LabelRule(min_reward=s.success_reward, require={"feedback": s.success_reward, "tool_validity": 1.0},
                        keep_unlabelled=False),
        dataset=DatasetSettings(valid_fraction=0.05, test_fraction=0.0, seed=s.seed),
    )


def gate_verdict(s: EnvRunSettings, baseline: HeldOut, candidate: HeldOut) -> EnvGate:
    """Paired on the same held-out tasks: which flipped, the exact sign test, the rule."""
    from tinygpt.workers.evalgate.stats import sign_test

    before, after = set(baseline.solved), set(candidate.solved)
    gained, lost = len(after - before), len(before - after)
    p = sign_test(gained, lost)
    if s.gate == "better" and gained <= lost:
        verdict, reason = "regression", f"not better: +{gained} / -{lost} held-out tasks"
    elif s.gate == "no-worse" and lost > gained:
        verdict, reason = "regression", f"worse: +{gained} / -{lost} held-out tasks"
    elif s.alpha < 1.0 and (gained <= lost or p >= s.alpha):
        verdict, reason = "regression", f"+{gained} / -{lost} is not a significant gain (p={p:.3g} >= alpha {s.alpha})"
    else:
        verdict, reason = "pass", f"+{gained} / -{lost} held-out tasks (sign test p={p:.3g})"
    return EnvGate(verdict=verdict, baseline=baseline, candidate=candidate, gained=gained, lost=lost, p_value=p, reason=reason)


def _suite_report(suite: str, results: list[EpisodeResult]):
    from tinygpt.runtime.contracts.evals import ItemResult, SuiteReport
    from tinygpt.workers.evalgate.stats import summarize

    scores = [1.0 if r.success else 0.0 for r in results]
    s = summarize(scores)
    items = [ItemResult(id=r.task_id, score=x, detail=f"{r.kind}: {r.reason}"[:300]) for r, x in zip(results, scores)]
    return SuiteReport(suite=suite, metric="success", direction="higher", n=len(scores), passes=1, mean=s.mean, std=s.std,
                       stderr=s.stderr, ci95=s.ci95, items=items)


def write_gate_result(path: Path, srv: _Runtime, env_name: str, specialist: str, adapter: Path, gate: EnvGate,
                      base: list[EpisodeResult], cand: list[EpisodeResult]) -> None:
    """The gate's verdict as a `GateResult` for exactly these weights (what publish checks)."""
    from tinygpt.runtime.contracts.evals import EvalReport, GateResult, SuiteVerdict
    from tinygpt.runtime.contracts.io import write_json
    from tinygpt.runtime.serving.adapters import read_adapter

    suite = f"env:{env_name}"
    digest = read_adapter(adapter, specialist, None, "").digest
    now = time.time()
    cand_report = EvalReport(model=srv.base_name, model_digest=srv.base_digest, adapter=str(adapter), adapter_digest=digest,
                             suites=[_suite_report(suite, cand)], created_at=now)
    base_report = EvalReport(model=gate.baseline.model, model_digest=srv.base_digest, suites=[_suite_report(suite, base)], created_at=now)
    verdict = SuiteVerdict(suite=suite, candidate=gate.candidate.success_rate, baseline=gate.baseline.success_rate,
                           delta=gate.candidate.success_rate - gate.baseline.success_rate, threshold=0.0,
                           passed=gate.verdict == "pass", significant=gate.p_value < 0.05, reason=gate.reason,
                           metric="success", p_value=gate.p_value)
    result = GateResult(verdict=gate.verdict, candidate=cand_report, baseline=base_report, suites=[verdict], message=gate.reason,
                        baseline_source=gate.baseline.model,
                        extra={"subject": specialist, "environment": env_name, "gained": gate.gained, "lost": gate.lost,
                               "per_kind": {"baseline": msgspec.to_builtins(gate.baseline.per_kind),
                                            "candidate": msgspec.to_builtins(gate.candidate.per_kind)}})
    write_json(path, result)


def registry_for(project_file: Path, registries: list[str]) -> Path:
    """The project's first registry as a local directory (publishing needs one)."""
    registry = registries[0] if registries else "specialists"
    if "://" in registry and not registry.startswith("file://"):
        raise EnvRunError(f"the project's first registry {registry!r} is remote: publishing needs a local directory")
    path = Path(registry.removeprefix("file://"))
    return path if path.is_absolute() else project_file.parent / path


def run_environment(
    project_file: Path,
    settings: EnvRunSettings,
    work: Path,
    *,
    model: str | None = None,
    redis_url: str | None = None,
    say: Callable[[str], None] = log.info,
    progress: Callable[[int], Callable[[], None]] = _no_progress,
) -> EnvRunRecord:
    """Run `settings.rounds` rounds on the environment the project names; see the module doc.

    Raises EnvironmentBroken (the environment's fault: import, tasks, step, score) or
    EnvRunError (the run's: nothing to train on, a stage failed). `env-run.json` holds
    whatever was measured either way.
    """
    from tinygpt.runtime.project import load_project

    project_file = Path(project_file).resolve()
    pins = load_project(project_file)
    env = load(project_file, settings.environment, pins)
    train_set, test_set = runner.split_tasks(env, settings.environment, settings.train_tasks, settings.test_tasks, settings.seed)
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = f"{pins.name}-env-{settings.environment}"[:64]
    record = EnvRunRecord(environment=settings.environment, specialist=settings.specialist, model=model or pins.base_model,
                          project=project, settings=settings)
    if redis_url is None:
        from tinygpt.queue.connection import redis_url as default_url

        redis_url = default_url()
    with local_runtime(record.model, work, project, settings.concurrency) as srv:
        run = _Run(env, settings, srv, work, project_file, pins, record, redis_url, say, progress)
        try:
            run.rounds(train_set, test_set)
        except (EnvironmentBroken, EnvRunError) as e:
            record.note = str(e)
            raise
        finally:
            run.save()
    return record


class _Run:
    def __init__(self, env: Environment, s: EnvRunSettings, srv: _Runtime, work: Path, project_file: Path, pins, record: EnvRunRecord,
                 redis_url: str, say, progress):
        self.env, self.s, self.srv, self.work, self.project_file, self.pins = env, s, srv, work, project_file, pins
        self.record, self.redis_url, self.say, self.progress = record, redis_url, say, progress
        self.client = _client(srv.url)
        self.tools = runner.tool_names(env)

    def save(self) -> None:
        from tinygpt.runtime.contracts.io import write_json

        write_json(self.work / RECORD_FILE, self.record)

    def sampling(self, model: str, temperature: float, seed: int | None, hindsight: bool = False) -> runner.Sampling:
        s, env = self.s, self.env
        return runner.Sampling(model=model, temperature=temperature, max_turns=s.max_turns or env.max_turns,
                               max_tokens=s.max_tokens or env.max_tokens, seed=seed, success_reward=s.success_reward,
                               source=f"env:{s.environment}", hindsight=hindsight)

    def episodes(self, jobs: list[runner.Attempt], cfg: runner.Sampling) -> list[EpisodeResult]:
        advance = self.progress(len(jobs))
        return runner.run_many(self.client, self.env, self.s.environment, jobs, cfg, concurrency=self.s.concurrency,
                               on_done=lambda r: advance())

    def held_out(self, model: str, test_set) -> list[EpisodeResult]:
        return self.episodes([runner.Attempt(t) for t in test_set], self.sampling(model, 0.0, None))

    def rounds(self, train_set, test_set) -> None:
        s, srv = self.s, self.srv
        serving = srv.base_name
        self.say(f"held-out: {len(test_set)} tasks of {s.environment!r}, greedy, on {serving}")
        incumbent = self.held_out(serving, test_set)
        self.record.baseline = self.record.final = runner.held_out(serving, incumbent)
        self.say(f"   {self.record.baseline.successes}/{self.record.baseline.n} solved")
        self.save()
        for r in range(1, s.rounds + 1):
            promoted, incumbent = self.one_round(r, serving, train_set, test_set, incumbent)
            if promoted:
                serving = s.specialist

    def one_round(self, r: int, serving: str, train_set, test_set, incumbent: list[EpisodeResult]):
        from tinygpt.runtime.environments.pipeline import PipelineError, run_pipeline, trajectory_file

        s, srv = self.s, self.srv
        rec = RoundRecord(round=r, collected_with=serving, attempts=0, successes=0, method=s.train.method)
        self.record.rounds.append(rec)
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            rec.seconds[phase] = round(now - clock, 2)
            clock = now

        plan = runner.exploration_plan(train_set, self.tools, s.attempts, s.explore, self.env, self.s.environment)
        self.say(f"round {r}: collect {len(train_set)} tasks x {s.attempts} attempts at T={s.temperature} with {serving}"
                 + (f" ({sum(a.force is not None for a in plan)} exploring, {sum(bool(a.plan) for a in plan)} "
                    "along the environment's plan)" if s.explore else ""))
        got = self.episodes(plan, self.sampling(serving, s.temperature, s.seed + 100 * r, hindsight=s.hindsight))
        srv.seal()
        rec.attempts, rec.successes = len(got), sum(e.success for e in got)
        rec.relabeled = sum(e.relabel_id is not None for e in got)
        explored = [e for e in got if e.forced_tool is not None]
        rec.explored, rec.explored_successes = len(explored), sum(e.success for e in explored)
        rec.per_kind = runner.per_kind(got)
        lap("collect")
        self.say(f"   {rec.successes}/{rec.attempts} succeeded ({rec.explored_successes}/{rec.explored} exploring); "
                 + ", ".join(f"{k} {c.successes}/{c.n}" for k, c in rec.per_kind.items()))
        self.save()

        ids = [e.trajectory_id for e in got if e.trajectory_id] + [e.relabel_id for e in got if e.relabel_id]
        files = [trajectory_file(srv.trajectories, tid) for tid in ids]
        if None in files:
            raise EnvRunError(f"recorded sessions are missing from {srv.trajectories}")
        rec.dataset = f"{self.record.project}-r{r}-{int(time.time())}"
        try:
            run = run_pipeline(files, base_model=srv.base_name, project=self.record.project, dataset_name=rec.dataset,
                               redis_url=self.redis_url, seed=s.seed, settings=pipeline_settings(s))
        except PipelineError as e:
            raise EnvRunError(f"round {r}: pipeline: {e}") from None
        rec.rows = run.rows.get("train", 0)
        lap("pipeline")
        if not rec.rows:
            rec.note = "nothing to train on: no episode reached the success reward"
            self.save()
            raise EnvRunError(f"round {r}: {rec.note} (more tasks, attempts or exploration give the sampler more chances)")

        from tinygpt.runtime.environments.training import TrainError, TrainSettings, train

        adapter = self.work / f"round-{r}" / "adapter"
        t = s.train
        self.say(f"   train: {t.method}, {t.steps} steps on {rec.rows} rows")
        try:
            train(self.record.model, Path(run.dataset_dir), adapter, s.specialist,
                  TrainSettings(steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate, num_layers=t.num_layers,
                                lora_rank=t.lora_rank, seed=s.seed + r), method=t.method)
        except TrainError as e:
            raise EnvRunError(f"round {r}: {e}") from None
        lap("train")

        candidate_name = f"{s.specialist}{CANDIDATE_SUFFIX}"
        srv.load(candidate_name, adapter, f"r{r}")
        try:
            cand = self.held_out(candidate_name, test_set)
        finally:
            srv.unload(candidate_name)
        gate = gate_verdict(s, runner.held_out(serving, incumbent), runner.held_out(s.specialist, cand))
        gate_file = self.work / f"round-{r}" / "gate-result.json"
        write_gate_result(gate_file, srv, s.environment, s.specialist, adapter, gate, incumbent, cand)
        gate.result_file = str(gate_file)
        rec.gate = gate
        lap("gate")
        self.say(f"   gate: {gate.verdict}: {gate.baseline.successes}/{gate.baseline.n} -> {gate.candidate.successes}/{gate.candidate.n}; {gate.reason}")
        if gate.verdict != "pass":
            self.save()
            return False, incumbent

        rec.promoted = self.publish(adapter, gate_file)
        self.record.final = gate.candidate
        lap("publish")
        self.say(f"   published and serving {rec.promoted}")
        self.save()
        return True, cand

    def publish(self, adapter: Path, gate_file: Path) -> str:
        from tinygpt.queue.connection import connect
        from tinygpt.runtime.contracts.jobs import PublishJob
        from tinygpt.workers.publish import PublishError
        from tinygpt.workers.publish import run as publish_stage

        s = self.s
        registry = registry_for(self.project_file, self.pins.registries)
        job = PublishJob(specialist=s.specialist, version="", candidate_dir=str(adapter), registry=str(registry), gate_result=str(gate_file))
        conn = connect(self.redis_url)
        try:
            result = publish_stage(job, conn)
        except PublishError as e:
            raise EnvRunError(str(e)) from None
        finally:
            conn.close()
        self.srv.load(s.specialist, Path(result.path), result.version)
        return f"{s.specialist}@{result.version}"


def _client(url: str):
    return runner.make_client(url)
