"""Responses and Anthropic Messages vs chat completions: overhead and tool-call validity, in one run.

    python benchmarks/api_overhead.py                                   # the tiny test model
    python benchmarks/api_overhead.py --model smollm2-135m-instruct --rounds 3 --validity-schemas 0

Against one `tinygpt serve` subprocess (prefix cache off, so every request prefills the
same prompt; the client is this process):
- the same greedy request (system + user prompt) streamed through `/v1/chat/completions`,
  `/v1/responses` and `/v1/messages`, interleaved per round: time to the first content
  event (`--ttft-rounds` short requests), decode tok/s (first to last content event of
  `--tokens`), and the non-streaming wall time; each API's median against chat
  completions' median (ratio >= 1: as fast or faster). Same core, same prompt ids and
  same output tokens (checked): the ratio is the cost of the wire format.
- tool-call validity over the schema corpus (tests/data/schemas): each schema as the
  only tool, `required` (chat, Responses) / `any` (Messages), one call, sampled at
  temperature 1: the share of returned calls that parse and validate (formats included),
  and the answers cut off by `--validity-tokens` before their call was complete.
Prints one JSON document (last line).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtime_throughput import Server  # noqa: E402

SYSTEM = "You are a careful assistant. Answer with facts about cities, weather and travel."
USER = "Write a long, detailed travel guide to Lisbon: neighbourhoods, food, transport and day trips. " * 3
CORPUS = ROOT / "tests" / "data" / "schemas"


def sse(port: int, path: str, body: dict) -> tuple[float, list[float], dict]:
    """POST a streaming request: (start time, arrival times of content events, the final usage)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {resp.read()[:300]!r}")
    times, usage = [], {}
    for line in resp:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        kind = event.get("type") or event.get("object")
        if kind == "chat.completion.chunk":
            if event.get("usage"):
                usage = {"prompt": event["usage"]["prompt_tokens"], "output": event["usage"]["completion_tokens"]}
            if any(c["delta"].get("content") or c["delta"].get("tool_calls") for c in event["choices"]):
                times.append(time.perf_counter())
        elif kind in ("response.output_text.delta", "response.function_call_arguments.delta", "content_block_delta"):
            times.append(time.perf_counter())
        elif kind in ("response.completed", "response.incomplete"):
            u = event["response"]["usage"]
            usage = {"prompt": u["input_tokens"], "output": u["output_tokens"]}
        elif kind == "message_delta":
            u = event["usage"]
            usage = {"prompt": u["input_tokens"] + u["cache_read_input_tokens"], "output": u["output_tokens"]}
        elif kind in ("error", "response.failed"):
            raise RuntimeError(f"{path}: {event}")
    conn.close()
    return start, times, usage


def post(port: int, path: str, body: dict) -> tuple[float, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    wall = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {data}")
    return wall, data


def bodies(n: int) -> dict[str, tuple[str, dict]]:
    """The same request in each API's words (greedy, `n` tokens at most)."""
    return {
        "chat": ("/v1/chat/completions", {"model": "base", "max_tokens": n, "temperature": 0,
                                          "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]}),
        "responses": ("/v1/responses", {"model": "base", "max_output_tokens": n, "temperature": 0,
                                        "instructions": SYSTEM, "input": USER}),
        "messages": ("/v1/messages", {"model": "base", "max_tokens": n, "temperature": 0, "system": SYSTEM,
                                      "messages": [{"role": "user", "content": USER}]}),
    }


def _stream_body(api: str, body: dict) -> dict:
    return {**body, "stream": True, **({"stream_options": {"include_usage": True}} if api == "chat" else {})}


def ratios(samples: dict[str, list[float]], higher_is_better: bool) -> dict:
    """Per API: median, lower/upper quartile and the ratio of medians to chat's (>= 1: as good or better)."""
    out = {}
    ref = statistics.median(samples["chat"])
    for api, xs in samples.items():
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
        out[api] = {"median": med, "q1": q1, "q3": q3, "ratio": med / ref if higher_is_better else ref / med}
    return out


def overhead(server: Server, n: int, rounds: int, ttft_rounds: int) -> dict:
    """The same request through each API, interleaved round by round (drift hits all alike).

    TTFT: many short requests (2 tokens), the time to the first content event. Decode: `n`
    tokens, tok/s from the first to the last content event, and the non-streaming wall time.
    Medians, because single runs on a shared machine swing widely.
    """
    reqs = bodies(n)
    short = bodies(2)
    for api, (path, body) in reqs.items():  # warm-up
        sse(server.port, path, _stream_body(api, body))
    ttft: dict[str, list[float]] = {api: [] for api in reqs}
    for _ in range(ttft_rounds):
        for api, (path, body) in short.items():
            start, times, _ = sse(server.port, path, _stream_body(api, body))
            ttft[api].append(times[0] - start)
    tok_s: dict[str, list[float]] = {api: [] for api in reqs}
    wall: dict[str, list[float]] = {api: [] for api in reqs}
    seen: dict[str, set] = {api: set() for api in reqs}
    for _ in range(rounds):
        for api, (path, body) in reqs.items():
            start, times, usage = sse(server.port, path, _stream_body(api, body))
            tok_s[api].append((usage["output"] - 1) / (times[-1] - times[0]))
            seen[api].add((usage["prompt"], usage["output"]))
            wall[api].append(post(server.port, path, body)[0])
    return {
        "tokens": n, "rounds": rounds, "ttft_rounds": ttft_rounds,
        "prompt_and_output_tokens": {api: sorted(v) for api, v in seen.items()},
        "same_prompt_and_tokens": len({tuple(sorted(v)) for v in seen.values()}) == 1,
        "ttft_s": ratios(ttft, higher_is_better=False),
        "decode_tok_s": ratios(tok_s, higher_is_better=True),
        "wall_s": ratios(wall, higher_is_better=False),
    }


def validity(server: Server, limit: int, max_tokens: int) -> dict:
    from tests.test_grammar_sampling import assert_valid

    paths = sorted(CORPUS.glob("*.json"))[: limit or None]
    result = {api: {"requests": 0, "calls": 0, "valid": 0, "cut_off": 0, "failures": []}
              for api in ("chat", "responses", "messages")}
    for p in paths:
        tool = json.loads(p.read_text(encoding="utf-8"))
        fn = tool["function"]
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        ask = [{"role": "user", "content": f"Use the {fn['name']} tool."}]
        asks = {
            "chat": ("/v1/chat/completions", {"model": "base", "messages": ask, "max_tokens": max_tokens, "tools": [tool],
                                              "tool_choice": "required", "parallel_tool_calls": False}),
            "responses": ("/v1/responses", {"model": "base", "input": ask, "max_output_tokens": max_tokens,
                                            "tools": [{"type": "function", **fn}], "tool_choice": "required",
                                            "parallel_tool_calls": False}),
            "messages": ("/v1/messages", {"model": "base", "messages": ask, "max_tokens": max_tokens,
                                          "tools": [{"name": fn["name"], "description": fn.get("description", ""),
                                                     "input_schema": schema}],
                                          "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}),
        }
        for api, (path, body) in asks.items():
            _, data = post(server.port, path, body)
            if api == "chat":
                args = [c["function"]["arguments"] for c in data["choices"][0]["message"].get("tool_calls") or []]
                args = [json.loads(a) for a in args]
                cut = data["choices"][0]["finish_reason"] == "length"
            elif api == "responses":
                args = [json.loads(o["arguments"]) for o in data["output"] if o["type"] == "function_call"]
                cut = data["status"] == "incomplete"
            else:
                args = [b["input"] for b in data["content"] if b["type"] == "tool_use"]
                cut = data["stop_reason"] == "max_tokens"
            r = result[api]
            r["requests"] += 1
            # A call still being written at max_tokens is no call: counted apart, never as valid.
            r["cut_off"] += cut and not args
            r["calls"] += len(args)
            for value in args:
                try:
                    assert_valid(value, schema)
                    r["valid"] += 1
                except Exception as e:  # a validation error is a failure to count
                    r["failures"].append(f"{fn['name']}: {str(e)[:160]}")
            if not args and not cut:
                r["failures"].append(f"{fn['name']}: answered without a call")
    for r in result.values():
        # Of the calls returned, the share that validate; of the answers, the share that are one valid call.
        r["validity"] = r["valid"] / r["calls"] if r["calls"] else None
        r["answered_with_valid_call"] = r["valid"] / r["requests"] if r["requests"] else None
    result["schemas"] = len(paths)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or directory (default: build the tiny test model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=25, help="decode rounds (each API once per round)")
    parser.add_argument("--ttft-rounds", type=int, default=100, help="time-to-first-token rounds")
    parser.add_argument("--validity-schemas", type=int, default=-1, help="schemas to try (-1: all, 0: skip)")
    parser.add_argument("--validity-tokens", type=int, default=1000)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            from tinygpt.runtime.serving.app import resolve_model_dir

            model_dir = resolve_model_dir(args.model)
        else:
            from tests.tiny_model import build_tiny_model

            model_dir = build_tiny_model(tmp / "tiny")
        result: dict = {"model": str(args.model or "tiny test model")}
        server = Server(str(model_dir), tmp, "--prefix-cache-mb", "0")
        try:
            result["overhead"] = overhead(server, args.tokens, args.rounds, args.ttft_rounds)
            if args.validity_schemas:
                result["validity"] = validity(server, max(args.validity_schemas, 0), args.validity_tokens)
        finally:
            server.close()
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
