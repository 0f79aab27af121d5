"""Where the runtime's model thread spends a decode step under many clients.

    python benchmarks/profile_serving.py --model-dir DIR [--clients 128] [--tokens 128] [--no-cprofile]

Runs the runtime in this process with its defaults (a directory without weights gets
random ones of its config's shape) and decodes `--tokens` tokens (EOS banned) for
`--clients` concurrent requests, three ways: through HTTP (the official openai client,
whole responses or `--stream`), straight into the engine (the same prompts as
`GenRequest`s: no HTTP, JSON, templating or recording), and both again under cProfile
(the model thread's decode steps only). Each round prints tok/s, the mean batch,
the wall time per step and the model thread's time per step by phase, with its CPU time
("cpu"): phases that add up to more than "cpu" spent the difference off the CPU, waiting
for the GIL or the device. HTTP vs direct tells the server's cost from the engine's.
Last line: JSON.
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


PHASES = ("launch", "wait", "step", "tokens", "prefill")


def snapshot(metrics) -> dict[str, float]:
    out = {p: metrics.step_seconds.value(phase=p) for p in PHASES}
    out["cpu"] = metrics.step_cpu_seconds.value()
    out["steps"] = metrics.decode_steps.value()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--clients", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--max-batch", type=int, help="default: the device's (16 on a CPU, 256 on a GPU)")
    p.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    p.add_argument("--stream", action="store_true", help="SSE clients instead of whole responses")
    p.add_argument("--no-cprofile", action="store_true", help="time the phases only (cProfile slows Python ~2x)")
    args = p.parse_args()

    from gpu_suite import random_weights
    from openai import OpenAI

    from tinygpt.runtime.serving import engine as engine_mod
    from tinygpt.runtime.serving.app import Runtime, ServerConfig
    from tinygpt.runtime.serving.events import Done, GenRequest

    tmp = Path(tempfile.mkdtemp())
    model_dir = tmp / "model"
    import shutil

    shutil.copytree(args.model_dir, model_dir)
    if not any(model_dir.glob("*.safetensors")):
        random_weights(model_dir)
    profiles: dict[str, cProfile.Profile] = {}
    profiling: dict = {"on": None}
    orig_step = engine_mod.Engine._step

    def step(self):
        prof = profiles.get(profiling["on"])
        if prof is not None:
            prof.enable()
            try:
                orig_step(self)
            finally:
                prof.disable()
        else:
            orig_step(self)

    engine_mod.Engine._step = step
    rt = Runtime(ServerConfig(model=str(model_dir), port=0, trajectories_dir=str(tmp / "traj"),
                              max_batch=args.max_batch, max_queue=4 * args.clients)).start()
    rounds = {}
    try:
        client = OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        tok = rt.engine.tokenizer
        eos = list(tok.eos_token_ids)
        ban = {str(t): -100 for t in eos}

        def http(i: int) -> None:
            out = client.chat.completions.create(model="base", max_tokens=args.tokens, temperature=0, logit_bias=ban,
                                                 stream=args.stream,
                                                 messages=[{"role": "user", "content": f"{tag['round']} client {i}: the weather in town"}])
            if args.stream:
                for _ in out:
                    pass

        def direct(i: int) -> None:
            # The engine alone: the same request without HTTP, JSON, templating or recording.
            ids = tok.apply_chat_template([{"role": "user", "content": f"{tag['round']} client {i}: the weather in town"}],
                                          add_generation_prompt=True)
            key, _ = rt.engine.registry.acquire("base")
            req = GenRequest(id=f"d{i}", key=key, model="base", prompt_ids=list(ids), max_tokens=args.tokens,
                             temperature=0.0, logit_bias={t: -100.0 for t in eos})
            rt.engine.submit(req)
            while not isinstance(req.events.get(), Done):
                pass

        # Each round's prompts are its own: no round reuses another's prefix cache entries.
        tag = {"round": ""}

        def run(name: str, fn, n: int, profile: bool = False) -> None:
            tag["round"] = name
            before = snapshot(rt.metrics)
            threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
            if profile:
                profiles[name] = cProfile.Profile()
            profiling["on"] = name if profile else None
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            profiling["on"] = None
            after = snapshot(rt.metrics)
            d = {k: after[k] - before[k] for k in after}
            steps = max(d.pop("steps"), 1)
            rounds[name] = {"clients": n, "wall_s": wall, "steps": steps, "tok_per_s": n * args.tokens / wall,
                            "mean_batch": n * args.tokens / steps, "ms_per_step": 1e3 * wall / steps,
                            "model_thread_ms_per_step": {k: 1e3 * v / steps for k, v in d.items()}}
            print(name, json.dumps(rounds[name]), flush=True)

        run("warm", http, 16)
        # The first rounds at this many clients meet new batch shapes; the next ones show
        # what is left once they are warm.
        run("first_direct", direct, args.clients)
        run("first_http", http, args.clients)
        run("http", http, args.clients)
        run("direct", direct, args.clients)
        if not args.no_cprofile:
            run("direct_cprofile", direct, args.clients, profile=True)
            run("http_cprofile", http, args.clients, profile=True)
    finally:
        rt.stop()
    for name, prof in profiles.items():
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats(args.sort).print_stats(40)
        print(f"== {name}: the model thread's decode steps under cProfile\n" + out.getvalue()[:10000])
    result = {"clients": args.clients, "tokens": args.tokens, "rounds": rounds, "device": rt.engine.device.describe()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
