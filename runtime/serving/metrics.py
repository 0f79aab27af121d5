"""Prometheus text exposition for `/metrics`: counters, gauges and histograms with labels.

Small and dependency-free (the runtime needs only a handful of series); every update
takes one lock, so HTTP threads, the model thread and the recorder can all report.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
# Grammar compiles: ~1 ms for a tool set on llguidance, seconds only if something regresses.
COMPILE_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...], lock: threading.Lock):
        self.name, self.help, self.label_names, self._lock = name, help, labels, lock

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a):
        super().__init__(*a)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value read when scraped (`fn`), or set by the code."""

    kind = "gauge"

    def __init__(self, *a, fn: Callable[[], float] | None = None):
        super().__init__(*a)
        self.fn = fn
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = value

    def render(self) -> list[str]:
        if self.fn is not None:
            return [f"{self.name} {_num(self.fn())}"]
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, *a, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        super().__init__(*a)
        self.buckets = tuple(sorted(buckets))
        # per label set: [bucket counts..., +Inf count], sum
        self._values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def render(self) -> list[str]:
        lines = []
        for key, (counts, total) in sorted(self._values.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts):
                running += n
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Metrics:
    """Every series the runtime exports; `render()` is the /metrics body."""

    def __init__(self):
        self._lock = threading.Lock()
        self._all: list[_Metric] = []
        c, h = self._counter, self._histogram
        self.requests = c("tinygpt_requests_total", "HTTP requests by endpoint and status", ("endpoint", "status"))
        self.completions = c("tinygpt_completions_total", "chat completions by model and finish reason", ("model", "finish_reason"))
        self.prompt_tokens = c("tinygpt_prompt_tokens_total", "prompt tokens fed", ("model",))
        self.cached_tokens = c("tinygpt_cached_prompt_tokens_total", "prompt tokens served from the prefix cache", ("model",))
        self.completion_tokens = c("tinygpt_completion_tokens_total", "tokens sampled", ("model",))
        self.rejected = c("tinygpt_rejected_total", "requests refused before generation, by reason", ("reason",))
        self.decode_steps = c("tinygpt_decode_steps_total", "batched decode steps (tokens / steps = mean batch size)", ())
        # Where the model thread's time goes in decode steps: "prefill" of prompts joining
        # the batch, "launch" queueing the next step (async_eval; the compute itself on the
        # CPU backend), "wait" blocked on the device for this step's tokens, "step" the rest
        # of mlx-lm's step (graph building, per-sequence bookkeeping, batch joins/filters),
        # "tokens" the per-token work after it (detokenizing, tool calls, events).
        # Little "wait" and much "step" + "tokens" = host-bound.
        self.step_seconds = c("tinygpt_decode_step_seconds_total", "model-thread time in decode steps, by phase", ("phase",))
        # The model thread's CPU time over the same steps: wall time the phases add up to
        # beyond it was spent off the CPU (waiting for the GIL other threads held, or for
        # the device), not in the model thread's own work.
        self.step_cpu_seconds = c("tinygpt_decode_step_cpu_seconds_total", "model-thread CPU time in decode steps", ())
        self.latency = h("tinygpt_request_seconds", "chat completion latency, request to last token", ("model",))
        self.ttft = h("tinygpt_time_to_first_token_seconds", "request to first sampled token", ("model",))
        self.queue_wait = h("tinygpt_queue_wait_seconds", "time a request waited for a batch slot", ())
        self.constraint = h(
            "tinygpt_constraint_seconds", "grammar mask time per constrained token", (), buckets=FAST_BUCKETS
        )
        self.grammar_compile = h(
            "tinygpt_grammar_compile_seconds", "grammar compile time (a tool set or schema not cached yet)", (),
            buckets=COMPILE_BUCKETS,
        )
        self.tool_requests = c("tinygpt_tool_requests_total", "requests with tools, by tool mode (full or deferred)", ("mode",))
        self.schema_tokens = c("tinygpt_deferred_schema_tokens_total", "tool schema tokens fed after a deferred call's name", ())
        self.forced_tokens = c("tinygpt_forced_tokens_total", "tokens the grammar forced, fed without sampling", ())
        self.adapter_ops = h("tinygpt_adapter_op_seconds", "adapter load / swap / unload time", ("op",))
        self.recorded = c("tinygpt_trajectory_writes_total", "trajectory files written, by kind", ("kind",))
        self.recorder_errors = c("tinygpt_recorder_errors_total", "trajectory writes or hooks that failed", ())
        self.device = Gauge("tinygpt_device_info", "the device the model computes on (value 1)",
                            ("backend", "api", "name", "dtype"), self._lock)
        self._all.append(self.device)

    def gauge(self, name: str, help: str, fn: Callable[[], float]) -> Gauge:
        g = Gauge(name, help, (), self._lock, fn=fn)
        self._all.append(g)
        return g

    def _counter(self, name, help, labels) -> Counter:
        m = Counter(name, help, labels, self._lock)
        self._all.append(m)
        return m

    def _histogram(self, name, help, labels, buckets=LATENCY_BUCKETS) -> Histogram:
        m = Histogram(name, help, labels, self._lock, buckets=buckets)
        self._all.append(m)
        return m

    def render(self) -> str:
        lines: list[str] = []
        for m in self._all:
            # Gauges call back into the engine: read them outside the metrics lock.
            body = m.render() if isinstance(m, Gauge) else self._locked(m)
            lines += m.header() + body
        return "\n".join(lines) + "\n"

    def _locked(self, m: _Metric) -> list[str]:
        with self._lock:
            return m.render()
