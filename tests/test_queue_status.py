"""`tinygpt status` (the queue part), `tinygpt worker` / `jobs` / `ingest` wiring."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.trajectories import helpers
from tinygpt.queue import pipeline, stages
from tinygpt.queue.worker import PipelineWorker
from tinygpt.runtime.contracts.pipeline import PipelineSettings

REPO = Path(__file__).resolve().parents[1]


def status_json(env: dict) -> tuple[dict, list[str]]:
    """Run the status command in a fresh interpreter; returns its JSON and heavy modules loaded."""
    code = (
        "import argparse, sys, io, contextlib; from tinygpt.runtime.commands import status as m; "
        "p = argparse.ArgumentParser(); m.configure(p); buf = io.StringIO(); "
        "rc = None\nwith contextlib.redirect_stdout(buf): rc = m.run(p.parse_args(['--json']))\n"
        "print(buf.getvalue()); print([x for x in sys.modules if x.split('.')[0] in ('mlx', 'mlx_lm')]); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    out, heavy = r.stdout.strip().rsplit("\n", 1)
    return json.loads(out), eval(heavy)


def test_status_shows_queues_quarantine_trajectories_and_datasets_without_mlx(redis_client, redis_url, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    enq = pipeline.enqueue_files(helpers.GOOD + helpers.BAD, redis_client, settings=PipelineSettings())
    pipeline.enqueue_dataset("fx", "smollm2-135m-instruct", redis_client, settings=PipelineSettings(), depends_on=enq.label_jobs)
    data, heavy = status_json({"TINYGPT_HOME": str(home), "REDIS_URL": redis_url})
    assert heavy == []
    ov = data["pipeline"]
    assert ov["redis"]["reachable"] and ov["redis"]["aof"]
    assert {q["name"]: q["queued"] for q in ov["queues"]}["data"] == 1
    PipelineWorker([stages.get_queue(redis_client, "data")], connection=redis_client, heartbeat_s=0.5, drain=True).work(burst=True, logging_level="WARNING")
    ov = status_json({"TINYGPT_HOME": str(home), "REDIS_URL": redis_url})[0]["pipeline"]
    assert ov["quarantine_total"] == len(helpers.BAD)
    reasons = {Path(q["origin"]).name: q["reason"] for q in ov["quarantine"]}
    assert "Input data was truncated" in reasons["bad_truncated.msgpack"]
    recent = {t["trajectory_id"]: t for t in ov["recent"]}
    assert recent["rec-invalid-args"]["label"].startswith("drop 0.00 (tool_validity")
    assert recent["rec-weather-tool"]["dedupe"] == "kept"
    (ds,) = ov["datasets"]
    # Plain-chat and prefix-mismatch carry no signal (nobody scored them): not trained on.
    assert ds["name"] == "fx" and ds["trajectories"] == 3 and ds["pairs"] == 1


def test_status_with_redis_down_still_works_and_says_so(tmp_path):
    data, _ = status_json({"TINYGPT_HOME": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:9/0"})
    r = data["pipeline"]["redis"]
    assert not r["reachable"] and "Connection" in r["error"]


def test_status_never_starts_the_embedded_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    code = (
        "import argparse; from tinygpt.runtime.commands import status as m; p = argparse.ArgumentParser(); "
        "m.configure(p); raise SystemExit(m.run(p.parse_args([])))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "TINYGPT_HOME": str(tmp_path), "COLUMNS": "200"}, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "not running (starts on first use" in r.stdout
    assert not (tmp_path / "redis" / "server.json").exists()


def test_ingest_command_enqueues_and_waits_for_the_dataset(redis_url, tmp_path, monkeypatch, capsys):
    from tinygpt.queue.worker import child_command
    from tinygpt.runtime.commands import ingest

    home = tmp_path / "home"
    monkeypatch.setenv("TINYGPT_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(REPO)  # the repo's tinygpt.project.json: its base_model and settings
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(child_command(["--queues", "data", "--heartbeat", "0.5", "--log-level", "WARNING"]), env=env, cwd=REPO)
    try:
        p = argparse.ArgumentParser()
        ingest.configure(p)
        assert ingest.run(p.parse_args([str(helpers.HERE), "--dataset", "cli", "--batch", "4", "--wait"])) == 0
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    out = capsys.readouterr().out
    assert "enqueued 10 trajectory file(s) in 3 batch(es)" in out and "dataset 'cli' (smollm2-135m-instruct)" in out
    assert "jobs: finished 10" in out and "dataset cli " in out and "3 trajectories, 3 rows, 1 pairs" in out  # scored ones only
    assert (home / "datasets" / "cli" / "manifest.json").is_file()


def test_worker_command_refuses_unknown_queues(capsys):
    from tinygpt.runtime.commands import worker

    p = argparse.ArgumentParser()
    worker.configure(p)
    assert worker.run(p.parse_args(["--queues", "data,trian"])) == 2
    assert "unknown queue 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["status", "jobs", "worker", "ingest"])
def test_commands_have_an_example_and_import_no_mlx(name):
    code = (
        f"import sys, argparse, tinygpt.runtime.commands.{name} as m; m.configure(argparse.ArgumentParser()); "
        f"assert m.EXAMPLE.startswith('tinygpt {name}'); print([x for x in sys.modules if x.split('.')[0] in ('mlx', 'mlx_lm')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
