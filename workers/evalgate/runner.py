"""Running suites through the runtime's own serving path, as a client would.

One in-process `Runtime` per base model, on 127.0.0.1 and a free port, with recording
off; each adapter under test is loaded into it like a served specialist, and every row
is sent to `/v1/chat/completions` as an OpenAI client would send it. So tools,
tool_choice and response_format get the same grammar constraints as in production, and
the chat template, tool-call parsing and stop handling are the production code too.

Sampled passes use seeds derived from (suite seed, item id, pass), the same for candidate
and baseline: both answer with the same random numbers, which makes the paired
comparison sharper. Accuracy-type suites of a model run concurrently (the engine batches
them); latency suites run afterwards one request at a time, after a warm-up request, so
they measure an unloaded server.

Importing this module is cheap; `run_jobs` imports the runtime (and so MLX) when called.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tinygpt.runtime.contracts.evals import EvalSuite, ItemResult, SuiteReport

from .rows import Call, GateInputError, Item, Output
from .scorers import MetricSpec, scorer_for
from .stats import mean, summarize
from .targets import Target

log = logging.getLogger("tinygpt.evalgate")

REQUEST_TIMEOUT_S = 900.0


@dataclass
class RunJob:
    """One suite to run on one target."""

    target: Target
    suite: EvalSuite
    spec: MetricSpec
    items: list[Item]
    key: str
    source: str  # the data file, for messages


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _seed(suite: EvalSuite, item_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{suite.seed}\0{item_id}\0{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def request_body(job: RunJob, model: str, item: Item, k: int) -> dict:
    """The chat completion request for pass `k` of `item`, exactly as a client sends it."""
    row, suite = item.row, job.suite
    body = {
        "model": model,
        "messages": row.chat_messages(),
        "max_tokens": row.max_tokens or suite.max_tokens,
        "temperature": suite.temperature,
    }
    if suite.temperature > 0:
        body["seed"] = _seed(suite, item.id, k)
    for field in ("tools", "tool_choice", "parallel_tool_calls", "response_format"):
        value = getattr(row, field)
        if value is not None:
            body[field] = value
    if suite.kind == "latency":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _error_message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300]


def ask(port: int, body: dict) -> Output:
    """Send one request; the answer as an Output with client-side timings."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise _Refused(resp.status, _error_message(resp.read()))
        if not body.get("stream"):
            data = json.loads(resp.read())
            latency = time.perf_counter() - start
            choice = data["choices"][0]
            msg = choice["message"]
            calls = [Call(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or []]
            return Output(content=msg.get("content"), calls=calls, finish_reason=choice.get("finish_reason") or "",
                          completion_tokens=data["usage"]["completion_tokens"], latency_s=latency)
        return _read_stream(resp, start)
    finally:
        conn.close()


def _read_stream(resp, start: float) -> Output:
    first = None
    content: list[str] = []
    calls: dict[int, list[str]] = {}
    finish, tokens = "", 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise _Refused(500, chunk["error"].get("message", "stream error"))
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if (delta.get("content") or delta.get("tool_calls")) and first is None:
                first = time.perf_counter() - start
            content.append(delta.get("content") or "")
            for tc in delta.get("tool_calls") or []:
                fn = tc.get("function") or {}
                entry = calls.setdefault(tc.get("index", len(calls)), ["", ""])
                entry[0] += fn.get("name") or ""
                entry[1] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    latency = time.perf_counter() - start
    return Output(content="".join(content) or None, calls=[Call(n, a) for _, (n, a) in sorted(calls.items())],
                  finish_reason=finish, completion_tokens=tokens, ttft_s=first if first is not None else latency,
                  latency_s=latency)


def _answer(port: int, job: RunJob, model: str, item: Item, k: int) -> Output:
    try:
        return ask(port, request_body(job, model, item, k))
    except _Refused as e:
        if e.status == 400:
            # The runtime refuses what it cannot enforce (an unsupported schema, a prompt
            # too long): the row is bad input, never a silent zero.
            raise GateInputError(f"{job.source}:{item.line}: the runtime refused row {item.id!r}: {e.message}") from None
        raise RuntimeError(f"suite {job.suite.name!r}, row {item.id!r}: the runtime answered {e}") from None


def _report(job: RunJob, outputs: dict[tuple[str, int], Output], seconds: float) -> SuiteReport:
    scorer = scorer_for(job.suite)
    results = []
    for item in job.items:
        scored = [scorer(item, outputs[item.id, k]) for k in range(job.suite.passes)]
        detail = next((d for s, d in scored if d), "")
        results.append(ItemResult(id=item.id, score=mean([s for s, _ in scored]), passes=[s for s, _ in scored],
                                  output=outputs[item.id, 0].shown(), detail=detail, line=item.line))
    summary = summarize([r.score for r in results], job.spec.percentile)
    return SuiteReport(
        suite=job.suite.name, metric=job.suite.metric, direction=job.spec.direction, n=len(results),
        passes=job.suite.passes, mean=summary.mean, std=summary.std, stderr=summary.stderr, ci95=summary.ci95,
        items=results, value=summary.value if job.spec.percentile is not None else None, key=job.key, seconds=seconds,
    )


def _load(rt, target: Target, served: dict) -> str:
    """The model name to ask for `target` (loading its adapter once per server)."""
    if target.adapter_dir is None:
        return "base"
    if target.adapter_digest not in served:
        from tinygpt.runtime.serving.protocol import ApiError

        name = f"eval-{len(served)}"
        try:
            rt.load_adapter(name, str(target.adapter_dir))
        except ApiError as e:
            raise GateInputError(f"{target.describe}: {e.message}") from None
        served[target.adapter_digest] = name
    return served[target.adapter_digest]


def run_jobs(jobs: list[RunJob], *, concurrency: int | None = None, say: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[SuiteReport]:
    """Run every job (grouped by base model, one server each); reports in the jobs' order.

    `progress(done, total)` is called after every answered request (from pool threads).
    `concurrency` None: `device.CLIENTS_AT_ONCE` for the backend the server computes on.
    """
    from tinygpt.runtime.device import CLIENTS_AT_ONCE
    from tinygpt.runtime.serving.config import ServerConfig
    from tinygpt.runtime.stack import start_runtime

    say = say or log.info
    answered = _Counter(sum(len(j.items) * j.suite.passes + (j.suite.kind == "latency") for j in jobs), progress)
    reports: dict[int, SuiteReport] = {}
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(str(job.target.model_dir), []).append(i)
    for model_dir, indices in groups.items():
        # Every request names its max_tokens, so the server's defaults do not matter here.
        rt = start_runtime(ServerConfig(model=model_dir, port=0, record=False, prefix_cache_mb=256))
        try:
            at_once = concurrency or CLIENTS_AT_ONCE[rt.engine.device.backend]
            served: dict = {}
            models = {i: _load(rt, jobs[i].target, served) for i in indices}
            batch = [i for i in indices if jobs[i].suite.kind not in ("latency", "environment")]
            if batch:
                _run_concurrent(rt.port, [jobs[i] for i in batch], [models[i] for i in batch], at_once, say, reports,
                                batch, answered)
            for i in (i for i in indices if jobs[i].suite.kind == "environment"):
                from .environment import run as run_environment

                job = jobs[i]
                say(f"{job.suite.name}: {len(job.items)} episodes of {job.suite.environment!r} on {job.target.describe}")
                reports[i] = run_environment(rt.port, job.suite, models[i], job.key, at_once, lambda: answered(None))
            for i in (i for i in indices if jobs[i].suite.kind == "latency"):
                job = jobs[i]
                say(f"{job.suite.name}: {len(job.items)} rows x {job.suite.passes} on {job.target.describe} (one at a time)")
                start = time.perf_counter()
                answered(_answer(rt.port, job, models[i], job.items[0], 0))  # warm-up: grammar compile, caches
                outputs = {(it.id, k): answered(_answer(rt.port, job, models[i], it, k))
                           for it in job.items for k in range(job.suite.passes)}
                reports[i] = _report(job, outputs, time.perf_counter() - start)
        finally:
            rt.stop()
    return [reports[i] for i in range(len(jobs))]


class _Counter:
    """Counts answered requests across threads and passes the count on."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None):
        self.total, self.done, self.progress = total, 0, progress
        self._lock = threading.Lock()
        if progress is not None:
            progress(0, total)

    def __call__(self, output: Output) -> Output:
        if self.progress is not None:
            with self._lock:
                self.done += 1
                self.progress(self.done, self.total)
        return output


def _run_concurrent(port: int, jobs: list[RunJob], models: list[str], concurrency: int, say, reports: dict,
                    indices: list[int], answered: _Counter) -> None:
    work = [(j, it, k) for j, job in enumerate(jobs) for it in job.items for k in range(job.suite.passes)]
    for job in jobs:
        say(f"{job.suite.name}: {len(job.items)} rows x {job.suite.passes} on {job.target.describe}")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        answers = list(pool.map(lambda w: answered(_answer(port, jobs[w[0]], models[w[0]], w[1], w[2])), work))
    seconds = time.perf_counter() - start
    per_job: list[dict] = [{} for _ in jobs]
    for (j, it, k), out in zip(work, answers):
        per_job[j][it.id, k] = out
    for j, job in enumerate(jobs):
        reports[indices[j]] = _report(job, per_job[j], seconds)
