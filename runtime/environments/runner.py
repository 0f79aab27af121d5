"""Driving an environment through the runtime, exactly as a user's agent would.

One episode: open a session (`X-TinyGPT-Session`, so every turn is one recorded
trajectory), send the task's messages with the environment's tools, execute each returned
call with `env.step`, send its result back as a `tool` message, stop when the model
answers in text or the turn limit is reached, then ask `env.score` and post the reward
to `POST /v1/trajectories/{id}/feedback`. The label stage keeps or drops the recording by
that feedback, like any other.

Exploration (`force`, `require_more`) only constrains decoding: a named `tool_choice`
on the first turn, `required` instead of `auto` on the second. The prompt the runtime
renders depends on the messages and tools only, so the recorded ids are a prompt the
model will see again and a reply it sampled itself.

Hindsight (`Sampling.hindsight`): a failed episode the environment can describe as another
task (`Environment.hindsight`), which its own checker passes, is recorded again under that
task's opening (`POST /v1/trajectories/{id}/hindsight`): the same sampled ids, a request
they do answer.
"""

from __future__ import annotations

import json
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import msgspec

from tinygpt.runtime.contracts.environments import (
    EnvTask, EpisodeResult, HeldOut, KindCounts, Reward, Split, ToolCallRecord, Transcript,
)

from .interface import Environment
from .loader import EnvironmentBroken

SESSION_HEADER = "X-TinyGPT-Session"
TRAJECTORY_HEADER = "X-TinyGPT-Trajectory"
MODEL_HEADER = "X-TinyGPT-Model"
# A small model answers a tool result by writing a fake <tool_response> of its own; a
# reply without a call ends the episode either way, so stop there (as ReAct agents stop
# at "Observation:").
STOP_AT = "<tool_response>"
TOOL_CALL_OPEN = "<tool_call>"


@dataclass(frozen=True)
class Sampling:
    model: str
    temperature: float = 0.0
    max_turns: int = 4
    max_tokens: int = 96
    seed: int | None = None
    success_reward: float = 1.0
    source: str = "environment"
    # OpenAI request `metadata` on every request (a build policy's selection can match it:
    # e.g. collection episodes tagged for training, held-out ones not).
    metadata: dict[str, str] | None = None
    # Relabel failed episodes with the task they did achieve (`Environment.hindsight`), so
    # they train like successes: the same sampled ids under that request's opening.
    hindsight: bool = False


@dataclass(frozen=True)
class Attempt:
    task: EnvTask
    attempt: int = 0
    force: str | None = None
    require_more: bool = False
    # A guided attempt: turn i forced to plan[i] (Environment.plan); `force` is plan[0].
    plan: tuple[str, ...] = ()


def make_client(base_url: str, api_key: str | None = None, timeout: float = 600.0):
    """An `openai.OpenAI` client for the runtime at `base_url` (…/v1 added when missing)."""
    from openai import OpenAI

    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    # No retries: a refused request is a result to report, and a retry would record a
    # second step in the session's trajectory.
    return OpenAI(base_url=url, api_key=api_key or "unused", timeout=timeout, max_retries=0)


def tool_names(env: Environment) -> list[str]:
    return [t["function"]["name"] for t in env.tools]


def _guard(env_name: str, method: str, fn: Callable[[], Any]) -> Any:
    """Call into the user's environment; anything it raises is the environment's failure."""
    try:
        return fn()
    except EnvironmentBroken:
        raise
    except Exception as e:  # noqa: BLE001 - a user's method may raise anything
        raise EnvironmentBroken(f"environment {env_name!r}: {method} raised {type(e).__name__}: {e}") from e


def _as_task(env_name: str, where: str, value: Any) -> EnvTask:
    """An EnvTask the environment returned (a dict of its fields converts), else EnvironmentBroken."""
    if isinstance(value, dict):
        try:
            value = msgspec.convert(value, EnvTask)
        except msgspec.ValidationError as e:
            raise EnvironmentBroken(f"environment {env_name!r}: {where} is not an EnvTask: {e}") from None
    if not isinstance(value, EnvTask):
        raise EnvironmentBroken(f"environment {env_name!r}: {where} is a {type(value).__name__}, not an EnvTask")
    return value


def get_tasks(env: Environment, env_name: str, split: Split, n: int, seed: int) -> list[EnvTask]:
    """`env.tasks(...)` checked: `n` EnvTasks with distinct ids."""
    raw = _guard(env_name, "tasks", lambda: env.tasks(split, n, seed))
    if not isinstance(raw, list):
        raise EnvironmentBroken(f"environment {env_name!r}: tasks() must return a list, got {type(raw).__name__}")
    out = [_as_task(env_name, f"tasks()[{i}]", t) for i, t in enumerate(raw)]
    ids = [t.id for t in out]
    if len(set(ids)) != len(ids):
        raise EnvironmentBroken(f"environment {env_name!r}: tasks({split!r}) repeats task ids")
    return out


def _request_text(task: EnvTask) -> str:
    users = [m.get("content") for m in task.messages if m.get("role") == "user"]
    return json.dumps(users[-1] if users else task.messages, sort_keys=True)


def split_tasks(env: Environment, env_name: str, train_n: int, test_n: int, seed: int) -> tuple[list[EnvTask], list[EnvTask]]:
    """(train, test) tasks, refused unless disjoint: no shared id, no shared request."""
    train = get_tasks(env, env_name, "train", train_n, seed)
    test = get_tasks(env, env_name, "test", test_n, seed)
    shared = {t.id for t in train} & {t.id for t in test}
    shared |= {t.id for t in test if _request_text(t) in {_request_text(u) for u in train}}
    if shared:
        raise EnvironmentBroken(f"environment {env_name!r}: train and test splits share {len(shared)} task(s) "
                                f"(e.g. {sorted(shared)[0]}); the held-out split must be disjoint from training")
    return train, test


def _assistant_message(message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    return out


def _check_reward(env_name: str, value: Any) -> Reward:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = Reward(reward=float(value))
    elif isinstance(value, tuple) and len(value) == 2:
        value = Reward(reward=float(value[0]), reason=str(value[1]))
    if not isinstance(value, Reward):
        raise EnvironmentBroken(f"environment {env_name!r}: score() must return a Reward, got {type(value).__name__}")
    if not (math.isfinite(value.reward) and 0.0 <= value.reward <= 1.0):
        raise EnvironmentBroken(f"environment {env_name!r}: score() returned reward {value.reward!r}, outside [0, 1]")
    return value


def run_episode(client, env: Environment, env_name: str, job: Attempt, cfg: Sampling) -> EpisodeResult:
    """One episode of `job.task` through the runtime; the reward goes back as feedback."""
    task = job.task
    state = _guard(env_name, "reset", lambda: env.reset(task))
    messages = [dict(m) for m in task.messages]
    headers = {SESSION_HEADER: f"env-{uuid.uuid4().hex}"}
    calls: list[ToolCallRecord] = []
    trajectory_id, served_by, answer, finished, turns = None, "", "", False, 0
    for turn in range(cfg.max_turns):
        if turn < len(job.plan):
            choice: Any = {"type": "function", "function": {"name": job.plan[turn]}}
        elif turn == 0:
            choice = {"type": "function", "function": {"name": job.force}} if job.force else "required"
        else:
            choice = "required" if (job.require_more and turn == 1) else "auto"
        extra: dict[str, Any] = {"stop": [STOP_AT]} if turn > 0 else {}
        if cfg.seed is not None:
            # Distinct per attempt and turn, so attempts differ but a rerun repeats.
            extra["seed"] = cfg.seed * 1000 + job.attempt * 10 + turn
        if cfg.metadata:
            extra["metadata"] = cfg.metadata
        raw = client.chat.completions.with_raw_response.create(
            model=cfg.model, messages=messages, tools=env.tools, tool_choice=choice, parallel_tool_calls=False,
            temperature=cfg.temperature, max_tokens=cfg.max_tokens, extra_headers=headers, **extra,
        )
        reply = raw.parse()
        trajectory_id = trajectory_id or raw.headers.get(TRAJECTORY_HEADER)
        served_by = served_by or raw.headers.get(MODEL_HEADER, reply.model)
        turns += 1
        message = reply.choices[0].message
        if not message.tool_calls:
            answer = message.content or ""
            finished = TOOL_CALL_OPEN not in answer
            break
        messages.append(_assistant_message(message))
        for call in message.tool_calls:
            name, text = call.function.name, call.function.arguments
            try:
                args = json.loads(text)
            except ValueError as e:
                args, result = None, {"ok": False, "error": f"arguments are not JSON: {e}"}
            if args is not None and not isinstance(args, dict):
                args, result = None, {"ok": False, "error": "arguments must be a JSON object"}
            if args is not None:
                result = _guard(env_name, "step", lambda name=name, args=args: env.step(state, name, args))
            try:
                content = json.dumps(result)
            except (TypeError, ValueError) as e:
                raise EnvironmentBroken(f"environment {env_name!r}: step({name!r}) returned a result that is not JSON: {e}") from None
            calls.append(ToolCallRecord(name=name, arguments=args, result=result, raw_arguments=text))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    transcript = Transcript(calls=calls, answer=answer, finished=finished, turns=turns)
    reward = _check_reward(env_name, _guard(env_name, "score", lambda: env.score(task, state, transcript)))
    relabeled = (None, None)
    if trajectory_id:
        client.post(f"/trajectories/{trajectory_id}/feedback",
                    body={"reward": reward.reward, "source": cfg.source, "comment": reward.reason[:500]}, cast_to=object)
        if cfg.hindsight and reward.reward < cfg.success_reward:
            relabeled = _relabel(client, env, env_name, task, state, transcript, trajectory_id, cfg)
    return EpisodeResult(
        task_id=task.id, kind=task.kind, reward=reward.reward, success=reward.reward >= cfg.success_reward,
        reason=reward.reason, trajectory_id=trajectory_id, served_by=served_by, attempt=job.attempt,
        forced_tool=job.force, required_more=job.require_more, plan=list(job.plan), turns=turns, calls=[c.name for c in calls],
        relabeled_as=relabeled[0], relabel_id=relabeled[1],
    )


def _relabel(client, env: Environment, env_name: str, task: EnvTask, state: Any, transcript: Transcript,
             trajectory_id: str, cfg: Sampling) -> tuple[str | None, str | None]:
    """Ask the environment what this failed episode achieved; when it names a task that its
    own checker passes, record the relabel (runtime/serving/hindsight.py). Returns (its
    kind, the relabeled trajectory's id), or (None, None)."""
    other = _guard(env_name, "hindsight", lambda: env.hindsight(task, state, transcript))
    if other is None:
        return None, None
    other = _as_task(env_name, "hindsight()'s answer", other)
    verdict = _check_reward(env_name, _guard(env_name, "score", lambda: env.score(other, state, transcript)))
    if verdict.reward < cfg.success_reward:
        # A relabel its own checker refuses would be a wrong example taught as a right one.
        raise EnvironmentBroken(f"environment {env_name!r}: hindsight() named task {other.id!r}, which this episode "
                                f"fails by the environment's own checker ({verdict.reason}); it must return None instead")
    made = client.post(f"/trajectories/{trajectory_id}/hindsight", cast_to=object, body={
        "original": task.messages, "messages": other.messages, "reward": verdict.reward, "source": cfg.source,
        "comment": f"hindsight of task {task.id}: {verdict.reason}"[:500],
    })
    return other.kind, made["trajectory_id"]


def run_many(client, env: Environment, env_name: str, jobs: list[Attempt], cfg: Sampling, *, concurrency: int = 8,
             on_done: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Episodes concurrently (the runtime batches them); results in the order of `jobs`."""
    def one(job: Attempt) -> EpisodeResult:
        result = run_episode(client, env, env_name, job, cfg)
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, jobs))


def exploration_plan(tasks: list[EnvTask], tools: list[str], attempts: int, explore: float,
                     env: Environment | None = None, env_name: str = "environment") -> list[Attempt]:
    """`attempts` per task; the last round(attempts * explore) of them explore. A task that
    `env.plan` names a tool sequence for is explored along it, one
    forced name per turn. Otherwise the first call is forced to one tool after another
    (offset per task, so every tool gets its turn even with one exploring attempt per task),
    and every other exploring attempt is also required to make a second call."""
    n_explore = min(attempts, round(attempts * explore))
    plan = []
    for i, task in enumerate(tasks):
        steps = None
        if env is not None and n_explore:
            steps = _checked_plan(env_name, task, _guard(env_name, "plan", lambda task=task: env.plan(task)), tools)
        for a in range(attempts):
            e = a - (attempts - n_explore)
            if e < 0:
                plan.append(Attempt(task, a))
            elif steps:
                plan.append(Attempt(task, a, force=steps[0], plan=steps))
            else:
                plan.append(Attempt(task, a, force=tools[(i + e) % len(tools)], require_more=e % 2 == 1))
    return plan


def _checked_plan(env_name: str, task: EnvTask, steps: Any, tools: list[str]) -> tuple[str, ...] | None:
    """The environment's plan for `task` as a tuple of known tool names; a plan naming an
    unknown tool (or not a list of names) stops the run: forcing it would be a 400 per turn."""
    if steps is None:
        return None
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        raise EnvironmentBroken(f"environment {env_name!r}: plan({task.id!r}) must return a list of tool names or None, "
                                f"not {steps!r:.80}")
    unknown = sorted(set(steps) - set(tools))
    if unknown:
        raise EnvironmentBroken(f"environment {env_name!r}: plan({task.id!r}) names tools it does not offer: "
                                f"{', '.join(unknown)}")
    return tuple(steps) or None


def per_kind(results: list[EpisodeResult]) -> dict[str, KindCounts]:
    counts: dict[str, list[int]] = {}
    for r in results:
        c = counts.setdefault(r.kind, [0, 0])
        c[0] += r.success
        c[1] += 1
    return {k: KindCounts(successes=v[0], n=v[1]) for k, v in sorted(counts.items())}


def held_out(model: str, results: list[EpisodeResult]) -> HeldOut:
    k = sum(r.success for r in results)
    return HeldOut(model=model, n=len(results), successes=k, success_rate=k / len(results) if results else 0.0,
                   per_kind=per_kind(results), solved=sorted(r.task_id for r in results if r.success))
