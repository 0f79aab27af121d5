"""The scripted agent: an ordinary OpenAI client that works a task through the runtime.

Per task it opens a session (``X-TinyGPT-Session``, so every turn lands in one recorded
trajectory), asks for a tool call (``tool_choice="required"`` on the first turn, then
``"auto"`` so the model may stop with an answer), executes each returned call on the
task's sandboxed `FakeFS`, sends the result back as a tool message, and stops when the
model answers in text or the turn limit is reached. The checker's verdict then goes to
the runtime as feedback on the trajectory (reward 1 or 0): the label the pipeline keeps
or drops trajectories by.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from tinygpt.runtime.contracts.base import Contract

from .fs import TOOLS, execute
from .tasks import Outcome, Task, check, opening

log = logging.getLogger("tinygpt.demo")

SESSION_HEADER = "X-TinyGPT-Session"
TRAJECTORY_HEADER = "X-TinyGPT-Trajectory"
MODEL_HEADER = "X-TinyGPT-Model"
STOP_AT = "<tool_response>"
TOOL_CALL_OPEN = "<tool_call>"


class AgentConfig(Contract):
    model: str
    temperature: float = 0.0
    max_turns: int = 4
    # Enough for the longest call (a write with its text) or a one-sentence answer.
    max_tokens: int = 96
    seed: int | None = None
    send_feedback: bool = True


class Episode(Contract):
    """One agent run: the task, the checker's verdict, and where the runtime recorded it."""

    task_id: str
    outcome: Outcome
    trajectory_id: str | None
    # Which weights answered the first turn ("name@version" or the base model's name).
    served_by: str
    temperature: float
    attempt: int = 0
    turns: int = 0
    seconds: float = 0.0
    calls: list[tuple[str, str]] = []
    answer: str = ""


def make_client(base_url: str, api_key: str | None = None, timeout: float = 600.0):
    """An `openai.OpenAI` client for the runtime at `base_url` (…/v1 added when missing)."""
    try:
        from openai import OpenAI
    except ImportError as e:  # pragma: no cover - a declared dependency of the demo
        raise RuntimeError("the demo's agent needs the openai client: pip install openai") from e
    url = base_url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    # No retries: a refused request is a result to report, and a retry would record a
    # second step in the session's trajectory.
    return OpenAI(base_url=url, api_key=api_key or "unused", timeout=timeout, max_retries=0)


def _assistant_message(message) -> dict[str, Any]:
    """The returned assistant message as the next request must echo it (calls verbatim)."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    return out


def run_episode(client, task: Task, cfg: AgentConfig, *, attempt: int = 0) -> Episode:
    """Work `task` through the runtime, check the result, and report it as feedback."""
    started = time.perf_counter()
    fs = task.workspace()
    messages = opening(task.prompt)
    headers = {SESSION_HEADER: f"demo-{uuid.uuid4().hex}"}
    calls: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    trajectory_id, served_by, answer, finished, turns = None, "", "", False, 0
    for turn in range(cfg.max_turns):
        extra: dict[str, Any] = {}
        if turn > 0:
            # SmolLM2 tends to answer a tool result by writing a fake <tool_response> of
            # its own (ReAct agents stop at "Observation:" for the same reason); a reply
            # without a tool call ends the run either way, so stop there.
            extra["stop"] = [STOP_AT]
        if cfg.seed is not None:
            # Distinct per attempt and turn, so best-of-n draws differ but reruns repeat.
            extra["seed"] = cfg.seed * 1000 + attempt * 10 + turn
        raw = client.chat.completions.with_raw_response.create(
            model=cfg.model,
            messages=messages,
            tools=TOOLS,
            tool_choice="required" if turn == 0 else "auto",
            parallel_tool_calls=False,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            extra_headers=headers,
            **extra,
        )
        reply = raw.parse()
        trajectory_id = trajectory_id or raw.headers.get(TRAJECTORY_HEADER)
        served_by = served_by or raw.headers.get(MODEL_HEADER, reply.model)
        turns += 1
        message = reply.choices[0].message
        if not message.tool_calls:
            # A reply without a call is the final answer, unless it is a call cut short.
            answer = message.content or ""
            finished = TOOL_CALL_OPEN not in answer
            break
        messages.append(_assistant_message(message))
        for call in message.tool_calls:
            result = execute(fs, call.function.name, call.function.arguments)
            calls.append((call.function.name, call.function.arguments))
            results.append(result)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    outcome = check(task, fs, calls, results, finished)
    if cfg.send_feedback and trajectory_id:
        client.post(
            f"/trajectories/{trajectory_id}/feedback",
            body={"reward": 1.0 if outcome.success else 0.0, "source": "demo-checker", "comment": outcome.reason},
            cast_to=object,
        )
    return Episode(
        task_id=task.id, outcome=outcome, trajectory_id=trajectory_id, served_by=served_by,
        temperature=cfg.temperature, attempt=attempt, turns=turns, seconds=time.perf_counter() - started,
        calls=calls, answer=answer,
    )  # fmt: skip


def run_many(
    client,
    jobs: list[tuple[Task, int]],
    cfg: AgentConfig,
    *,
    concurrency: int = 8,
    on_done: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """Run (task, attempt) pairs concurrently (the runtime batches them); results in order."""
    def one(job: tuple[Task, int]) -> Episode:
        episode = run_episode(client, job[0], cfg, attempt=job[1])
        if on_done is not None:
            on_done(episode)
        return episode

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, jobs))
