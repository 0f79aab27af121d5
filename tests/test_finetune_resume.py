"""Kill `tinygpt train` mid-run with SIGKILL, rerun the same command: it resumes to the same adapter.

The killed process is parked at a known point (right after its checkpoint at step 10,
blocked reading stdin) so the kill lands mid-run every time, without timing guesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.finetune_fixtures import task_data, tinygpt_home, tiny_base  # noqa: F401

# `tinygpt train ARGS`, through the command module; with PAUSE_AT set, the run stops
# after that checkpoint and waits on stdin for the test to kill it.
CHILD = r"""
import argparse, os, sys
from tinygpt.runtime.commands import train as command

pause_at = int(os.environ.get("PAUSE_AT", "0"))
if pause_at:
    from tinygpt.workers import finetune
    from tinygpt.workers.training.loop import Callbacks

    class Pause(Callbacks):
        def on_checkpoint(self, step, folder):
            if step == pause_at:
                print("checkpoint", step, flush=True)
                sys.stdin.readline()

    original = finetune.run
    finetune.run = lambda job, **kw: original(job, **{**kw, "callbacks": Pause()})

parser = argparse.ArgumentParser()
command.configure(parser)
sys.exit(command.run(parser.parse_args(sys.argv[1:])))
"""


def _args(base, data, out):
    return [
        "--model", str(base), "--data", str(data), "--out", str(out), "--no-progress",
        "--steps", "30", "--checkpoint-every", "10", "--eval-every", "10", "--report-every", "5",
        "--learning-rate", "5e-3", "--lora-dropout", "0.1", "--grad-accumulation", "2", "--warmup-steps", "3",
    ]


def _train(args, env, **kw):
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, text=True, **kw)


def test_sigkill_then_rerun_resumes_to_the_same_result(tiny_base, task_data, tmp_path):
    env = {**os.environ, "TINYGPT_HOME": str(tmp_path / "home")}

    reference = _train(_args(tiny_base, task_data, tmp_path / "reference"), env, stderr=subprocess.PIPE)
    assert reference.wait() == 0, reference.stderr.read()

    out = tmp_path / "resumed"
    first = _train(
        _args(tiny_base, task_data, out), {**env, "PAUSE_AT": "10"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert first.stdout.readline() == "checkpoint 10\n"
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert not out.exists()
    (work,) = tmp_path.glob(".resumed.work-*")
    assert (work / "latest").read_text() == "checkpoint-0000010"

    # The same command again (the lock died with the killed process).
    second = _train(_args(tiny_base, task_data, out), env, stderr=subprocess.PIPE)
    assert second.wait() == 0
    assert "resuming from the checkpoint at step 10" in second.stderr.read()

    assert (out / "adapters.safetensors").read_bytes() == (tmp_path / "reference" / "adapters.safetensors").read_bytes()
    ref = json.loads((tmp_path / "reference" / "training_record.json").read_text())
    got = json.loads((out / "training_record.json").read_text())
    assert got["run_key"] == ref["run_key"] and got["adapter_sha256"] == ref["adapter_sha256"]
    for key in ("val_loss", "initial_val_loss", "train_loss", "trained_tokens"):
        assert got["metrics"][key] == ref["metrics"][key]
    # The metrics log reads like one uninterrupted run: each step once, in order.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [(m["kind"], m["step"]) for m in lines]
    assert steps == [(m["kind"], m["step"]) for m in map(json.loads, (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines())]
    assert not list(tmp_path.glob(".resumed.work-*"))  # cleaned up once the output exists
