"""A specialist build through the real queue: finetune ▶ eval ▶ publish on a tiny model."""

from __future__ import annotations

import json

import pytest
from rq.job import Job, JobStatus

from tests.finetune_fixtures import TOOLS, import_task, task_records
from tinygpt.queue import builds, progress, stages
from tinygpt.queue.serializer import MsgpackSerializer
from tinygpt.queue.worker import PipelineWorker
from tinygpt.runtime.contracts import GateResult, SpecialistLock, read_json


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def project(root, model):
    rows = [
        {"id": f"r{i}", "prompt": r["messages"][0]["content"], "tools": TOOLS, "tool_choice": "required",
         "expected": [{"name": c["function"]["name"], "arguments": {k: [v] for k, v in c["function"]["arguments"].items()}}
                      for c in r["messages"][1]["tool_calls"]], "max_tokens": 48}
        for i, r in enumerate(task_records(6, seed=99))
    ]
    (root / "evals").mkdir()
    (root / "evals" / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A generous threshold: this test is about the chain, the gate's verdicts have their own tests.
    suites = [{"name": "calls", "kind": "tool_call", "data": "evals/calls.jsonl", "threshold": 1.0}]
    doc = {"name": "build-test", "base_model": str(model), "eval_suites": suites, "registries": ["registry"]}
    (root / "tinygpt.project.json").write_text(json.dumps(doc))
    return root / "tinygpt.project.json"


def test_a_build_trains_gates_and_publishes_once(tmp_path, tiny_model_dir, redis_client, monkeypatch):
    conn = redis_client
    # Keep the jobs' last progress records (they are cleared when a job ends) to read them below.
    monkeypatch.setattr(progress.JobReporter, "clear", lambda self: None)
    data = import_task(tiny_model_dir, tmp_path / "data", n=32, tools=True)
    pins = project(tmp_path, tiny_model_dir)
    spec = dict(specialist="calls", base_model=str(tiny_model_dir), dataset_dir=data, project_file=pins,
                registry=tmp_path / "registry", hyperparameters={"steps": 8, "batch_size": 4, "eval_every": 4})
    build = builds.enqueue_build(conn, **spec)
    again = builds.enqueue_build(conn, **spec)
    assert again.jobs == build.jobs and again.existing == 3  # the same build is not trained twice

    # Publish waits for eval, eval for the fine-tune.
    publish = Job.fetch(build.jobs["publish"], connection=conn, serializer=MsgpackSerializer)
    assert publish.get_status() == JobStatus.DEFERRED
    worker = PipelineWorker([stages.get_queue(conn, q) for q in ("train", "eval")], connection=conn,
                            heartbeat_s=0.5, drain=True, maintenance_interval=1)
    worker.work(burst=True, logging_level="WARNING")

    for stage, job_id in build.jobs.items():
        job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.get_status() == JobStatus.FINISHED, (stage, job.latest_result())
    assert (build.adapter_dir / "adapters.safetensors").exists()
    assert read_json(build.gate_result, GateResult).verdict == "pass"
    lock = read_json(tmp_path / "registry" / "calls" / "1" / "lock.json", SpecialistLock)
    assert lock.name == "calls" and "adapters.safetensors" in lock.files

    # What `tinygpt up` and `tinygpt status` draw as bars: each long job's last report.
    reported = progress.read(conn, [build.jobs["finetune"], build.jobs["eval"]])
    train, gate = reported[build.jobs["finetune"]], reported[build.jobs["eval"]]
    assert (train.stage, train.unit, train.done, train.total) == ("finetune", "step", 8, 8)
    assert train.label.startswith("calls") and "loss" in train.detail and train.updated >= train.started
    assert (gate.stage, gate.unit) == ("evalgate", "answer") and gate.done == gate.total >= 6


def test_build_command_enqueues_the_chain_after_a_dataset(tmp_path, tiny_model_dir, redis_client, monkeypatch):
    from tinygpt.runtime import cli

    pins = project(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["build", "calls", "--dataset", "calls-v1", "--steps", "5", "--hp", "learning_rate=1e-3"]) == 0
    ids = [k.decode()[len("rq:job:"):] for k in redis_client.keys("rq:job:*")]
    ids = [i for i in ids if ":" not in i]  # job hashes, not their side keys (dependents, ...)
    assert {"dataset", "finetune", "eval", "publish"} <= {i.split("-")[0] for i in ids}
    (finetune_id,) = [i for i in ids if i.startswith("finetune-")]
    job = Job.fetch(finetune_id, connection=redis_client, serializer=MsgpackSerializer)
    payload = job.args[0]
    assert payload.hyperparameters == {"steps": 5, "learning_rate": 1e-3}
    assert payload.dataset_dir.endswith("datasets/calls-v1")
    assert job.get_status() == JobStatus.DEFERRED  # waits for the dataset build
    assert pins.exists()


def test_build_without_a_project_file_exits_2(tmp_path, monkeypatch, capsys):
    from tinygpt.runtime import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["build", "calls", "--dataset-dir", str(tmp_path)]) == 2
    assert "tinygpt.project.json" in capsys.readouterr().err
