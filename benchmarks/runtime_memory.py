"""What the runtime's memory grows to as conversations come and go, against what it accounts for.

    python benchmarks/runtime_memory.py [--model smollm2-135m-instruct] [--waves 3] [--sessions 8]

Runs the runtime in this process and sends `--waves` waves of `--sessions` concurrent
multi-turn agent sessions (a tool call, its result, follow-ups: 4 turns each, T=0.7).
After each wave it prints the process RSS, MLX's active memory and the prefix cache's own
byte count; at the end it empties the prefix cache and says how much MLX memory that
freed. With the prefix cache holding only what it counts, active memory = weights +
prefix cache bytes, and emptying it frees about its byte count. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tinygpt.runtime  # noqa: E402,F401  (BLAS decision before mlx)

TOOLS = [{"type": "function", "function": {"name": "move_file", "parameters": {
    "type": "object", "properties": {"source": {"type": "string"}, "destination": {"type": "string"}},
    "required": ["source", "destination"]}}}]


def rss_mb() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or directory")
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--sessions", type=int, default=8)
    args = p.parse_args()

    import mlx.core as mx
    from openai import OpenAI

    from tests.serving_support import freed_by_emptying_the_prefix_cache
    from tinygpt.runtime.serving.app import Runtime, ServerConfig, resolve_model_dir

    tmp = Path(tempfile.mkdtemp())
    rt = Runtime(ServerConfig(model=str(resolve_model_dir(args.model)), port=0,
                              trajectories_dir=str(tmp / "traj"))).start()
    out: dict = {"model": args.model, "after_load": {"rss_mb": rss_mb(), "mlx_active_gb": mx.get_active_memory() / 1e9},
                 "waves": []}
    print("after load", json.dumps(out["after_load"]), flush=True)
    client = OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)

    def session(i: int) -> None:
        msgs = [{"role": "system", "content": "You are a helpful file assistant. " * 20},
                {"role": "user", "content": f"Move /a/{i}.txt to /b. Then tell me about it."}]
        for turn in range(4):
            r = client.chat.completions.create(model="base", messages=msgs, max_tokens=48, temperature=0.7, tools=TOOLS,
                                               tool_choice="auto" if turn else "required")
            m = r.choices[0].message
            if m.tool_calls:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                    for c in m.tool_calls]})
                msgs.append({"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": '{"ok": true}'})
            else:
                msgs += [{"role": "assistant", "content": m.content or ""}, {"role": "user", "content": "and again please"}]

    try:
        for wave in range(args.waves):
            threads = [threading.Thread(target=session, args=(wave * args.sessions + i,)) for i in range(args.sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            row = {"wave": wave, "rss_mb": rss_mb(), "mlx_active_gb": mx.get_active_memory() / 1e9,
                   "prefix_cache_gb": rt.engine.prefix_cache_nbytes / 1e9}
            out["waves"].append(row)
            print(json.dumps(row), flush=True)

        freed, counted = freed_by_emptying_the_prefix_cache(rt.engine)
        out["emptying_the_prefix_cache"] = {"prefix_cache_gb": counted / 1e9, "freed_gb": freed / 1e9}
    finally:
        rt.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
