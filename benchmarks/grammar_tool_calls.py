"""Tool calls on the real model, constrained vs free (JSON, last line).

    python benchmarks/grammar_tool_calls.py [--model smollm2-135m-instruct] [--rounds 3]

Against a `tinygpt serve` subprocess: for a few tool sets and tool_choice modes, the time
to a complete tool call (request to response) and the decode rate of the constrained
answer (completion tokens, forced ones included, over Server-Timing's decode time),
divided by the free decode rate of the same prompt (greedy, EOS banned, same length).
Forced tokens (fed in one step) make the constrained rate higher than free decoding.
Then the hostile pattern `^(a|b)*a(a|b){17}$` as a response_format (max_tokens 4): the
time to its answer (a 200 or a 400), and the decode rate of a free request running beside
it, divided by that request's rate alone.
Run it with PYTHONPATH pointing at an older checkout to measure that version the same way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = """
import argparse, sys
from tinygpt.runtime.commands import serve
parser = argparse.ArgumentParser()
serve.configure(parser)
sys.exit(serve.run(parser.parse_args(sys.argv[1:])))
"""
USER_INFO = {"type": "function", "function": {"name": "get_user_info", "description": "Look up a user by id.", "parameters": {
    "type": "object", "properties": {"user_id": {"type": "integer", "description": "The user's id."},
                                     "special": {"type": "string", "description": "Any special information.", "default": "none"}},
    "required": ["user_id"]}}}
WEATHER = {"type": "function", "function": {"name": "get_current_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"location": {"type": "string", "description": "City and state, e.g. San Francisco, CA"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["location", "unit"]}}}
CASES = {
    "named_weather": dict(messages=[{"role": "user", "content": "What's the weather like in Boston, in fahrenheit?"}],
                          tools=[WEATHER, USER_INFO], tool_choice={"type": "function", "function": {"name": "get_current_weather"}}),
    "required_user": dict(messages=[{"role": "user", "content": "Get the details of user 7890, who likes black coffee."}],
                          tools=[USER_INFO, WEATHER], tool_choice="required"),
    "required_parallel_default": dict(messages=[{"role": "user", "content": "Get the details of user 7890."}],
                                      tools=[USER_INFO], tool_choice="required"),
}


class Server:
    def __init__(self, model: str, tmp: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, "--model", model, "--port", "0", "--log-level", "WARNING",
             "--trajectories-dir", str(tmp / "traj"), "--no-queue"],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def post(self, body: dict, allow_error: bool = False, timeout: float = 600) -> tuple[float, float, dict]:
        """(wall seconds, decode seconds from Server-Timing, response body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        wall = time.perf_counter() - start
        timing = resp.getheader("Server-Timing", "")
        conn.close()
        if resp.status != 200:
            if allow_error:
                return wall, float("nan"), {"status": resp.status, **data}
            raise RuntimeError(f"{resp.status} {data}")
        decode_ms = float(dict(p.strip().split(";dur=") for p in timing.split(","))["decode"])
        return wall, decode_ms / 1e3, data


def hostile(server: Server, timeout: float, k: int = 17) -> dict:
    def body_with(string: dict) -> dict:
        schema = {"type": "object", "properties": {"s": string}, "required": ["s"]}
        return {"model": "base", "messages": [{"role": "user", "content": "Write a string."}], "max_tokens": 4,
                "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": schema}}}

    def pattern(n: int) -> dict:
        return body_with({"type": "string", "pattern": f"^(a|b)*a(a|b){{{n}}}$"})

    # Alone, cold (this k was never compiled), against the control: the same request with a
    # plain string (same prompt, same 4 tokens to decode): alone_s - control_s is what the
    # pattern costs end to end. Then a fresh k + 1 beside a decoding request.
    control = min(server.post(body_with({"type": "string"}), allow_error=True)[0] for _ in range(3))
    alone_wall = server.post(pattern(k), allow_error=True, timeout=timeout)[0]
    body = pattern(k + 1)
    free = {"model": "base", "messages": [{"role": "user", "content": "Tell me about Paris."}], "max_tokens": 24,
            "temperature": 0, "logit_bias": {"2": -100}}
    _, alone_decode, alone = server.post(free)
    beside: list = []
    thread = threading.Thread(target=lambda: beside.append(server.post(free)))
    thread.start()
    time.sleep(0.2)  # the free request is decoding when the hostile one arrives
    try:
        wall, _, answer = server.post(body, allow_error=True, timeout=timeout)
    except TimeoutError:
        thread.join()
        return {"answer_s": None, "status": f"no answer in {timeout:.0f} s"}
    thread.join()
    _, beside_decode, _ = beside[0]
    return {
        "k": k,
        "alone_s": round(alone_wall, 4),
        "control_s": round(control, 4),
        "pattern_cost_s": round(alone_wall - control, 4),
        "beside_answer_s": round(wall, 4),
        "status": answer.get("status", 200),
        "beside_over_alone_decode_rate": round(alone_decode / beside_decode, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--hostile-timeout", type=float, default=600, help="seconds to wait for the hostile request")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile-pattern request")
    parser.add_argument("--only-hostile", action="store_true", help="only the hostile-pattern requests (k = 17, 24, 40)")
    args = parser.parse_args(argv)
    from tinygpt.runtime.grammar import build_constraint

    report = {"code": str(Path(sys.modules[build_constraint.__module__].__file__).parent), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.model, Path(tmp))
        try:
            server.post({"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            for name, case in ({} if args.only_hostile else CASES).items():
                walls, rates, free_rates, tokens, calls, finish, cold = [], [], [], [], [], None, None
                for i in range(args.rounds + 1):
                    wall, decode, body = server.post({"model": "base", "temperature": 0, "max_tokens": args.max_tokens, **case})
                    n = body["usage"]["completion_tokens"]
                    # Free decoding of the same prompt and length, EOS banned.
                    _, free_decode, free = server.post({"model": "base", "temperature": 0, "max_tokens": n,
                                                        "messages": case["messages"], "logit_bias": {"2": -100}})
                    if i == 0:
                        cold = wall  # the first round compiles the grammar (reported apart)
                        continue
                    walls.append(wall)
                    rates.append((n - 1) / decode if decode > 0 else float("nan"))
                    free_rates.append((free["usage"]["completion_tokens"] - 1) / free_decode)
                    tokens.append(n)
                    message = body["choices"][0]["message"]
                    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
                    finish = body["choices"][0]["finish_reason"]
                rate, free_rate = statistics.median(rates), statistics.median(free_rates)
                report["cases"][name] = {
                    "time_to_complete_call_s": round(statistics.median(walls), 3),
                    "first_request_s": round(cold, 3),
                    "completion_tokens": statistics.median(tokens),
                    "constrained_tok_s": round(rate, 2),
                    "free_tok_s": round(free_rate, 2),
                    "ratio": round(rate / free_rate, 3),
                    "finish_reason": finish,
                    "calls": calls,
                }
            if args.only_hostile:
                report["hostile"] = [hostile(server, args.hostile_timeout, k) for k in (17, 24, 40)]
            elif not args.no_hostile:
                report["hostile"] = hostile(server, args.hostile_timeout)
        finally:
            server.close()
    if report["cases"]:
        report["ratio_min"] = min(c["ratio"] for c in report["cases"].values())
    report["load_average"] = list(os.getloadavg())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
