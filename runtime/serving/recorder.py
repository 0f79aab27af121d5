"""Token-preserving trajectories: every request becomes a `Step`, sessions become `Trajectory` files.

Grouping. A request belongs to the session named by the ``X-TinyGPT-Session`` header or
``metadata.session_id``; without either, to the trajectory whose last turn it continues
(its messages up to the last assistant message equal that turn's messages plus the reply
the runtime gave). A conversation that continues none starts a new trajectory.

Token continuity. The session index keeps each trajectory's last prompt and output ids
(and their text), which `prompts.ChatPrompts.build` extends for the next turn.

Files. Writing happens on the recorder's own thread, never on the request path. An open
trajectory is rewritten atomically after each step under ``<home>/trajectories/open/``;
once idle (or at shutdown, or on startup for files a crash left open) it is *sealed*:
moved atomically to ``<home>/trajectories/<id>.msgpack`` and handed to `on_flushed(path)`,
the queue's ingest hook. Feedback posted later rewrites the sealed file and calls the
hook again (ingest is idempotent by content hash). A continued session reopens its file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import msgspec

from ..contracts.io import atomic_write_bytes, read_any, to_msgpack
from ..contracts.trajectory import Feedback, SamplingParams, Step, ToolCall, ToolResult, Trajectory
from ..tool_schema import InvalidToolSchema, arguments_problem, tools_by_name
from . import hindsight
from .metrics import Metrics
from .prompts import PriorTurn
from .protocol import ApiError, Message

log = logging.getLogger("tinygpt.serving.recorder")

SESSION_HEADER = "X-TinyGPT-Session"
TRAJECTORY_ID = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")


def new_trajectory_id() -> str:
    return f"traj_{os.urandom(12).hex()}"


def _canonical_args(arguments: str) -> str:
    # Agents sometimes re-serialize arguments (key order, spacing); match on meaning.
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _normal(role: str, text: str, calls: list[tuple[str, str]], tool_call_id: str | None) -> list:
    return [
        "system" if role == "developer" else role,
        text,
        [[n, _canonical_args(a)] for n, a in calls],
        tool_call_id or "",
    ]


def normalize(messages: list[Message]) -> list[list]:
    return [
        _normal(m.role, m.text(), [(c.function.name, c.function.arguments) for c in m.tool_calls or []], m.tool_call_id)
        for m in messages
    ]


def conversation_key(normalized: list[list]) -> str:
    return hashlib.sha256(msgspec.json.encode(normalized)).hexdigest()


@dataclass
class Match:
    """Where a request lands: its trajectory, step index and the turn it continues."""

    trajectory_id: str
    index: int
    session: str | None
    prior: PriorTurn | None = None
    tool_results: list[ToolResult] = field(default_factory=list)


@dataclass
class _Last:
    trajectory_id: str
    index: int
    prior: PriorTurn

    @property
    def tokens(self) -> int:
        return len(self.prior.prompt_ids) + len(self.prior.output_ids)


class SessionIndex:
    """Last turn per session id and per conversation hash; bounded LRU by tokens held."""

    def __init__(self, max_tokens: int = 4_000_000, max_entries: int = 20_000):
        self.max_tokens = max_tokens
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Last] = collections.OrderedDict()
        self._tokens = 0

    def find(self, session: str | None, messages: list[Message]) -> Match:
        has_reply = any(m.role == "assistant" for m in messages)
        with self._lock:
            last = None
            if session is not None:
                last = self._get(f"s:{session}")
            elif has_reply:
                cut = max(i for i, m in enumerate(messages) if m.role == "assistant") + 1
                last = self._get(f"c:{conversation_key(normalize(messages[:cut]))}")
        if last is None:
            return Match(new_trajectory_id(), 0, session)
        # A fresh conversation in a named session: same trajectory, nothing to continue.
        prior = last.prior if has_reply else None
        return Match(last.trajectory_id, last.index + 1, session, prior, tool_results(messages))

    def remember(self, match: Match, messages: list[Message], reply: list, prior: PriorTurn) -> None:
        last = _Last(match.trajectory_id, match.index, prior)
        keys = [f"c:{conversation_key(normalize(messages) + [reply])}"]
        if match.session is not None:
            keys.append(f"s:{match.session}")
        with self._lock:
            for key in keys:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._tokens -= old.tokens
                self._entries[key] = last
                self._tokens += last.tokens
            while self._entries and (self._tokens > self.max_tokens or len(self._entries) > self.max_entries):
                _, old = self._entries.popitem(last=False)
                self._tokens -= old.tokens

    def _get(self, key: str) -> _Last | None:
        last = self._entries.get(key)
        if last is not None:
            self._entries.move_to_end(key)
        return last


def reply_message(content: str | None, calls: list) -> list:
    """The normalized form of the assistant message the runtime returned."""
    return _normal("assistant", content or "", [(c.name, c.arguments) for c in calls], None)


def tool_results(messages: list[Message]) -> list[ToolResult]:
    """The tool messages after the last assistant turn: results of that turn's calls."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None:
        return []
    out = []
    for m in messages[last + 1 :]:
        if m.role == "tool":
            out.append(ToolResult(tool_call_id=m.tool_call_id or "", content=m.text(), ok=_ok(m.text())))
    return out


def _ok(content: str) -> bool | None:
    """Success or failure when the result says so ({"ok": bool} or an "error" key), else None."""
    try:
        value = json.loads(content)
    except ValueError:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("ok"), bool):
            return value["ok"]
        if value.get("error") not in (None, "", False):
            return False
    return None


@dataclass
class StepRecord:
    """Everything the recorder needs about one finished request (plain Python)."""

    match: Match
    step: Step
    base_model: str
    base_digest: str
    adapter: str | None
    adapter_version: str | None
    adapter_digest: str | None
    sampling: SamplingParams
    tools: list[dict[str, Any]]
    project: str = "default"


def _valid(call: ToolCall, tools: list[dict[str, Any]]) -> bool | None:
    """Validate a call's arguments against its function's schema (None if unknown or not a valid schema)."""
    fn = tools_by_name(tools).get(call.name)
    schema = fn.get("parameters") if fn else None
    if schema is None:
        return None
    try:
        args = json.loads(call.arguments)
    except ValueError:
        return False
    try:
        return arguments_problem(args, schema) is None
    except InvalidToolSchema:
        return None


class Recorder:
    """Writes trajectories off the request path; seals idle ones and calls the queue hook."""

    def __init__(
        self,
        root: Path,
        *,
        on_flushed: Callable[[Path], None] | None = None,
        idle_seconds: float = 600.0,
        max_open: int = 256,
        metrics: Metrics | None = None,
    ):
        self.root = Path(root)
        self.open_dir = self.root / "open"
        self.open_dir.mkdir(parents=True, exist_ok=True)
        self.on_flushed = on_flushed
        self.idle_seconds = idle_seconds
        self.max_open = max_open
        self.metrics = metrics or Metrics()
        self.index = SessionIndex()
        self._ops: queue.Queue = queue.Queue()
        self._open: collections.OrderedDict[str, tuple[Trajectory, float]] = collections.OrderedDict()
        self._thread = threading.Thread(target=self._run, name="tinygpt-recorder", daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Write and seal everything, then stop the thread."""
        self._ops.put(None)
        self._thread.join()

    def record(self, rec: StepRecord) -> None:
        self._ops.put(("step", rec))

    def feedback(self, trajectory_id: str, fb: Feedback) -> Future:
        """Attach feedback; the future fails with ApiError 404 / 400 for an unknown id or step."""
        fut: Future = Future()
        if not TRAJECTORY_ID.match(trajectory_id):
            fut.set_exception(ApiError(404, f"no trajectory {trajectory_id!r}", code="trajectory_not_found"))
        else:
            self._ops.put(("feedback", (trajectory_id, fb, fut)))
        return fut

    def hindsight(self, trajectory_id: str, render: Callable[[Trajectory], tuple[list[int], list[int]]],
                  fb: Feedback) -> Future:
        """Record a hindsight relabel of a trajectory (runtime/serving/hindsight.py); the future
        holds the new trajectory's id. `render(traj)` gives (original opening ids, new opening
        ids) for that trajectory's tools; it runs on the recorder's thread, which owns the files."""
        fut: Future = Future()
        if not TRAJECTORY_ID.match(trajectory_id):
            fut.set_exception(ApiError(404, f"no trajectory {trajectory_id!r}", code="trajectory_not_found"))
        else:
            self._ops.put(("hindsight", (trajectory_id, render, fb, fut)))
        return fut

    def flush(self) -> Future:
        """A future done once every operation queued so far is written (tests, shutdown)."""
        fut: Future = Future()
        self._ops.put(("flush", fut))
        return fut

    def seal_all(self) -> Future:
        fut: Future = Future()
        self._ops.put(("seal_all", fut))
        return fut

    # ------------------------------------------------------------ recorder thread

    def _run(self) -> None:
        for path in sorted(self.open_dir.glob("*.msgpack")):
            self._guard(self._seal_file, path)
        while True:
            try:
                op = self._ops.get(timeout=min(self.idle_seconds, 5.0))
            except queue.Empty:
                op = ("idle", None)
            if op is None:
                for tid in list(self._open):
                    self._guard(self._seal, tid)
                return
            kind, arg = op
            if kind == "step":
                self._guard(self._add_step, arg)
            elif kind == "feedback":
                self._feedback(*arg)
            elif kind == "hindsight":
                self._hindsight(*arg)
            elif kind == "flush":
                arg.set_result(None)
            elif kind == "seal_all":
                for tid in list(self._open):
                    self._guard(self._seal, tid)
                arg.set_result(None)
            now = time.monotonic()
            for tid, (_, touched) in list(self._open.items()):
                if now - touched >= self.idle_seconds:
                    self._guard(self._seal, tid)

    def _guard(self, fn, *args) -> None:
        # A full disk or a broken hook must never take the runtime down: count and log.
        try:
            fn(*args)
        except Exception:
            self.metrics.recorder_errors.inc()
            log.exception("trajectory recording failed")

    def _path(self, tid: str, sealed: bool) -> Path:
        return (self.root if sealed else self.open_dir) / f"{tid}.msgpack"

    def _load_open(self, tid: str) -> Trajectory | None:
        if tid in self._open:
            self._open.move_to_end(tid)
            return self._open[tid][0]
        sealed = self._path(tid, True)
        if sealed.is_file():
            # The session went on after it was sealed: reopen it.
            traj = read_any(sealed, Trajectory)
            os.replace(sealed, self._path(tid, False))
            self._open[tid] = (traj, time.monotonic())
            return traj
        return None

    def _add_step(self, rec: StepRecord) -> None:
        tid = rec.match.trajectory_id
        traj = self._load_open(tid)
        if traj is None:
            traj = Trajectory(
                id=tid,
                base_model=rec.base_model,
                base_digest=rec.base_digest,
                project=rec.project,
                session=rec.match.session,
                adapter=rec.adapter,
                adapter_version=rec.adapter_version,
                adapter_digest=rec.adapter_digest,
                sampling=rec.sampling,
                created_at=time.time(),
            )
        if rec.tools:
            names = {t["function"]["name"] for t in rec.tools}
            traj.tools = [t for t in traj.tools if t["function"]["name"] not in names] + rec.tools
        step = rec.step
        step.tool_calls = [msgspec.structs.replace(c, valid=_valid(c, traj.tools)) for c in step.tool_calls]
        if rec.match.tool_results:
            prev = next((s for s in reversed(traj.steps) if s.index == rec.match.index - 1), None)
            if prev is not None:
                prev.tool_results = rec.match.tool_results
        traj.steps.append(step)
        self._open[tid] = (traj, time.monotonic())
        self._open.move_to_end(tid)
        self._write(traj, sealed=False)
        while len(self._open) > self.max_open:
            self._seal(next(iter(self._open)))

    def _write(self, traj: Trajectory, *, sealed: bool) -> Path:
        path = self._path(traj.id, sealed)
        atomic_write_bytes(path, to_msgpack(traj))
        self.metrics.recorded.inc(kind="write")
        return path

    def _seal(self, tid: str) -> None:
        # The open file is current (rewritten after every step and feedback).
        self._open.pop(tid)
        self._seal_file(self._path(tid, False))

    def _seal_file(self, open_path: Path) -> None:
        sealed = self.root / open_path.name
        os.replace(open_path, sealed)
        self.metrics.recorded.inc(kind="sealed")
        self._hook(sealed)

    def _hook(self, path: Path) -> None:
        if self.on_flushed is None:
            return
        try:
            self.on_flushed(path)
        except Exception:
            # The file is safely on disk; the queue can pick it up later.
            self.metrics.recorder_errors.inc()
            log.exception("on_flushed hook failed for %s", path)

    def _current(self, tid: str) -> tuple[Trajectory, bool]:
        """(the trajectory as it stands, whether it is sealed); ApiError 404 when unknown."""
        if tid in self._open:
            return self._open[tid][0], False
        path = self._path(tid, True)
        if not path.is_file():
            raise ApiError(404, f"no trajectory {tid!r}", code="trajectory_not_found")
        return read_any(path, Trajectory), True

    def _answer(self, fut: Future, what: str, fn: Callable[[], Any]) -> None:
        """Settle a client's future with `fn()`: its ApiError as it is, anything else a 500."""
        try:
            fut.set_result(fn())
        except ApiError as e:
            fut.set_exception(e)
        except Exception as e:
            self.metrics.recorder_errors.inc()
            log.exception("could not store %s", what)
            fut.set_exception(ApiError(500, f"could not store {what}: {e}", type="server_error"))

    def _hindsight(self, tid: str, render, fb: Feedback, fut: Future) -> None:
        def relabel() -> str:
            traj, _ = self._current(tid)
            original, opening = render(traj)
            slots = hindsight.slot_ids(tid)
            # Built (and `original` checked) once, before any answer; a free slot renames it.
            new = hindsight.relabel(traj, original, opening, fb, slots[0])
            for new_id in slots:
                path = self._path(new_id, True)
                if not path.is_file():
                    new = msgspec.structs.replace(new, id=new_id, session=None, created_at=time.time(),
                                                  feedback=[msgspec.structs.replace(f, trajectory_id=new_id) for f in new.feedback])
                    self._hook(self._write(new, sealed=True))
                    return new_id
                if read_any(path, Trajectory).steps[0].prompt_ids == opening:  # asked before: the same relabel
                    return new_id
            raise ApiError(409, f"trajectory {tid!r} has {hindsight.MAX_PER_TRAJECTORY} relabels already", code="relabel_limit")

        self._answer(fut, f"the relabel of {tid}", relabel)

    def _feedback(self, tid: str, fb: Feedback, fut: Future) -> None:
        def attach() -> int:
            traj, sealed = self._current(tid)
            if fb.step is not None and not any(s.index == fb.step for s in traj.steps):
                raise ApiError(400, f"trajectory {tid!r} has no step {fb.step}", param="step")
            traj.feedback.append(fb)
            if sealed:
                self._hook(self._write(traj, sealed=True))
            else:
                self._write(traj, sealed=False)
            return len(traj.feedback)

        self._answer(fut, f"feedback for {tid}", attach)
