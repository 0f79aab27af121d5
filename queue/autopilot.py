"""The autopilot: build policies turn recorded traffic into gated specialists, by themselves.

`tinygpt up` runs an `Autopilot` thread. Every few seconds, for each specialist whose
entry in `tinygpt.project.json` carries a build policy, it

1. reads what the label stage logged since last time (`keys.label_log`, a stream written
   in the same transaction as each label) and counts the kept training rows the policy's
   selection takes and its last build did not train on (`keys.autopilot_pending`);
2. when the trigger fires (enough new rows, the minimum interval passed, the daily cap
   not reached) enqueues the policy's dataset (its selection only), then, once that is
   built, finetune ▶ eval gate ▶ publish for exactly that dataset (queue/builds.py);
3. follows the build: a pass is published, and the runtime's pin watcher hot-swaps it in
   where a pin accepts it; a regression is kept in `<home>/builds/<name>/<id>/` with its
   gate report and never served. Either way the verdict and its numbers are recorded.

State lives in Redis under one key helper per kind (keys.autopilot*), so restarts lose
nothing and two daemons on one Redis never build twice (a lock per tick). The files are
the truth: each build leaves `autopilot.json` (what it trained on) in its folder, and a
policy whose Redis state is gone (a wipe, a new Redis) rebuilds it from those and the
label log, which the pipeline refills as it relabels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis
from rq.job import JobStatus

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.base import ContractError
from tinygpt.runtime.contracts.dataset import DatasetManifest
from tinygpt.runtime.contracts.evals import GateResult
from tinygpt.runtime.contracts.io import read_json, write_json
from tinygpt.runtime.contracts.pipeline import DedupeRecord, LabelRecord
from tinygpt.runtime.contracts.autopilot import AutopilotBuild, PolicyStatus
from tinygpt.runtime.contracts.policy import BuildPolicy
from tinygpt.runtime.contracts.project import ProjectPins

from . import builds, keys, pipeline, progress, stages
from .failed import _traceback, reason_of

log = logging.getLogger("tinygpt.autopilot")

RECORD = "autopilot.json"
DAY_S = 24 * 3600
# Label log entries read per round trip.
BATCH = 500
LOCK_S = 60


def dataset_name(specialist: str) -> str:
    """The dataset a policy builds (its own, next to any made by hand)."""
    return f"{specialist}.policy"


def _selection_digest(policy: BuildPolicy) -> str:
    return hashlib.sha256(msgspec.json.encode(policy.select)).hexdigest()[:16]


def _s(raw: bytes | None) -> str:
    return raw.decode() if raw else ""


# ---------------------------------------------------------------- counting rows


def counts(policy: BuildPolicy, label: LabelRecord, project: str) -> bool:
    """Whether a labelled trajectory gives the policy training rows."""
    usable = label.keep or (policy.select.keep_unlabelled and label.no_signal)
    return usable and label.rows > 0 and policy.select.matches(
        project=project, served_by=label.served_by, tools=label.tools, tags=label.tags
    )


def _consume(conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str]) -> None:
    """Read the label log past the policy's cursor into its pending rows (idempotent)."""
    project = policy.select.project
    cursor = state.get("cursor") or "0-0"
    trained_key, pending_key = keys.autopilot_trained(project, name), keys.autopilot_pending(project, name)
    while True:
        entries = conn.xrange(keys.label_log(project), min=f"({cursor}", count=BATCH)
        if not entries:
            break
        shas = [fields[b"sha"].decode() for _, fields in entries]
        with conn.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.labels(project), shas)
            pipe.hmget(keys.dedupe(project), shas)
            pipe.smismember(trained_key, shas)
            labels, dedupes, trained = pipe.execute()
        with conn.pipeline(transaction=True) as pipe:
            for sha, raw, dd, done in zip(shas, labels, dedupes, trained):
                if raw is None or done:
                    continue
                label = msgspec.msgpack.decode(raw, type=LabelRecord)
                verdict = msgspec.msgpack.decode(dd, type=DedupeRecord).verdict if dd else "kept"
                # Keyed by trajectory: a newer version (more feedback) replaces the older.
                if verdict == "kept" and counts(policy, label, project):
                    pipe.hset(pending_key, label.trajectory_id, f"{sha} {label.rows}")
                else:
                    pipe.hdel(pending_key, label.trajectory_id)
            cursor = entries[-1][0].decode()
            pipe.hset(keys.autopilot(project, name), "cursor", cursor)
            pipe.execute()
    state["cursor"] = cursor


def pending_rows(conn: redis.Redis, project: str, name: str) -> int:
    return sum(int(v.split()[1]) for v in (x.decode() for x in conn.hvals(keys.autopilot_pending(project, name))))


# ---------------------------------------------------------------- state from files


def build_records(specialist: str) -> list[AutopilotBuild]:
    """Every build a policy started for `specialist`, oldest first (unreadable ones skipped)."""
    out = []
    for path in (paths.subdir("builds") / specialist).glob(f"*/{RECORD}"):
        try:
            out.append(read_json(path, AutopilotBuild))
        except ContractError as e:
            log.warning("ignoring %s: %s", path, e)
    return sorted(out, key=lambda r: r.started_at)


def _rebuild(conn: redis.Redis, name: str, policy: BuildPolicy, digest: str) -> dict[str, str]:
    """A policy's Redis state from its build records on disk (first start, or after a wipe)."""
    project = policy.select.project
    records = [r for r in build_records(name) if r.project == project]
    state = {"sel": digest, "cursor": "0-0", "phase": ""}
    with conn.pipeline(transaction=True) as pipe:
        pipe.delete(keys.autopilot(project, name), keys.autopilot_pending(project, name),
                    keys.autopilot_trained(project, name), keys.autopilot_builds(project, name))
        if records:
            last = records[-1]
            state |= {"started_at": str(last.started_at), "build_id": last.build_id, "phase": "build",
                      "build_root": str(paths.subdir("builds") / name / last.build_id),
                      "jobs": json.dumps(builds.job_ids(name, last.build_id))}
            if last.sources:
                pipe.sadd(keys.autopilot_trained(project, name), *last.sources)
            pipe.zadd(keys.autopilot_builds(project, name), {r.build_id: r.started_at for r in records})
            # The last build's outcome, from its folder, so the screen shows it at once.
            state |= _outcome_from_files(Path(state["build_root"]))
        # With a last build on record, follow it: its jobs may still be queued or running.
        pipe.hset(keys.autopilot(project, name), mapping=state)
        pipe.execute()
    return state


def _outcome_from_files(root: Path) -> dict[str, str]:
    gate = root / "eval" / "gate-result.json"
    if not gate.is_file():
        return {}
    try:
        result = read_json(gate, GateResult)
    except ContractError:
        return {}
    return {"last_verdict": result.verdict, "last_message": result.message, "last_numbers": json.dumps(numbers(result)),
            "last_root": str(root), "last_at": str(gate.stat().st_mtime)}


def numbers(result: GateResult) -> list[str]:
    """One line per suite: candidate vs baseline, the difference and its p-value."""
    out = []
    for v in result.suites:
        text = f"{v.suite} {v.metric} {v.candidate:.3g}"
        if v.baseline is not None:
            text += f" vs {v.baseline:.3g} ({v.delta:+.3g}" + (f", p={v.p_value:.2g}" if v.p_value is not None else "") + ")"
        out.append(text + ("" if v.passed else " FAIL"))
    return out


def waiting(conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str]) -> tuple[int, str]:
    """(new rows, why no build starts now — "" when one may)."""
    project, trig = policy.select.project, policy.trigger
    rows = pending_rows(conn, project, name)
    if rows < trig.min_new_rows:
        return rows, f"{rows}/{trig.min_new_rows} new rows"
    now = time.time()
    since = now - float(state.get("started_at") or 0)
    if since < trig.min_interval_s:
        return rows, f"{rows}/{trig.min_new_rows} new rows; next build in {trig.min_interval_s - since:.0f}s (min_interval_s)"
    recent = conn.zcount(keys.autopilot_builds(project, name), now - DAY_S, "+inf")
    if recent >= trig.max_per_day:
        return rows, f"{rows}/{trig.min_new_rows} new rows; daily cap reached ({recent}/{trig.max_per_day} in 24 h)"
    return rows, ""


# ---------------------------------------------------------------- the scheduler


class Autopilot:
    """Runs every build policy of one pin file against one Redis; `tick()` does one round."""

    def __init__(self, project_file: Path, redis_url: str, *, say: Callable[[str], None] | None = None,
                 interval: float = 2.0):
        self.project_file = Path(project_file).resolve()
        self.redis_url = redis_url
        self.interval = interval
        self._say = say or log.info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: redis.Redis | None = None
        self._token = f"{time.time()}-{id(self)}"
        # The last pins that parsed (a broken pin file leaves the policies as they were).
        self.pins: ProjectPins | None = None

    # -- lifecycle

    def start(self) -> Autopilot:
        self._thread = threading.Thread(target=self._run, name="tinygpt-autopilot", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except redis.RedisError as e:
                # Redis away (restarting, wiped): try again next round, the state is in files too.
                log.warning("autopilot: Redis unavailable (%s); retrying", e)
                self._conn = None
            except Exception:  # a bug in one round must not end the loop or the daemon
                log.exception("autopilot round failed")
            self._stop.wait(self.interval)

    def connection(self) -> redis.Redis:
        if self._conn is None:
            self._conn = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=30)
        return self._conn

    def policies(self) -> dict[str, BuildPolicy]:
        from tinygpt.runtime.project import load_project

        try:
            self.pins = load_project(self.project_file)
        except ContractError as e:
            if self.pins is None:
                log.warning("autopilot: %s", e)
        return self.pins.policies() if self.pins else {}

    # -- one round

    def tick(self) -> None:
        conn = self.connection()
        for name, policy in self.policies().items():
            lock = keys.autopilot_lock(policy.select.project, name)
            if not conn.set(lock, self._token, nx=True, ex=LOCK_S):
                continue  # another daemon is on it this round
            try:
                self._tick_policy(conn, name, policy)
            finally:
                if conn.get(lock) == self._token.encode():
                    conn.delete(lock)

    def _tick_policy(self, conn: redis.Redis, name: str, policy: BuildPolicy) -> None:
        project = policy.select.project
        digest = _selection_digest(policy)
        state = {k.decode(): v.decode() for k, v in conn.hgetall(keys.autopilot(project, name)).items()}
        if state.get("sel") != digest:
            if state:
                self._say(f"Autopilot: {name}: the selection changed; counting its rows again")
            state = _rebuild(conn, name, policy, digest)
        _consume(conn, name, policy, state)
        if state.get("phase") == "dataset":
            self._follow_dataset(conn, name, policy, state)
        elif state.get("phase") == "build":
            self._follow_build(conn, name, policy, state)
        if not state.get("phase"):
            self._maybe_start(conn, name, policy, state)

    def _save(self, conn: redis.Redis, project: str, name: str, **fields: str) -> None:
        conn.hset(keys.autopilot(project, name), mapping=fields)

    def _maybe_start(self, conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str]) -> None:
        rows, why = waiting(conn, name, policy, state)
        if why:
            return
        from tinygpt.runtime.project import recorded_base_name

        pins, project = self.pins, policy.select.project
        # Trajectories name the base as the runtime does; the fine-tune loads it as pinned.
        base = recorded_base_name(pins.base_model, self.project_file)
        job = pipeline.enqueue_dataset(dataset_name(name), base, conn, project=project, settings=pins.pipeline,
                                       select=policy.select)
        now = str(time.time())
        with conn.pipeline(transaction=True) as pipe:
            pipe.hset(keys.autopilot(project, name), mapping={"phase": "dataset", "dataset_job": job.id, "started_at": now})
            pipe.zadd(keys.autopilot_builds(project, name), {job.id: float(now)})
            pipe.execute()
        state |= {"phase": "dataset", "dataset_job": job.id, "started_at": now}
        self._say(f"Autopilot: {name}: {rows} new rows (≥ {policy.trigger.min_new_rows}): building "
                  f"dataset ▶ {policy.method} ▶ eval gate ▶ publish")

    def _finish(self, conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str], **outcome: str) -> None:
        fields = {"phase": "", "last_at": str(time.time()), "last_version": "", "last_numbers": "[]", **outcome}
        self._save(conn, policy.select.project, name, **fields)
        state.update(fields)

    def _follow_dataset(self, conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str]) -> None:
        status, job = _status(conn, state.get("dataset_job", ""))
        if status is None:
            self._finish(conn, name, policy, state, last_verdict="failed", last_message="the dataset job was lost (Redis wiped?)")
            return
        if status == JobStatus.FAILED:
            why = reason_of(_traceback(job))
            self._finish(conn, name, policy, state, last_verdict="failed", last_message=f"dataset: {why}")
            self._say(f"Autopilot: {name}: the dataset build failed: {why}")
            return
        if status != JobStatus.FINISHED:
            return
        result = job.return_value()
        try:
            manifest = read_json(Path(result.path) / "manifest.json", DatasetManifest)
        except (AttributeError, ContractError) as e:  # its result expired, or the files are gone
            self._finish(conn, name, policy, state, last_verdict="failed", last_message=f"dataset: unreadable result ({e})")
            return
        project, pins = policy.select.project, self.pins
        build = builds.enqueue_build(
            conn, specialist=name, base_model=pins.base_model, dataset_dir=result.path, project_file=self.project_file,
            registry=builds.project_registry(pins.registries, self.project_file), method=policy.method,
            hyperparameters=policy.hyperparameters(), seed=policy.seed, teacher_model=policy.teacher,
            gate={"suites": policy.gate.suites, "threshold": policy.gate.threshold,
                  "require_significance": policy.gate.require_significance},
        )
        record = AutopilotBuild(specialist=name, project=project, build_id=build.build_id, dataset_dir=result.path,
                                dataset_digest=manifest.digest, sources=manifest.sources, rows=manifest.rows,
                                started_at=float(state.get("started_at") or time.time()))
        build.root.mkdir(parents=True, exist_ok=True)
        write_json(build.root / RECORD, record)
        with conn.pipeline(transaction=True) as pipe:
            # What this dataset holds no longer counts toward the next build.
            trained = keys.autopilot_trained(project, name)
            pipe.delete(trained)
            if manifest.sources:
                pipe.sadd(trained, *manifest.sources)
            pipe.hset(keys.autopilot(project, name), mapping={"phase": "build", "build_id": build.build_id,
                      "build_root": str(build.root), "jobs": json.dumps(build.jobs)})
            pipe.execute()
        sources = set(manifest.sources)
        stale = [tid for tid, v in conn.hgetall(keys.autopilot_pending(project, name)).items() if v.decode().split()[0] in sources]
        if stale:
            conn.hdel(keys.autopilot_pending(project, name), *stale)
        state |= {"phase": "build", "build_id": build.build_id, "build_root": str(build.root), "jobs": json.dumps(build.jobs)}
        self._say(f"Autopilot: {name}: dataset {manifest.digest[:12]} ({manifest.rows} rows); build {build.build_id} enqueued")

    def _follow_build(self, conn: redis.Redis, name: str, policy: BuildPolicy, state: dict[str, str]) -> None:
        jobs = json.loads(state.get("jobs") or "{}")
        root = Path(state.get("build_root", ""))
        found = {stage: _status(conn, jid) for stage, jid in jobs.items()}
        if not jobs or any(s is None for s, _ in found.values()):
            # Its jobs are gone (a Redis wipe, or expired): the files say how it ended.
            outcome = _outcome_from_files(root) or {"last_verdict": "failed", "last_message": "its jobs were lost"}
            self._finish(conn, name, policy, state, **outcome)
            return
        failed = [stage for stage, (s, _) in found.items() if s == JobStatus.FAILED]
        if failed:
            outcome = _outcome_from_files(root)
            stage = failed[0]
            if outcome.get("last_verdict") == "regression":
                outcome["last_message"] = f"not published, kept in {root}: {outcome['last_message']}"
            else:
                outcome = {"last_verdict": "failed", "last_root": str(root),
                           "last_message": f"{stage}: {reason_of(_traceback(found[stage][1]))}"}
            self._finish(conn, name, policy, state, **outcome)
            self._say(f"Autopilot: {name}: build {state.get('build_id')} {outcome['last_verdict']}: {outcome['last_message']}")
            return
        if all(s == JobStatus.FINISHED for s, _ in found.values()):
            published = found["publish"][1].return_value()
            outcome = _outcome_from_files(root) | {"last_version": getattr(published, "version", "")}
            self._finish(conn, name, policy, state, **outcome)
            shown = "; ".join(json.loads(outcome.get("last_numbers") or "[]"))
            self._say(f"Autopilot: {name}: the gate passed; published {name}@{outcome['last_version']}" + (f" ({shown})" if shown else ""))

    # -- what the screen shows

    def status(self, serving: dict[str, str] | None = None) -> list[PolicyStatus]:
        """Every policy's status now (reads only)."""
        return overview(self.connection(), self.pins or _load(self.project_file), serving)


def _load(project_file: Path) -> ProjectPins | None:
    from tinygpt.runtime.project import load_project

    try:
        return load_project(project_file)
    except ContractError:
        return None


def _status(conn: redis.Redis, job_id: str):
    """(RQ status or None when the job is gone, the job)."""
    if not job_id:
        return None, None
    try:
        job = stages.fetch_job(conn, job_id)
    except Exception:  # NoSuchJobError, or a payload this version cannot read
        return None, None
    return job.get_status(refresh=False), job


def overview(conn: redis.Redis, pins: ProjectPins | None, serving: dict[str, str] | None = None) -> list[PolicyStatus]:
    """What each build policy of `pins` is doing: rows toward the next build, the build in
    progress, the last verdict with its numbers, the version served (when `serving` says)."""
    if pins is None:
        return []
    out = []
    for name, policy in pins.policies().items():
        project = policy.select.project
        state = {k.decode(): v.decode() for k, v in conn.hgetall(keys.autopilot(project, name)).items()}
        rows, why = waiting(conn, name, policy, state)
        row = PolicyStatus(
            specialist=name, project=project, rows=rows, needed=policy.trigger.min_new_rows, waiting=why,
            last_verdict=state.get("last_verdict", ""), last_message=state.get("last_message", ""),
            last_numbers=json.loads(state.get("last_numbers") or "[]"), last_version=state.get("last_version", ""),
            last_root=state.get("last_root", ""), last_at=float(state.get("last_at") or 0),
            serving=(serving or {}).get(name, ""),
        )
        if state.get("phase") == "dataset":
            row.building, row.stage, row.jobs = state.get("dataset_job", ""), "dataset", {"dataset": state.get("dataset_job", "")}
        elif state.get("phase") == "build":
            row.jobs = json.loads(state.get("jobs") or "{}")
            row.building = state.get("build_id", "")
            row.stage = next((stage for stage, jid in row.jobs.items() if _status(conn, jid)[0] != JobStatus.FINISHED), "publish")
        if row.building:
            row.waiting = ""
            row.progress = progress.read(conn, [row.jobs.get(row.stage, "")]).get(row.jobs.get(row.stage, ""))
        out.append(row)
    return out


def status_of_project(project_file: Path | None = None) -> list:
    """`tinygpt status`: the nearest project's policies, with what its pins last resolved to
    as the version served; [] without a project, policies or a running Redis."""
    from tinygpt.runtime.project import find_project
    from tinygpt.runtime.registry.state import project_state

    from .overview import find_redis

    project_file = project_file or find_project()
    pins = _load(project_file) if project_file else None
    if pins is None or not pins.policies():
        return []
    _, conn, _ = find_redis()
    if conn is None:
        return []
    try:
        state = project_state(project_file)
        serving = {s.name: s.current.version for s in state.specialists if s.current}
        return overview(conn, pins, serving)
    except redis.RedisError:
        return []
    finally:
        conn.close()
