"""Where the runtime's model thread spends a decode step under many clients (cProfile).

    python benchmarks/profile_serving.py --model-dir DIR [--clients 128] [--tokens 128]

Runs the runtime in this process with its defaults, profiles the model thread while
`--clients` concurrent non-streaming requests decode `--tokens` tokens each (EOS banned),
and prints the step count, the wall time, the split of the model thread's time between
mlx-lm's step (`gen.next`, graph building, kernel launches and the wait for the device)
and the per-token work after it, and the top functions by own time. Last line: JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tinygpt.runtime  # noqa: E402,F401


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--clients", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--max-batch", type=int, help="default: the device's (16 on a CPU, 256 on a GPU)")
    p.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    p.add_argument("--stream", action="store_true", help="SSE clients instead of whole responses")
    args = p.parse_args()

    from gpu_suite import random_weights
    from openai import OpenAI

    from tinygpt.runtime.serving import engine as engine_mod
    from tinygpt.runtime.serving.app import Runtime, ServerConfig

    tmp = Path(tempfile.mkdtemp())
    model_dir = tmp / "model"
    import shutil

    shutil.copytree(args.model_dir, model_dir)
    random_weights(model_dir)
    prof = cProfile.Profile()
    split = {"next_s": 0.0, "tokens_s": 0.0, "steps": 0}
    orig_run, orig_on_token = engine_mod.Engine._run, engine_mod.Engine._on_token

    def run(self):
        prof.enable()
        try:
            orig_run(self)
        finally:
            prof.disable()

    def on_token(self, *a):
        t = time.perf_counter()
        orig_on_token(self, *a)
        split["tokens_s"] += time.perf_counter() - t

    engine_mod.Engine._run, engine_mod.Engine._on_token = run, on_token
    rt = Runtime(ServerConfig(model=str(model_dir), port=0, trajectories_dir=str(tmp / "traj"),
                              max_batch=args.max_batch, max_queue=4 * args.clients)).start()
    try:
        client = OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}

        def one(i: int) -> None:
            out = client.chat.completions.create(model="base", max_tokens=args.tokens, temperature=0, logit_bias=ban,
                                                 stream=args.stream,
                                                 messages=[{"role": "user", "content": f"client {i}: the weather in town"}])
            if args.stream:
                for _ in out:
                    pass

        for n in (16, args.clients):  # the first round warms the shapes up
            steps0 = rt.metrics.decode_steps.value()
            split.update(tokens_s=0.0)
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            steps = rt.metrics.decode_steps.value() - steps0
    finally:
        rt.stop()
    stats = pstats.Stats(prof)
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats(args.sort).print_stats(40)
    print(out.getvalue()[:9000])
    result = {"clients": args.clients, "tokens": args.clients * args.tokens, "wall_s": wall, "steps": steps,
              "tok_per_s": args.clients * args.tokens / wall, "ms_per_step": 1e3 * wall / max(steps, 1),
              "on_token_s_last_round": split["tokens_s"], "device": rt.engine.device.describe()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
