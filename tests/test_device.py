"""Device choice, memory budgets and the multi-GPU plan, on the CPU (CI has no GPU).

runtime/device.py decides which MLX device a process uses and names it; runtime/device_plan.py
places the runtime and the pipeline workers on a list of GPUs. The plan is plain data, so
its N-GPU logic is checked here with made-up device lists, down to the environment each
spawned worker process really gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.serving_support import running
from tinygpt.runtime import device, device_plan

QUEUES = ["data", "train", "eval"]


def test_requested_device_is_checked(monkeypatch):
    monkeypatch.delenv(device.ENV, raising=False)
    assert device.requested() == "auto"
    monkeypatch.setenv(device.ENV, " GPU ")
    assert device.requested() == "gpu"
    monkeypatch.setenv(device.ENV, "tpu")
    with pytest.raises(device.DeviceError, match="TINYGPT_DEVICE='tpu' is not one of auto, cpu, gpu"):
        device.requested()


def test_blas_preload_follows_the_backend_without_importing_mlx(monkeypatch):
    monkeypatch.setattr(device, "cuda_wheel_installed", lambda: True)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(device.ENV, raising=False)
    assert device.expects_cpu_backend() is False  # the CUDA wheel: no OpenBLAS preload
    monkeypatch.setenv(device.ENV, "cpu")
    assert device.expects_cpu_backend() is True  # forced onto the CPU: preload it
    monkeypatch.setattr(device, "cuda_wheel_installed", lambda: False)
    monkeypatch.delenv(device.ENV)
    assert device.expects_cpu_backend() is True


def test_memory_fraction_is_validated(monkeypatch):
    monkeypatch.delenv(device.MEMORY_ENV, raising=False)
    assert device.memory_fraction(0.4) == 0.4
    monkeypatch.setenv(device.MEMORY_ENV, "0.25")
    assert device.memory_fraction(None) == 0.25
    for bad, msg in (("lots", "not a number"), ("0", r"must be in \(0, 1\]"), ("1.5", r"must be in \(0, 1\]")):
        monkeypatch.setenv(device.MEMORY_ENV, bad)
        with pytest.raises(device.DeviceError, match=msg):
            device.memory_fraction(None)


@pytest.mark.skipif(device.gpu_available(), reason="this machine has a GPU backend")
def test_on_the_cpu_backend_gpu_is_refused_and_budgets_are_a_no_op(monkeypatch):
    monkeypatch.setenv(device.ENV, "gpu")
    with pytest.raises(device.DeviceError, match="no GPU backend"):
        device.select()
    monkeypatch.setenv(device.ENV, "cpu")
    info = device.apply_memory_budget(0.3)
    assert info.backend == "cpu" and info.api == "CPU" and info.memory_limit_bytes == 0
    assert info.describe().startswith("MLX cpu (CPU) ")


def test_status_probe_names_the_device_in_a_subprocess():
    info = device.probe()
    assert isinstance(info, device.DeviceInfo), info
    assert info.backend in ("cpu", "gpu") and info.name


def test_cli_status_shows_the_device_without_importing_mlx(tmp_path):
    code = ("import sys, argparse; from tinygpt.runtime.commands import status; "
            "d = status.machine_section(None, argparse.Namespace(limit=1, json=True)); "
            "print(d['device']['line']); print('mlx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TINYGPT_HOME": str(tmp_path)})
    line, imported = out.stdout.strip().splitlines()[-2:]
    assert line.startswith("MLX ") and imported == "False"


@pytest.mark.skipif(device.gpu_available(), reason="checks the CPU defaults")
def test_runtime_reports_its_device_and_cpu_defaults(tiny_model_dir, tmp_path):
    with running(tiny_model_dir, tmp_path) as rt:
        with urllib.request.urlopen(f"{rt.url}/health") as resp:
            health = json.loads(resp.read())
        assert health["device"]["backend"] == "cpu" and health["device"]["dtype"] == "float32"
        assert (health["max_batch"], health["max_queue"]) == (16, 64)
        card = rt.model_list().data[0]
        assert card.dtype == "float32" and card.device.startswith("MLX cpu (CPU)")
        assert 'tinygpt_device_info{backend="cpu",api="CPU"' in rt.metrics.render()


# ---------------------------------------------------------------- the multi-GPU plan


def test_parse_gpus():
    have = ["0", "1", "2", "3"]
    assert device_plan.parse_gpus("all", have) == have
    assert device_plan.parse_gpus("none", have) == [] == device_plan.parse_gpus(None, have)
    assert device_plan.parse_gpus("2, 0", have) == ["2", "0"]
    with pytest.raises(ValueError, match="no GPU 7 here"):
        device_plan.parse_gpus("0,7", have)
    with pytest.raises(ValueError, match="named twice"):
        device_plan.parse_gpus("1,1", have)
    with pytest.raises(ValueError, match=r"GPUs: none"):
        device_plan.parse_gpus("0", [])


def test_without_gpus_the_workers_are_not_pinned_and_train_stays_on_one():
    slots = device_plan.plan_workers([], 3, QUEUES)
    assert [s.queues for s in slots] == [QUEUES, ["data", "eval"], ["data", "eval"]]
    assert all(s.env == {} and s.gpu is None for s in slots)
    assert device_plan.plan_up([]).runtime_env == {}


def test_one_gpu_is_shared_with_memory_budgets():
    up = device_plan.plan_up(["0"])
    assert up.runtime_env == {"CUDA_VISIBLE_DEVICES": "0", "TINYGPT_DEVICE": "gpu", "TINYGPT_GPU": "0",
                              "TINYGPT_MEMORY_FRACTION": "0.4500"}
    assert up.worker_gpus == ["0"]
    slots = device_plan.plan_workers(up.worker_gpus, 2, QUEUES, runtime_gpu="0")
    assert [s.queues for s in slots] == [QUEUES, ["data", "eval"]]
    assert [s.env["TINYGPT_MEMORY_FRACTION"] for s in slots] == ["0.2250", "0.2250"]
    total = float(up.runtime_env["TINYGPT_MEMORY_FRACTION"]) + sum(float(s.env["TINYGPT_MEMORY_FRACTION"]) for s in slots)
    assert total <= 1.0


def test_several_gpus_runtime_alone_one_training_worker_per_other_gpu():
    up = device_plan.plan_up(["0", "1", "2", "3"])
    assert up.runtime_env["CUDA_VISIBLE_DEVICES"] == "0" and "TINYGPT_MEMORY_FRACTION" not in up.runtime_env
    assert up.worker_gpus == ["1", "2", "3"]
    assert up.worker_env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "TINYGPT_RUNTIME_GPU": "0"}
    slots = device_plan.plan_workers(up.worker_gpus, 1, QUEUES, runtime_gpu="0")  # --workers 1: still one per GPU
    assert [(s.gpu, s.queues) for s in slots] == [("1", QUEUES), ("2", QUEUES), ("3", QUEUES)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["1", "2", "3"]
    assert all(s.env["TINYGPT_MEMORY_FRACTION"] == "0.9000" for s in slots)
    # More workers than GPUs: round-robin, train only on the first of each card, budgets split.
    slots = device_plan.plan_workers(["1", "2"], 5, QUEUES)
    assert [(s.gpu, "train" in s.queues) for s in slots] == [("1", True), ("2", True), ("1", False), ("2", False), ("1", False)]
    by_card = {}
    for s in slots:
        by_card.setdefault(s.gpu, []).append(float(s.env["TINYGPT_MEMORY_FRACTION"]))
    assert by_card == {"1": [0.3, 0.3, 0.3], "2": [0.45, 0.45]}


def test_physical_ids_follow_the_parents_visible_devices():
    assert device_plan.physical_ids(2, None) == ["0", "1"]
    assert device_plan.physical_ids(2, "4,6") == ["4", "6"]


def test_locks_are_per_card_when_pinned(monkeypatch, tmp_path):
    from tinygpt.workers.training.lock import lock_path

    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path))
    monkeypatch.delenv("TINYGPT_GPU", raising=False)
    assert lock_path().name == "training.lock" and device_plan.lock_scope() == ""
    monkeypatch.setenv("TINYGPT_GPU", "3")
    assert lock_path().name == "training-gpu3.lock" and device_plan.lock_scope() == "-gpu3"


CHILD = "import json, os, sys; open(sys.argv[-1], 'w').write(json.dumps({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() if k.startswith(('CUDA_', 'TINYGPT_'))}}))"


def test_worker_supervisor_starts_one_pinned_process_per_gpu(monkeypatch, tmp_path):
    """`tinygpt worker --gpus all --count 1` on a (pretend) 3-GPU machine: three real child
    processes, each with its own card, budget and train queue."""
    from tinygpt.queue import worker

    monkeypatch.setattr(device_plan, "available_gpus", lambda: ["0", "1", "2"])
    monkeypatch.delenv(device_plan.RUNTIME_GPU_ENV, raising=False)
    outs = iter(tmp_path / f"child{i}.json" for i in range(10))
    monkeypatch.setattr(worker, "child_command", lambda argv: [sys.executable, "-c", CHILD, *argv, str(next(outs))])
    # Burst mode: each child exits 0 once it has written its file, and the pool is done.
    assert worker.supervise(QUEUES, 1, [], url=None, burst=True, gpus="all") == 0
    children = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("child*.json"))]
    assert [c["env"]["CUDA_VISIBLE_DEVICES"] for c in children] == ["0", "1", "2"]
    assert all(c["env"]["TINYGPT_DEVICE"] == "gpu" and c["env"]["TINYGPT_MEMORY_FRACTION"] == "0.9000" for c in children)
    assert all(c["argv"][:2] == ["--queues", "data,train,eval"] for c in children)
    with pytest.raises(ValueError, match="no GPU 5 here"):
        worker.supervise(QUEUES, 1, [], url=None, burst=True, gpus="5")


def test_up_accepts_gpus_and_rejects_unknown_ones(monkeypatch):
    import argparse

    from tinygpt.runtime.commands import up

    parser = argparse.ArgumentParser()
    up.configure(parser)
    assert parser.parse_args(["--gpus", "all"]).gpus == "all"
    monkeypatch.setattr(device_plan, "available_gpus", lambda: ["0"])
    assert up.run(parser.parse_args(["--gpus", "1"])) == 2
