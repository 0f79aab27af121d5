"""Hot-swap benchmark: how long swapping a rank-8 LoRA specialist takes, and that the base is never reloaded.

    python benchmarks/hotswap_swap.py                     # the tiny test model (+ the default model if cached)
    python benchmarks/hotswap_swap.py --models tiny --rounds 20 --out swap.json

Prints one JSON document. Per model, in one process (the runtime in a thread, as in `tinygpt up`):
- `direct`: `Runtime.load_adapter` alternating between two published versions (each swap
  builds the new version's module tree and retires the old one): total seconds, the
  part spent on the model thread (the pause every in-flight request sees), and the
  process's CPU seconds (what the swap costs without other jobs competing for the cores);
- `pinned`: the production path, the pin file changed and `Swapper.sync` run: resolve +
  verify the cached package (sha256 of every file) + swap, and the swap's share of it;
- `under_load`: direct swaps while `--clients` clients stream completions (the swap
  waits for the model thread to finish its current decode step);
- `base_reloaded`: whether the base model object or any of its weight arrays changed
  identity across all swaps (must be false).
Goal: a swap under 50 ms: `goal_met_wall` compares the median direct swap's wall time,
`goal_met_cpu` its CPU time (the number that holds on a machine other jobs do not share).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tinygpt.runtime  # noqa: E402,F401  (fast BLAS before mlx)

DEFAULT_MODEL = Path.home() / ".cache" / "tinygpt" / "models" / "smollm2-135m-instruct"
GOAL_S = 0.050


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {
        "n": len(xs),
        "median_ms": round(1e3 * statistics.median(xs), 2),
        "p90_ms": round(1e3 * xs[min(len(xs) - 1, int(0.9 * len(xs)))], 2),
        "max_ms": round(1e3 * xs[-1], 2),
    }


def base_identity(rt) -> tuple[int, dict[str, int]]:
    from mlx.utils import tree_flatten

    from tinygpt.runtime.serving.adapters import BASE

    base = rt.engine._models[BASE]
    return id(base), {k: id(v) for k, v in tree_flatten(base.parameters())}


def stream_until(port: int, stop: threading.Event, ban: dict, counts: list[int], errors: list[str]) -> None:
    body = json.dumps({"model": "spec", "messages": [{"role": "user", "content": "Tell me about the weather in Paris."}],
                       "max_tokens": 16, "temperature": 0, "stream": True, "logit_bias": ban})
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read().decode()
            if resp.status != 200 or "[DONE]" not in data or '"error"' in data:
                errors.append(f"{resp.status}: {data[:200]}")
            counts.append(1)
        except OSError as e:
            errors.append(repr(e))
        finally:
            conn.close()


def measure(model_dir: Path, tmp: Path, rounds: int, clients: int) -> dict:
    from tests.serving_support import running, write_lora_adapter
    from tinygpt.runtime.registry.publish import publish
    from tinygpt.runtime.registry.swap import Swapper
    from tinygpt.runtime.serving.app import model_digest

    tmp.mkdir(parents=True, exist_ok=True)
    digest = model_digest(model_dir)
    reg = tmp / "reg"
    paths = {}
    for v in ("1", "2"):
        adapter = write_lora_adapter(tmp / f"adapter{v}", model_dir, seed=int(v), rank=8)
        paths[v] = publish(adapter, reg, name="spec", version=v, base_model=model_dir.name, base_digest=digest).path
    project = tmp / "tinygpt.project.json"

    def pin(version: str) -> None:
        project.write_text(json.dumps({"name": "bench", "specialists": [{"name": "spec", "version": version}],
                                       "registries": ["reg"]}))

    out: dict = {"model": str(model_dir), "adapter_mb": round(os.path.getsize(Path(paths["1"]) / "adapters.safetensors") / 2**20, 2)}
    with running(model_dir, tmp, record=False, prefix_cache_mb=0) as rt:
        before = base_identity(rt)
        first = rt.load_adapter("spec", paths["1"], "1")
        out["first_load_ms"] = round(1e3 * first["seconds"], 2)

        total, thread, cpu = [], [], []
        for i in range(rounds):
            c = time.process_time()
            r = rt.load_adapter("spec", paths["2" if i % 2 == 0 else "1"], "2" if i % 2 == 0 else "1")
            cpu.append(time.process_time() - c)
            assert r["retired"], "each round must be a swap"
            total.append(r["seconds"])
            thread.append(r["model_thread_seconds"])
        # CPU seconds of the whole process during the swap (nothing else runs in it then):
        # on a machine shared with other jobs, wall time is this divided by our CPU share.
        out["direct"] = {"total": summary(total), "model_thread": summary(thread), "process_cpu": summary(cpu)}

        swapper = Swapper(rt, project, say=lambda _: None)
        pin(rt.adapters_state()["current"]["spec"].split("@")[1])
        swapper.sync("bench")  # pulls both versions into the cache on first use
        syncs, swaps = [], []
        current = swapper.serving()["spec"][0]
        for _ in range(rounds):
            current = "1" if current == "2" else "2"
            pin(current)
            report = swapper.sync("bench")
            assert report.loaded == [f"spec@{current}"], report
            syncs.append(report.seconds)
            swaps.append(next(iter(report.swap_seconds.values())))
        out["pinned"] = {"sync": summary(syncs), "swap": summary(swaps)}

        ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
        stop, counts, errors = threading.Event(), [], []
        threads = [threading.Thread(target=stream_until, args=(rt.port, stop, ban, counts, errors)) for _ in range(clients)]
        for t in threads:
            t.start()
        while len(counts) < clients:
            time.sleep(0.01)
        loaded, loaded_thread = [], []
        version = rt.adapters_state()["current"]["spec"].split("@")[1]
        for _ in range(rounds):
            version = "1" if version == "2" else "2"
            r = rt.load_adapter("spec", paths[version], version)
            loaded.append(r["seconds"])
            loaded_thread.append(r["model_thread_seconds"])
        stop.set()
        for t in threads:
            t.join()
        out["under_load"] = {"clients": clients, "requests": len(counts), "failed": len(errors),
                             "total": summary(loaded), "model_thread": summary(loaded_thread)}
        after = base_identity(rt)
        out["base_reloaded"] = before[0] != after[0] or before[1] != after[1]
    out["goal_ms"] = 1e3 * GOAL_S
    # Wall time depends on what else runs on the machine; CPU time is what the swap costs.
    out["goal_met_wall"] = out["direct"]["total"]["median_ms"] < 1e3 * GOAL_S and not out["base_reloaded"]
    out["goal_met_cpu"] = out["direct"]["process_cpu"]["median_ms"] < 1e3 * GOAL_S and not out["base_reloaded"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,default", help="comma list: tiny, default, or model directories")
    parser.add_argument("--rounds", type=int, default=10, help="swaps per measure (default: 10)")
    parser.add_argument("--clients", type=int, default=4, help="streaming clients during the under-load swaps")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["TINYGPT_HOME"] = str(tmp / "home")  # the benchmark's cache, thrown away after
        result: dict = {"machine": f"{platform.machine()} {platform.system()}", "cores": os.cpu_count(),
                        "load_average": os.getloadavg()[0], "models": {}}
        for name in args.models.split(","):
            if name == "tiny":
                from tests.tiny_model import build_tiny_model

                model_dir = build_tiny_model(tmp / "tiny-model")
            elif name == "default":
                if not (DEFAULT_MODEL / "config.json").is_file():
                    result["models"]["default"] = {"skipped": f"{DEFAULT_MODEL} is not there (tinygpt models pull)"}
                    continue
                model_dir = DEFAULT_MODEL
            else:
                model_dir = Path(name)
            result["models"][name] = measure(model_dir, tmp / f"run-{len(result['models'])}", args.rounds, args.clients)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
