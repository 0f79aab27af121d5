"""`tinygpt serve` as a process: starts on a free port, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys

import pytest

from tests.serving_support import get, post
from tinygpt.runtime import stack
from tinygpt.runtime.commands import serve

SCRIPT = """
import argparse, sys
from tinygpt.runtime.commands import serve
parser = argparse.ArgumentParser()
serve.configure(parser)
sys.exit(serve.run(parser.parse_args(sys.argv[1:])))
"""


def test_adapter_flag_parses_name_equals_path():
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    args = parser.parse_args(["--adapter", "sql=/a/b", "--adapter", "x=y"])
    assert args.adapter == [("sql", "/a/b"), ("x", "y")] and args.host == "127.0.0.1"
    assert stack.queue_hook(False) is None and callable(stack.queue_hook(True))
    with pytest.raises(SystemExit):
        parser.parse_args(["--adapter", "nope"])


def test_serve_process_answers_and_seals_trajectories_on_sigterm(tiny_model_dir, tmp_path):
    traj = tmp_path / "traj"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "--model", str(tiny_model_dir), "--port", "0", "--trajectories-dir", str(traj),
         "--log-level", "WARNING", "--max-tokens", "4", "--no-queue"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("tinygpt serve: http://127.0.0.1:"), line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert get(port, "/health")[0] == 200
        status, body = post(port, "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] <= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
    assert code == 0
    assert len(list(traj.glob("*.msgpack"))) == 1 and not list((traj / "open").iterdir())


def test_bad_model_is_an_error_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "--model", str(tmp_path / "missing"), "--port", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "error" in proc.stderr
