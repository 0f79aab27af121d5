"""The runtime and the trainer on MLX's GPU backend (skipped where MLX has no GPU).

On a CUDA machine: `pytest -m gpu` (README, "NVIDIA GPUs"). The CPU-only parts of the same
logic (device choice, memory fractions, the multi-GPU plan) are tested in CI by
tests/test_device.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.serving_support import running

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as resp:
        body = resp.read()
    return json.loads(body) if path != "/metrics" else body.decode()


def _chat(port: int, text: str, n: int = 24) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    out = client.chat.completions.create(model="base", messages=[{"role": "user", "content": text}], max_tokens=n,
                                         temperature=0)
    return out.model_dump()


def test_runtime_serves_on_the_gpu_in_bf16_and_says_so(tiny_model_dir, tmp_path):
    import mlx.core as mx

    with running(tiny_model_dir, tmp_path) as rt:
        health = _get(rt.port, "/health")
        assert health["device"]["backend"] == "gpu" and health["device"]["dtype"] == "bfloat16"
        assert health["max_batch"] == 256 and health["max_queue"] == 1024  # the GPU's defaults
        card = _get(rt.port, "/v1/models")["data"][0]
        assert card["dtype"] == "bfloat16" and card["device"].startswith("MLX gpu (")
        metrics = _get(rt.port, "/metrics")
        assert 'tinygpt_device_info{backend="gpu"' in metrics
        out = _chat(rt.port, "hello there")
        assert out["usage"]["completion_tokens"] >= 1
        assert mx.default_device() == mx.gpu


def test_batched_step_on_the_gpu_matches_the_stock_step(tiny_model_dir):
    """The per-batch step's tokens equal mlx-lm's on the GPU backend too (bf16 there)."""
    from tests.test_serving_batch_step import _run

    import mlx.core as mx
    import mlx_lm

    model, tok = mlx_lm.load(str(tiny_model_dir))
    model.set_dtype(mx.bfloat16)
    stock, _ = _run(model, tok, batched=False)
    fast, _ = _run(model, tok, batched=True)
    for idx in stock:
        assert fast[idx][0] == stock[idx][0]
        assert fast[idx][1] == pytest.approx(stock[idx][1], abs=1e-6)


TRAIN = r"""
import json, sys
from pathlib import Path
import mlx.core as mx
from tests.finetune_fixtures import job, import_task, sharpen
from tests.tiny_model import build_tiny_model
from tinygpt.runtime import device
from tinygpt.workers.finetune import run

tmp = Path(sys.argv[1])
base = sharpen(build_tiny_model(tmp / "base"))
data = import_task(base, tmp / "task")
record = run(job(base, data, tmp / "adapter", "lora", steps=60))
info = device.current()
print(json.dumps({"limit": mx.get_memory_limit(), "info": {"backend": info.backend, "memory_bytes": info.memory_bytes,
                  "memory_limit_bytes": info.memory_limit_bytes}, "peak": mx.get_peak_memory(),
                  "val_loss": record.metrics["val_loss"], "initial": record.metrics["initial_val_loss"]}))
"""


def test_a_training_build_and_the_runtime_share_one_gpu_within_their_budgets(tiny_model_dir, tmp_path):
    """The runtime serves while a LoRA training job runs in its own process on the same card;
    each has its memory budget (runtime 0.4, trainer 0.3 of the card) and both finish."""
    env = {**os.environ, "TINYGPT_MEMORY_FRACTION": "0.3", "TINYGPT_HOME": str(tmp_path / "home"),
           # The checkout first, then whatever made tinygpt importable here (an install, a path).
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with running(tiny_model_dir, tmp_path, memory_fraction=0.4) as rt:
        dev = rt.engine.device
        assert dev.memory_limit_bytes == int(dev.memory_bytes * 0.4) > 0
        trainer = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path / "train")], env=env, cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        served: list[int] = []
        errors: list[str] = []

        def client(i: int) -> None:
            while trainer.poll() is None or len(served) < 8:
                try:
                    served.append(_chat(rt.port, f"client {i} asks about the weather", 16)["usage"]["completion_tokens"])
                except Exception as e:  # noqa: BLE001
                    errors.append(str(e))
                    return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        out, err = trainer.communicate()
        for t in threads:
            t.join()
        assert trainer.returncode == 0, err[-3000:]
        assert not errors and len(served) >= 8
        report = json.loads(out.strip().splitlines()[-1])
        assert report["info"]["backend"] == "gpu"
        assert report["limit"] == report["info"]["memory_limit_bytes"] == int(report["info"]["memory_bytes"] * 0.3)
        assert report["peak"] <= report["limit"]
        assert report["val_loss"] < report["initial"]
        assert _get(rt.port, "/health")["status"] == "ok"
