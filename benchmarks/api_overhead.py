"""Responses and Anthropic Messages vs chat completions: overhead and tool-call validity, in one run.

    python benchmarks/api_overhead.py                                   # the tiny test model
    python benchmarks/api_overhead.py --model smollm2-135m-instruct --rounds 3 --validity-schemas 0

Against one `tinygpt serve` subprocess (prefix cache off, so every request prefills the
same prompt; the client is this process):
- the same greedy request (system + user prompt, `--tokens` max) streamed through
  `/v1/chat/completions`, `/v1/responses` and `/v1/messages`, interleaved per round:
  decode tok/s (first to last content event) and time to first content event; each
  API's median ÷ chat completions' median. Same core, same prompt ids (checked), same
  tokens: the ratio is the cost of the wire format. Also the non-streaming wall time.
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


def overhead(server: Server, n: int, rounds: int) -> dict:
    reqs = bodies(n)
    runs: dict[str, dict[str, list]] = {api: {"tok_s": [], "ttft_s": [], "wall_s": [], "tokens": [], "prompt": []} for api in reqs}
    for api, (path, body) in reqs.items():  # warm-up: grammar-free path, allocator, detokenizer
        sse(server.port, path, {**body, "stream": True, **({"stream_options": {"include_usage": True}} if api == "chat" else {})})
    for _ in range(rounds):
        for api, (path, body) in reqs.items():
            extra = {"stream_options": {"include_usage": True}} if api == "chat" else {}
            start, times, usage = sse(server.port, path, {**body, "stream": True, **extra})
            r = runs[api]
            r["ttft_s"].append(times[0] - start)
            r["tok_s"].append((usage["output"] - 1) / (times[-1] - times[0]))
            r["tokens"].append(usage["output"])
            r["prompt"].append(usage["prompt"])
            r["wall_s"].append(post(server.port, path, body)[0])
    out: dict = {"tokens": n, "rounds": rounds}
    # The machine is shared, so single runs swing widely: best-of (max tok/s, min time) is the
    # primary figure, as in runtime_throughput.py; medians are kept beside it.
    best = {"tok_s": max, "ttft_s": min, "wall_s": min}
    ref_best = {k: f(runs["chat"][k]) for k, f in best.items()}
    ref_med = {k: statistics.median(runs["chat"][k]) for k in best}
    for api, r in runs.items():
        top = {k: f(r[k]) for k, f in best.items()}
        med = {k: statistics.median(r[k]) for k in best}
        out[api] = {
            "tok_s": top["tok_s"], "ttft_s": top["ttft_s"], "wall_s": top["wall_s"],
            "output_tokens": sorted(set(r["tokens"])), "prompt_tokens": sorted(set(r["prompt"])),
            # >= 1 is as good as chat completions: throughput up, time to first token / wall down.
            "tok_s_ratio": top["tok_s"] / ref_best["tok_s"], "ttft_ratio": ref_best["ttft_s"] / top["ttft_s"],
            "wall_ratio": ref_best["wall_s"] / top["wall_s"],
            "median": {"tok_s": med["tok_s"], "ttft_s": med["ttft_s"], "wall_s": med["wall_s"],
                       "tok_s_ratio": med["tok_s"] / ref_med["tok_s"], "ttft_ratio": ref_med["ttft_s"] / med["ttft_s"],
                       "wall_ratio": ref_med["wall_s"] / med["wall_s"]},
            "all_tok_s": r["tok_s"], "all_ttft_s": r["ttft_s"],
        }
    out["same_prompt_and_tokens"] = len({(tuple(r["prompt"]), tuple(r["tokens"])) for r in runs.values()}) == 1
    return out


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
    parser.add_argument("--rounds", type=int, default=25)
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
            result["overhead"] = overhead(server, args.tokens, args.rounds)
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
