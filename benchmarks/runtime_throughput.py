"""Runtime server benchmark: one JSON document with every ratio measured in the same run.

    python benchmarks/runtime_throughput.py                      # the tiny test model
    python benchmarks/runtime_throughput.py --model smollm2-135m-instruct --out result.json

Measures, against a `tinygpt serve` subprocess on 127.0.0.1 (the client is this process):
- decode tok/s through the runtime (SSE, first to last token) ÷ mlx-lm's `stream_generate`
  on the same model, prompt and greedy settings, in this process; best of `--rounds`;
- time to first token of turn 5 of a conversation, prefix cache on vs off (a second server);
- specialist load, hot swap, and the cost of switching specialist between requests;
- aggregate tok/s with 1, 4 and 16 concurrent clients;
- constrained (tool_choice="required") ÷ unconstrained decode, when the grammar package is there.
The end-of-turn token is banned in both paths so every run decodes exactly `--tokens`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tinygpt.runtime  # noqa: E402,F401  (fast BLAS before mlx)

SERVER = """
import argparse, sys
from tinygpt.runtime.commands import serve
parser = argparse.ArgumentParser()
serve.configure(parser)
sys.exit(serve.run(parser.parse_args(sys.argv[1:])))
"""
PROMPT = "Summarize this article in three short sentences, please. " * 8
SYSTEM = "You are a careful assistant. " + "Answer with facts about cities, weather and travel. " * 30


class Server:
    """A `tinygpt serve` subprocess on a free port."""

    def __init__(self, model: str, tmp: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, "--model", model, "--port", "0", "--log-level", "WARNING",
             "--trajectories-dir", str(tmp / "traj"), "--admin-key", "bench", "--no-queue",
             "--adapter-dir", str(tmp), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request(method, path, json.dumps(body) if body else None,
                     {"Content-Type": "application/json", "Authorization": "Bearer bench"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {data}")
        return data

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def timed(self, body: dict) -> tuple[float, dict]:
        """A non-streaming completion: (decode tok/s from its Server-Timing header, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        timing = resp.getheader("Server-Timing", "")
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status} {data}")
        decode_ms = float(dict(p.strip().split(";dur=") for p in timing.split(","))["decode"])
        tokens = data["usage"]["completion_tokens"]
        return (tokens - 1) / (decode_ms / 1e3), data

    def stream(self, body: dict) -> tuple[list[float], str, dict]:
        """Arrival times of token-bearing chunks, the text, and the usage."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("POST", "/v1/chat/completions",
                     json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        times, text, usage = [], [], {}
        for line in resp:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                if delta.get("content") or delta.get("tool_calls"):
                    times.append(time.perf_counter())
                    text.append(delta.get("content") or json.dumps(delta.get("tool_calls")))
        conn.close()
        return times, "".join(text), usage


def ban_eos(tokenizer) -> dict[str, float]:
    return {str(t): -100.0 for t in tokenizer.eos_token_ids}


def baseline_decode(model, tokenizer, prompt_ids: list[int], n: int) -> float:
    """mlx-lm's stream_generate, greedy, EOS banned: tok/s from first to last token."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_logits_processors

    processors = make_logits_processors(logit_bias={t: -100.0 for t in tokenizer.eos_token_ids})
    times = []
    for _ in stream_generate(model, tokenizer, mx.array(prompt_ids), max_tokens=n, logits_processors=processors):
        times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


def runtime_decode(server: Server, messages: list[dict], n: int, ban: dict, **extra) -> tuple[float, int]:
    start = time.perf_counter()
    times, _, usage = server.stream({"model": "base", "messages": messages, "max_tokens": n, "temperature": 0,
                                     "logit_bias": ban, **extra})
    tokens = usage["completion_tokens"]
    # Chunks can carry several tokens (held-back text); rate over the tokens after the first.
    return (tokens - 1) / (times[-1] - times[0]), times[0] - start


def conversation_ttft(server: Server, ban: dict, turns: int = 5) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    out = {}
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Turn {turn}: tell me about the weather in Berlin tomorrow."})
        start = time.perf_counter()
        times, text, usage = server.stream({"model": "base", "messages": messages, "max_tokens": 48,
                                            "temperature": 0, "logit_bias": ban})
        out = {"ttft_s": times[0] - start, "prompt_tokens": usage["prompt_tokens"],
               "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)}
        messages.append({"role": "assistant", "content": text})
    return out


def concurrency(server: Server, clients: int, per_client: int, n: int, ban: dict) -> dict:
    tokens = []

    def client(i: int) -> None:
        for j in range(per_client):
            body = {"model": "base", "max_tokens": n, "temperature": 0, "logit_bias": ban,
                    "messages": [{"role": "user", "content": f"Client {i} request {j}: {PROMPT[:80]}"}]}
            tokens.append(server.request("POST", "/v1/chat/completions", body)["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(tokens), "tokens": sum(tokens), "seconds": wall,
            "tok_per_s": sum(tokens) / wall}


def adapter_timings(server: Server, model_dir: Path, tmp: Path, ban: dict) -> dict:
    from tests.serving_support import write_lora_adapter

    v1 = write_lora_adapter(tmp / "a1", model_dir, seed=1, rank=8)
    v2 = write_lora_adapter(tmp / "a2", model_dir, seed=2, rank=8)
    load = server.request("POST", "/admin/adapters", {"name": "spec", "path": str(v1), "version": "1"})
    swap = server.request("POST", "/admin/adapters", {"name": "spec", "path": str(v2), "version": "2"})

    def latency(models: list[str]) -> float:
        spent = []
        for m in models:
            start = time.perf_counter()
            server.request("POST", "/v1/chat/completions", {"model": m, "max_tokens": 4, "temperature": 0,
                                                            "logit_bias": ban,
                                                            "messages": [{"role": "user", "content": PROMPT}]})
            spent.append(time.perf_counter() - start)
        return statistics.median(spent)

    same = latency(["spec"] * 12)
    alternating = latency(["spec", "base"] * 6)
    return {
        "rank": 8,
        "load_s": load["seconds"], "load_model_thread_s": load["model_thread_seconds"],
        "hot_swap_s": swap["seconds"], "hot_swap_model_thread_s": swap["model_thread_seconds"],
        "request_latency_same_specialist_s": same, "request_latency_alternating_s": alternating,
        "switch_cost_s": alternating - same,
    }


NOTE_TOOL = {
    "type": "function",
    "function": {
        "name": "write_note",
        "description": "Save a note with a title, a body and tags.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "body": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "priority": {"type": "string", "enum": ["low", "normal", "high"]},
            },
            "required": ["title", "body"],
        },
    },
}


def mask_quantiles(metrics_before: str, metrics_after: str) -> dict:
    """p50 / p99 upper bounds of the per-token mask time, from /metrics histogram buckets."""

    def buckets(text: str) -> dict[str, int]:
        out = {}
        for line in text.splitlines():
            if line.startswith("tinygpt_constraint_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                out[le] = int(line.rsplit(" ", 1)[1])
        return out

    before, after = buckets(metrics_before), buckets(metrics_after)
    counts = [(float(le), after[le] - before.get(le, 0)) for le in after]
    counts.sort()
    total = counts[-1][1] if counts else 0
    if not total:
        return {"tokens": 0}
    quantile = lambda q: next(le for le, n in counts if n >= q * total)  # noqa: E731
    return {"tokens": total, "p50_at_most_s": quantile(0.5), "p99_at_most_s": quantile(0.99)}


def constrained(server: Server, n: int, ban: dict) -> dict:
    """Tool call with tool_choice="required" vs free text: decode rate from Server-Timing."""
    messages = [{"role": "user", "content": "Write a note about the meeting moving to Thursday. " + PROMPT}]
    free, con = [], []
    before = server.metrics()
    for _ in range(3):
        free.append(server.timed({"model": "base", "messages": messages, "max_tokens": n, "temperature": 0,
                                  "logit_bias": ban})[0])
        rate, body = server.timed({"model": "base", "messages": messages, "max_tokens": n, "temperature": 0,
                                   "tools": [NOTE_TOOL], "tool_choice": "required"})
        con.append(rate)
    calls = body["choices"][0]["message"].get("tool_calls") or []
    return {
        "available": True,
        "unconstrained_tok_s": max(free),
        "constrained_tok_s": max(con),
        "ratio": max(con) / max(free),
        "constrained_tokens": body["usage"]["completion_tokens"],
        "finish_reason": body["choices"][0]["finish_reason"],
        "tool_calls": len(calls),
        "mask_time": mask_quantiles(before, server.metrics()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or directory (default: build the tiny test model)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency-tokens", type=int, default=64, help="max_tokens of each concurrent request")
    parser.add_argument("--parts", default="decode,ttft,adapters,concurrency,constrained",
                        help="comma-separated parts to run (default: all)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import mlx.core as mx
    import mlx_lm

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            from tinygpt.runtime.serving.app import resolve_model_dir

            model_dir = resolve_model_dir(args.model)
        else:
            from tests.tiny_model import build_tiny_model

            model_dir = build_tiny_model(tmp / "tiny")
        model, tokenizer = mlx_lm.load(str(model_dir))
        ban = ban_eos(tokenizer)
        messages = [{"role": "user", "content": PROMPT}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)

        parts = set(args.parts.split(","))
        result: dict = {"model": str(args.model or "tiny test model")}
        server = Server(str(model_dir), tmp)
        try:
            if "decode" in parts:
                base_runs, rt_runs, ttfts = [], [], []
                for _ in range(args.rounds):
                    base_runs.append(baseline_decode(model, tokenizer, prompt_ids, args.tokens))
                    tps, ttft = runtime_decode(server, messages, args.tokens, ban)
                    rt_runs.append(tps)
                    ttfts.append(ttft)
                result["decode"] = {"tokens": args.tokens, "prompt_tokens": len(prompt_ids),
                                    "mlx_lm_tok_s": max(base_runs), "runtime_tok_s": max(rt_runs),
                                    "ratio": max(rt_runs) / max(base_runs), "runtime_ttft_s": min(ttfts),
                                    "all_mlx_lm": base_runs, "all_runtime": rt_runs}
            del model
            mx.clear_cache()
            if "ttft" in parts:
                result["ttft_turn5"] = {"with_prefix_cache": conversation_ttft(server, ban)}
            if "adapters" in parts:
                result["adapters"] = adapter_timings(server, model_dir, tmp, ban)
            if "concurrency" in parts:
                result["concurrency"] = [concurrency(server, c, max(1, 16 // c), args.concurrency_tokens, ban)
                                         for c in (1, 4, 16)]
            if "constrained" in parts:
                result["constrained"] = constrained(server, args.tokens, ban)
        finally:
            server.close()
        if "ttft" in parts:
            cold = Server(str(model_dir), tmp, "--prefix-cache-mb", "0")
            try:
                uncached = conversation_ttft(cold, ban)
            finally:
                cold.close()
            ttft = result["ttft_turn5"]
            ttft["without_prefix_cache"] = uncached
            ttft["speedup"] = uncached["ttft_s"] / ttft["with_prefix_cache"]["ttft_s"]

    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "mlx": mx.__version__,
                         "blas": tinygpt.runtime.blas.blas_info().get("active")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
