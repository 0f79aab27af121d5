"""Stage 3, label: a composite reward with named dimensions, and a keep / drop decision.

Dimensions, each in [0, 1] and recorded separately (only those that apply):

- ``tool_validity``: share of tool calls whose arguments are JSON that validates against
  the offered function's parameter schema (the runtime's own check when it recorded one);
- ``tool_outcome``: share of tool results that report success (the runtime's `ok`, else
  read from the result: an ``error`` field, ``"status": "error"``, ``Error: ...`` text);
- ``feedback``: mean of explicit feedback posted to the runtime (rewards clamped to
  [0, 1]; labels such as good / bad, up / down, accept / reject);
- ``judge``: an optional LLM judge (see `judge`), a 1-10 rating or a pairwise verdict.

The project's `LabelRule` turns them into keep / drop. Steps cut off by `max_tokens`,
stuck in a loop or repeating an identical tool call of their turn are flagged
(quality.py): the dataset trains on them as context only, and a trajectory with too few
clean steps (`min_quality`) is dropped. A trajectory no dimension applies to (a plain
chat nobody scored) is dropped unless the rule keeps unlabelled ones; `no_signal` marks
it so a build policy can still opt in. The record also carries the facts build policies
select on (who served it, tool names, request metadata) and the training rows it yields,
which `tinygpt up`'s autopilot counts toward each policy's next build.

Preference pairs come later, in the dataset stage, from the per-step prompt keys
recorded here: answers to the same prompt with rewards far enough apart.
"""

from __future__ import annotations

import hashlib
import json
import time

import msgspec
import redis

from tinygpt.queue import keys
from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.jobs import LabelJob
from tinygpt.runtime.contracts.pipeline import DedupeRecord, FileRecord, JudgeSettings, LabelRecord, LabelRule
from tinygpt.runtime.contracts.trajectory import ToolResult, Trajectory
from tinygpt.runtime.tool_schema import call_problem, tools_by_name

from . import judge, quality
from .dedupe import resolve_shas
from .ingest import load
from .tokens import sequences

CHUNK = 64
# The label log (what `tinygpt up`'s autopilot tails) keeps about this many entries.
LOG_MAX = 1_000_000
POSITIVE = {"good", "up", "thumbs_up", "positive", "accept", "accepted", "correct", "yes", "like", "+1"}
NEGATIVE = {"bad", "down", "thumbs_down", "negative", "reject", "rejected", "wrong", "incorrect", "no", "dislike", "-1"}
ERROR_STATUSES = {"error", "failed", "failure", "fail", "exception"}
OK_STATUSES = {"ok", "success", "succeeded", "done"}


class LabelResult(Contract):
    labelled: int = 0
    kept: int = 0
    dropped: int = 0
    skipped: int = 0
    # Dropped file sha256 -> the rule that dropped it.
    reasons: dict[str, str] = {}


def prompt_key(ids: list[int]) -> str:
    return hashlib.sha256(msgspec.msgpack.encode(ids)).hexdigest()[:32]


def _tools_by_name(traj: Trajectory) -> dict[str, dict]:
    return tools_by_name(traj.tools)


def tool_validity(traj: Trajectory) -> tuple[float | None, list[int]]:
    """(share of valid calls or None without calls, steps holding an invalid call)."""
    tools = _tools_by_name(traj)
    total = valid = 0
    invalid_steps: list[int] = []
    for step in traj.steps:
        bad = False
        for call in step.tool_calls:
            ok = call.valid if call.valid is not None else call_problem(call, tools) is None
            total += 1
            valid += ok
            bad |= not ok
        if bad:
            invalid_steps.append(step.index)
    return (valid / total if total else None), invalid_steps


def outcome_of(result: ToolResult) -> bool | None:
    """Whether a tool result reports success; None when it says nothing either way."""
    if result.ok is not None:
        return result.ok
    text = result.content.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("error"):
            return False
        for field in ("ok", "success"):
            if isinstance(data.get(field), bool):
                return data[field]
        status = str(data.get("status", "")).lower()
        if status in ERROR_STATUSES:
            return False
        if status in OK_STATUSES:
            return True
        return True
    head = text[:40].lower()
    if head.startswith(("error", "traceback (most recent call last)", "exception", "fatal")):
        return False
    return True


def tool_outcome(traj: Trajectory) -> float | None:
    outcomes = [o for step in traj.steps for r in step.tool_results if (o := outcome_of(r)) is not None]
    return sum(outcomes) / len(outcomes) if outcomes else None


def feedback_score(traj: Trajectory) -> float | None:
    scores = []
    for fb in traj.feedback:
        if fb.reward is not None:
            scores.append(min(1.0, max(0.0, fb.reward)))
        elif fb.label is not None:
            word = fb.label.strip().lower()
            if word in POSITIVE:
                scores.append(1.0)
            elif word in NEGATIVE:
                scores.append(0.0)
    return sum(scores) / len(scores) if scores else None


def decide(dimensions: dict[str, float], rule: LabelRule) -> tuple[bool, float | None, str]:
    """(keep, reward, reason) under `rule`; the reason names the first failed condition."""
    if not dimensions:
        return rule.keep_unlabelled, None, "" if rule.keep_unlabelled else "no reward dimension applies"
    weights = {d: rule.weights.get(d, 1.0) for d in dimensions}
    total = sum(weights.values())
    if total <= 0:
        raise PermanentError(f"label rule weights sum to 0 for dimensions {sorted(dimensions)}")
    reward = sum(dimensions[d] * w for d, w in weights.items()) / total
    for dim, minimum in rule.require.items():
        if dim in dimensions and dimensions[dim] < minimum:
            return False, reward, f"{dim} {dimensions[dim]:.2f} < {minimum:.2f}"
    if reward < rule.min_reward:
        return False, reward, f"reward {reward:.2f} < {rule.min_reward:.2f}"
    return True, reward, ""


def _judge_settings(job: LabelJob) -> JudgeSettings:
    if job.judge_model and not job.judge.model:
        return msgspec.structs.replace(job.judge, model=job.judge_model)
    return job.judge


def label_one(traj: Trajectory, record: FileRecord, job: LabelJob, conn: redis.Redis, project: str) -> LabelRecord:
    """Compute every dimension for one trajectory and apply the rule."""
    dims: dict[str, float] = {}
    validity, invalid_steps = tool_validity(traj)
    for name, value in (("tool_validity", validity), ("tool_outcome", tool_outcome(traj)), ("feedback", feedback_score(traj))):
        if value is not None:
            dims[name] = value
    keys_ = [prompt_key(s.prompt_ids) for s in traj.steps]
    settings = _judge_settings(job)
    if settings.mode == "rate":
        score = judge.rate(settings, traj)
        if score is not None:
            dims["judge"] = score
    elif settings.mode == "pairwise":
        ref = conn.hget(keys.prompt_refs(project), keys_[-1])
        ref_sha = ref.decode() if ref else None
        if ref_sha and ref_sha != record.sha256:
            raw = conn.hget(keys.files(), ref_sha)
            ref_record = msgspec.msgpack.decode(raw, type=FileRecord) if raw else None
            if ref_record is not None and ref_record.trajectory_id != traj.id:
                verdict = judge.compare(settings, traj, load(ref_record))
                if verdict is not None:
                    dims["judge"] = verdict
    keep, reward, reason = decide(dims, job.rule)
    flags = quality.step_flags(traj)
    share = 1.0 - len(flags) / len(traj.steps) if traj.steps else None
    rows = len(sequences(traj, set(invalid_steps) | set(flags)))
    if share is not None and share < job.rule.min_quality:
        keep, reason = False, f"quality {share:.2f} < {job.rule.min_quality:.2f} ({quality.describe(flags)})"
    elif rows == 0 and (keep or not dims):
        keep, reason = False, "nothing left to train on (every step is masked)"
    return LabelRecord(
        sha256=record.sha256,
        trajectory_id=traj.id,
        keep=keep,
        reward=reward,
        dimensions=dims,
        reason=reason,
        prompt_keys=keys_,
        invalid_steps=invalid_steps,
        labelled_at=time.time(),
        flags=flags,
        quality=share,
        no_signal=not dims and rows > 0 and (share is None or share >= job.rule.min_quality),
        rows=rows,
        **facts(traj),
    )


def facts(traj: Trajectory) -> dict:
    """What build policies select on: who served it, tool names offered or called, request metadata."""
    served = {traj.adapter or "base"}
    for s in traj.steps:
        served.add((s.model or "").partition("@")[0] if s.adapter_digest and s.model else "base")
    tools = set(_tools_by_name(traj)) | {c.name for s in traj.steps for c in s.tool_calls}
    tags: dict[str, str] = {}
    for s in traj.steps:
        tags.update(s.metadata)
    return {"served_by": sorted(served), "tools": sorted(tools), "tags": tags}


def run(job: LabelJob, conn: redis.Redis) -> LabelResult:
    """Label each ingested, not exactly duplicated file of `job` (once; a trajectory id relabels)."""
    result = LabelResult()
    relabel = bool(job.trajectory_id)
    shas = list(dict.fromkeys(job.sha256s)) or resolve_shas(conn, job.trajectory_id, job.project)
    for start in range(0, len(shas), CHUNK):
        chunk = shas[start : start + CHUNK]
        records = [msgspec.msgpack.decode(b, type=FileRecord) if b else None for b in conn.hmget(keys.files(), chunk)]
        with conn.pipeline(transaction=False) as pipe:
            for rec in records:
                if rec is not None and rec.status == "ingested":
                    pipe.hexists(keys.labels(rec.project), rec.sha256)
                    pipe.hget(keys.dedupe(rec.project), rec.sha256)
            replies = iter(pipe.execute())
        out: list[tuple[str, LabelRecord]] = []
        for rec in records:
            if rec is None or rec.status != "ingested":
                result.skipped += 1
                continue
            project = rec.project
            labelled, raw = next(replies), next(replies)
            if labelled and not relabel:
                result.skipped += 1
                continue
            verdict = msgspec.msgpack.decode(raw, type=DedupeRecord).verdict if raw else None
            # Exact copies and old versions add nothing: no label, no judge call.
            if verdict in ("exact", "superseded"):
                result.skipped += 1
                continue
            label = label_one(load(rec), rec, job, conn, project)
            out.append((project, label))
            result.labelled += 1
            if label.keep:
                result.kept += 1
            else:
                result.dropped += 1
                result.reasons[rec.sha256] = label.reason
        if out:
            with conn.pipeline(transaction=True) as pipe:
                for project, label in out:
                    pipe.hset(keys.labels(project), label.sha256, msgspec.msgpack.encode(label))
                    if label.prompt_keys:
                        pipe.hsetnx(keys.prompt_refs(project), label.prompt_keys[-1], label.sha256)
                    # In the same transaction: a label is written and logged, or neither.
                    pipe.xadd(keys.label_log(project), {"sha": label.sha256}, maxlen=LOG_MAX, approximate=True)
                pipe.execute()
    return result
