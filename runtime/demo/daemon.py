"""The daemon the demo drives: a `tinygpt up` it starts (or one already running), watched
from the outside the way an operator watches it — its output, `tinygpt status`'s numbers
(Redis), its build folders under the home, and the models it serves.

Nothing here runs a pipeline stage: ingest, dedupe, label, the build policy's trigger,
dataset, fine-tune, gate, publish and the hot swap all happen inside `up`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tinygpt.runtime.contracts.base import ContractError

from .errors import DemoError
from .report import Build

POLL_S = 0.5
HTTP_TIMEOUT_S = 60
# Polls of a build's outcome that may go unanswered in a row before the demo gives up.
MAX_STALLS = 10


class Up:
    """A `tinygpt up --plain` process: its URL, its output (also in `<work>/up.log`), and the
    peak resident memory of it and every process under it."""

    def __init__(self, work: Path, project_file: Path, *, session_idle: float, say):
        self.say = say
        self.lines: list[str] = []
        self.peak_rss = 0
        self._log = open(work / "up.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "tinygpt.runtime.cli", "up", "--plain", "--port", "0", "--project", str(project_file),
               "--session-idle", str(session_idle)]
        self.proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        threading.Thread(target=self._read, name="demo-up-output", daemon=True).start()
        threading.Thread(target=self._sample, name="demo-up-memory", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak_rss = max(self.peak_rss, total)
            self._stop.wait(POLL_S)

    def wait_line(self, pattern: str, after: int = 0) -> re.Match:
        """The first output line from `after` on matching `pattern`; DemoError if `up` exits first."""
        seen = after
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if m := re.search(pattern, line):
                        return m
                seen = len(self.lines)
                if self.proc.poll() is not None:
                    tail = "".join(self.lines[-15:])
                    raise DemoError(f"`tinygpt up` exited with code {self.proc.returncode}:\n{tail}")
                self._changed.wait(1.0)

    def failure_since(self, name: str, after: int) -> str | None:
        """A build of `name` that failed or was refused, as `up` reported it after line `after`."""
        pattern = re.compile(rf"Autopilot: {re.escape(name)}: (build \S+ (failed|regression): .*|the dataset build failed: .*)")
        with self._changed:
            for line in self.lines[after:]:
                if m := pattern.search(line):
                    return m.group(1).strip()
        if self.proc.poll() is not None:
            return f"`tinygpt up` exited with code {self.proc.returncode}"
        return None

    def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it; waits for its clean exit."""
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.say("`tinygpt up` did not stop within 300 s of SIGTERM; killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def get_json(url: str, key: str | None = None) -> object | None:
    """GET `url` as JSON; None on 404."""
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def served_version(root_url: str, name: str, key: str | None) -> str:
    """The version of `name` the runtime serves now ("" when none)."""
    card = get_json(f"{root_url}/v1/models/{name}", key)
    return (card or {}).get("version") or ""


def base_name(root_url: str, key: str | None) -> str:
    cards = (get_json(f"{root_url}/v1/models", key) or {}).get("data", [])
    base = next((c["id"] for c in cards if "root" not in c), None)
    if base is None:
        raise DemoError(f"{root_url}/v1/models lists no base model")
    return base


# ---------------------------------------------------------------- what `tinygpt status` reads


def redis_connection():
    """The daemon's Redis, found as `tinygpt status` finds it (REDIS_URL or the home's embedded one)."""
    from tinygpt.queue.overview import find_redis

    shown, conn, why = find_redis()
    if conn is None:
        raise DemoError(f"cannot reach the daemon's Redis {shown}: {why}")
    return conn


def _data_queue_busy(conn) -> int:
    from tinygpt.queue import stages

    q = stages.get_queue(conn, "data")
    return (q.count + q.started_job_registry.get_job_count(cleanup=False) + q.deferred_job_registry.get_job_count(cleanup=False)
            + q.scheduled_job_registry.get_job_count(cleanup=False))


def settle(conn, project: str, name: str, session_idle: float) -> int:
    """Wait until the daemon has sealed, ingested, deduped and labelled what was recorded (its
    data queue idle and the policy's count steady); the kept rows counted toward the next build."""
    from tinygpt.queue.autopilot import pending_rows

    # Sessions seal once idle for `session_idle` seconds (the recorder checks every few).
    time.sleep(session_idle + min(session_idle, 5.0) + 1.0)
    steady, last = 0, None
    # The autopilot reads the label log every 2 s: a count unchanged over 5 s with nothing
    # left on the data queue is final.
    while steady < 10:
        rows = pending_rows(conn, project, name)
        busy = _data_queue_busy(conn)
        steady = steady + 1 if busy == 0 and rows == last else 0
        last = rows
        time.sleep(POLL_S)
    return last or 0


# ---------------------------------------------------------------- build records


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.is_file() else None


def latest_build(name: str, project: str | None, since: float):
    """(folder, AutopilotBuild) of the newest build of `name` (for `project`, when given) started after `since`."""
    from tinygpt.queue.autopilot import RECORD, build_records
    from tinygpt.runtime import paths

    found = [r for r in build_records(name) if project in (None, r.project) and r.started_at >= since - 1.0]
    if not found:
        return None, None
    record = found[-1]
    folder = paths.subdir("builds") / name / record.build_id
    return (folder, record) if (folder / RECORD).is_file() else (None, None)


def read_build(name: str, project: str | None, since: float, registry: Path, version: str, served_at: float | None) -> Build | None:
    """What the daemon's build folder says: verdict, numbers, per-kind results, stage times."""
    from tinygpt.queue.autopilot import RECORD, numbers
    from tinygpt.runtime.contracts.evals import GateResult
    from tinygpt.runtime.contracts.io import read_json
    from tinygpt.runtime.contracts.training import TRAINING_RECORD

    folder, record = latest_build(name, project, since)
    if record is None:
        return None
    gate_file = folder / "eval" / "gate-result.json"
    verdict, message, nums, kinds = "running", "", [], {}
    if gate_file.is_file():
        try:
            result = read_json(gate_file, GateResult)
            verdict, message, nums = result.verdict, result.message, numbers(result)
            for role, rep in (("baseline", result.baseline), ("candidate", result.candidate)):
                for suite in rep.suites if rep else []:
                    if suite.per_kind:
                        kinds[role] = {k: {"n": v.n, "success": round(v.mean, 4)} for k, v in suite.per_kind.items()}
        except ContractError as e:
            message = str(e)
    # Stage ends, from the files each stage writes last.
    ends = {
        "dataset": _mtime(folder / RECORD),
        "finetune": _mtime(folder / "adapter" / TRAINING_RECORD),
        "gate": _mtime(gate_file),
        "publish": _mtime(registry / "index.json") if version else None,
        "swap": served_at,
    }
    seconds, previous = {}, record.started_at
    for stage, end in ends.items():
        if end is None or previous is None:
            break
        seconds[stage] = round(max(0.0, end - previous), 2)
        previous = end
    return Build(build_id=record.build_id, folder=str(folder), rows=record.rows, verdict=verdict, message=message,
                 version=version, numbers=nums, per_kind=kinds, seconds=seconds)


def refused_build(name: str, project: str | None, since: float) -> str | None:
    """A build of `name` started after `since` whose gate said no (from its files)."""
    from tinygpt.runtime.contracts.evals import GateResult
    from tinygpt.runtime.contracts.io import read_json

    folder, _ = latest_build(name, project, since)
    gate_file = folder / "eval" / "gate-result.json" if folder else None
    if gate_file is None or not gate_file.is_file():
        return None
    try:
        result = read_json(gate_file, GateResult)
    except ContractError:
        return None
    return None if result.verdict == "pass" else f"{result.verdict}: {result.message}"


def wait_for_version(root_url: str, name: str, previous: str, *, key: str | None, project: str | None, since: float,
                     up: Up | None, after_line: int) -> tuple[str, float]:
    """Wait until the runtime serves a version of `name` other than `previous`; (version, when).
    Raises DemoError when the daemon's build failed or its gate refused the candidate."""
    stalls = 0
    while True:
        try:
            version, stalls = served_version(root_url, name, key), 0
        except (TimeoutError, urllib.error.URLError) as e:
            # A machine busy training answers late (a demo sharing 2 cores with other jobs saw a
            # 60 s stall): that is no failure of the build, so poll again, for a while.
            if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, TimeoutError):
                raise
            stalls += 1
            if stalls >= MAX_STALLS:
                raise DemoError(f"the runtime at {root_url} did not answer {stalls} polls in a row "
                                f"({stalls * HTTP_TIMEOUT_S} s)") from None
            version = ""
        if version and version != previous:
            return version, time.time()
        why = up.failure_since(name, after_line) if up is not None else None
        why = why or refused_build(name, project, since)
        if why:
            raise DemoError(f"the daemon did not promote a new {name}: {why}")
        time.sleep(POLL_S)
