"""Fuzz a `tinygpt serve` process: hostile requests in bulk, then check it still serves.

    python benchmarks/http_fuzz.py                        # 2,500 requests, the tiny test model
    python benchmarks/http_fuzz.py --requests 5000 --model smollm2-135m-instruct

Starts `tinygpt serve` (no key, loopback, the defaults a user gets) as a subprocess, sends
`--requests` cases from tests/fuzz_http.py (malformed JSON, wrong types, huge and deeply
nested bodies, bad Host / Origin / content type / length, slow clients, hang-ups,
mid-stream disconnects, odd paths, valid requests between), then:
- a valid request through the official `openai` client must be answered;
- the server must stop cleanly on SIGTERM, its log must hold no traceback;
- every trajectory it recorded must decode strictly, and every trajectory id a 200 named
  must be among them.
Reference in the same run: the median latency of valid requests before the fuzz vs after
it (`latency_ratio` near 1: nothing leaked or wedged). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import argparse, sys
from tinygpt.runtime.commands import serve
parser = argparse.ArgumentParser()
serve.configure(parser)
sys.exit(serve.run(parser.parse_args(sys.argv[1:])))
"""


def valid_latency(port: int, n: int) -> float:
    """Median seconds of `n` valid chat requests (each its own connection, like the fuzz cases)."""
    from tests.fuzz_http import HELLO, Case, request, send

    spent = []
    for i in range(n):
        body = json.dumps({**HELLO, "messages": [{"role": "user", "content": f"latency probe {i}"}]}).encode()
        start = time.perf_counter()
        status, _ = send(Case("valid", request("POST", "/v1/chat/completions", body, port=port), expect="200"), port)
        spent.append(time.perf_counter() - start)
        assert status == 200, status
    return statistics.median(spent)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2500)
    p.add_argument("--model", help="model name or directory (default: a tiny random model built here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-body-kb", type=int, default=256,
                   help="the server's body limit (serve --max-body-kb); 'huge' cases go just under and over it")
    p.add_argument("--probes", type=int, default=20, help="valid requests timed before and after")
    args = p.parse_args()

    import openai

    from tests.fuzz_http import check_trajectories, run_fuzz

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model is None:
            from tests.tiny_model import build_tiny_model

            model = str(build_tiny_model(tmp / "model"))
        else:
            model = args.model
        traj, log = tmp / "traj", tmp / "server.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, "--model", model, "--port", "0", "--trajectories-dir", str(traj),
                 "--no-queue", "--max-tokens", "8", "--log-level", "INFO", "--max-body-kb", str(args.max_body_kb)],
                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
            )
        line = proc.stdout.readline()
        if "http://127.0.0.1:" not in line:
            raise RuntimeError(f"server did not start: {line!r}\n{log.read_text()}")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        try:
            before = valid_latency(port, args.probes)
            tally = run_fuzz(port, args.requests, seed=args.seed, max_body=args.max_body_kb << 10)
            after = valid_latency(port, args.probes)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "still there?"}],
                                                   max_tokens=3)
            served_after = reply.choices[0].finish_reason in ("stop", "length")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=300)
        text = log.read_text()
        recorded = check_trajectories(traj, tally.trajectories)
        result = {
            "fuzz": tally.as_dict(),
            "server_5xx": sum(v for k, v in tally.statuses.items() if k >= 500 and k != 505),
            "unexpected_examples": tally.unexpected[:5],
            "valid_request_served_after": served_after,
            "exit_code": code,
            "tracebacks_in_log": text.count("Traceback"),
            "trajectories_recorded_and_decoded": recorded,
            "trajectory_ids_answered": len(tally.trajectories),
            "valid_p50_before_s": before,
            "valid_p50_after_s": after,
            "latency_ratio": after / before,
            "requests_per_s": tally.requests / tally.seconds,
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
        }
    print(json.dumps(result))
    ok = (not tally.unexpected and result["server_5xx"] == 0 and served_after and code == 0
          and result["tracebacks_in_log"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
