"""The publish stage and `tinygpt publish` / `tinygpt pull`: gate → package → index → notification."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.registry_support import FAKE_BASE, fake_adapter, write_project
from tests.test_registry_package import gate_for
from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.commands import publish as publish_cmd
from tinygpt.runtime.commands import pull as pull_cmd
from tinygpt.runtime.contracts.io import write_json
from tinygpt.runtime.contracts.jobs import PublishJob
from tinygpt.runtime.registry import state
from tinygpt.runtime.registry.index import read_index
from tinygpt.runtime.registry.notify import channel, decode_notice
from tinygpt.workers import publish as stage


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def candidate(tmp_path, seed=1, verdict="pass"):
    adapter = fake_adapter(tmp_path / f"run{seed}", seed=seed)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["tinygpt"] = {"base_model": "tiny", "base_digest": FAKE_BASE}  # what a training run records
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    gate_file = tmp_path / f"gate{seed}" / "gate-result.json"
    write_json(gate_file, gate_for(adapter, verdict=verdict))
    return adapter, gate_file


def test_the_stage_publishes_a_passing_candidate_and_notifies_runtimes(tmp_path, redis_client):
    adapter, gate_file = candidate(tmp_path)
    sub = redis_client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel())
    job = PublishJob(specialist="mail", version="", candidate_dir=str(adapter), registry=str(tmp_path / "reg"),
                     gate_result=str(gate_file))
    result = stage.run(job, redis_client)
    assert (result.name, result.version, result.created, result.notified) == ("mail", "1", True, 1)
    # The first read may consume the subscription's confirmation (and return None).
    message = sub.get_message(timeout=5) or sub.get_message(timeout=5)
    notice = decode_notice(message["data"])
    assert (notice.name, notice.version, notice.digest, notice.base_digest) == ("mail", "1", result.digest, FAKE_BASE)
    assert read_index(tmp_path / "reg").specialists[0].digest == result.digest
    # A retried job publishes nothing new and tells the runtimes again.
    again = stage.run(job, redis_client)
    assert (again.version, again.created, again.digest) == ("1", False, result.digest)
    assert len(read_index(tmp_path / "reg").specialists) == 1
    sub.close()


def test_the_stage_refuses_what_did_not_pass_permanently(tmp_path):
    adapter, gate_file = candidate(tmp_path, verdict="regression")
    job = PublishJob(specialist="mail", version="1", candidate_dir=str(adapter), registry=str(tmp_path / "reg"),
                     gate_result=str(gate_file))
    with pytest.raises(PermanentError, match="publish mail: the eval gate did not pass"):
        stage.run(job)
    other, _ = candidate(tmp_path, seed=2)
    _, passing = candidate(tmp_path, seed=3)
    with pytest.raises(PermanentError, match="for other weights"):
        stage.run(PublishJob(specialist="mail", version="1", candidate_dir=str(other), registry=str(tmp_path / "reg"),
                             gate_result=str(passing)))
    with pytest.raises(PermanentError, match="an HTTP registry is read-only"):
        stage.run(PublishJob(specialist="mail", version="1", candidate_dir=str(other), registry="http://127.0.0.1:1",
                             gate_result=str(tmp_path / "gate2" / "gate-result.json")))
    with pytest.raises(PermanentError, match="file not found"):
        stage.run(PublishJob(specialist="mail", version="1", candidate_dir=str(other), registry=str(tmp_path / "reg"),
                             gate_result=str(tmp_path / "nope.json")))
    assert not (tmp_path / "reg" / "mail").exists()


def publish_args(adapter, **kw):
    base = dict(adapter_dir=str(adapter), name="mail", version=None, gate_result=None, no_gate=False, registry=None,
                project=None, base_model=None, intended_use="", no_notify=True)
    return argparse.Namespace(**{**base, **kw})


def test_publish_and_pull_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    project = write_project(tmp_path, [{"name": "mail"}], ["specialists"])
    adapter, gate_file = candidate(tmp_path)
    assert publish_cmd.run(publish_args(adapter)) == 2
    assert "--gate-result FILE" in capsys.readouterr().err
    assert publish_cmd.run(publish_args(adapter, gate_result=str(gate_file))) == 0
    out = capsys.readouterr().out
    assert "published mail@1" in out and "no Redis running: nothing notified" in out
    # The project's first registry, relative to the project file.
    assert (tmp_path / "specialists" / "mail" / "1" / "lock.json").is_file()
    other, _ = candidate(tmp_path, seed=2)
    assert publish_cmd.run(publish_args(other, no_gate=True, version="1")) == 2
    assert "already published" in capsys.readouterr().err
    assert publish_cmd.run(publish_args(other, no_gate=True)) == 0
    assert "published mail@2" in capsys.readouterr().out
    assert "not evaluated" in (tmp_path / "specialists" / "mail" / "2" / "README.md").read_text().lower()

    # "*" never takes the ungated 2, however new: only the gated 1. An exact pin takes 2.
    assert pull_cmd.run(argparse.Namespace(project=str(project), timeout=5.0, json=True)) == 0
    (outcome,) = json.loads(capsys.readouterr().out)
    assert (outcome["version"], outcome["downloaded"], outcome["error"]) == ("1", True, "")
    write_project(tmp_path, [{"name": "mail", "version": "2"}], ["specialists"])
    assert pull_cmd.run(argparse.Namespace(project=str(project), timeout=5.0, json=True)) == 0
    (outcome,) = json.loads(capsys.readouterr().out)
    assert (outcome["version"], outcome["downloaded"], outcome["error"]) == ("2", True, "")
    assert state.project_state(project).specialist("mail").current.version == "2"
    write_project(tmp_path, [{"name": "mail", "version": "2"}, {"name": "ghost", "version": "3"}], ["specialists"])
    assert pull_cmd.run(argparse.Namespace(project=str(project), timeout=5.0, json=True)) == 1
    mail, ghost = json.loads(capsys.readouterr().out)
    assert (mail["version"], mail["downloaded"], mail["error"]) == ("2", False, "")
    assert ghost["error"] == "ghost@3 is in no registry (searched: specialists)"
    assert pull_cmd.run(argparse.Namespace(project=str(project), timeout=5.0, json=False)) == 1
    assert "failed" in capsys.readouterr().out
    (tmp_path / "tinygpt.project.json").write_text("{")
    assert pull_cmd.run(argparse.Namespace(project=str(project), timeout=5.0, json=False)) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_the_publish_stage_runs_on_the_queue(tmp_path, redis_client):
    from rq.job import JobStatus

    from tinygpt.queue import stages
    from tinygpt.queue.worker import PipelineWorker

    adapter, gate_file = candidate(tmp_path)
    _, failing = candidate(tmp_path, seed=2, verdict="regression")
    ok = PublishJob(specialist="mail", version="", candidate_dir=str(adapter), registry=str(tmp_path / "reg"),
                    gate_result=str(gate_file))
    bad = PublishJob(specialist="mail", version="", candidate_dir=str(adapter), registry=str(tmp_path / "reg"),
                     gate_result=str(failing))
    stages.enqueue(redis_client, "publish", ok, job_id="publish-ok")
    stages.enqueue(redis_client, "publish", bad, job_id="publish-bad")
    worker = PipelineWorker([stages.get_queue(redis_client, "eval")], connection=redis_client, heartbeat_s=0.5,
                            drain=True, maintenance_interval=1)
    worker.work(burst=True, logging_level="WARNING")
    done = stages.fetch_job(redis_client, "publish-ok")
    assert done.get_status() == JobStatus.FINISHED
    assert (done.return_value().version, done.return_value().notified) == ("1", 0)
    refused = stages.fetch_job(redis_client, "publish-bad")
    # A gate that did not pass fails at once (no retries) with the reason.
    assert refused.get_status() == JobStatus.FAILED and refused.retries_left == 0
    assert "the eval gate did not pass" in refused.latest_result().exc_string
