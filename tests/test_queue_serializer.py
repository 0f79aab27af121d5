"""The queue's serializer: msgpack + typed contracts, never pickle (pure unit tests)."""

from __future__ import annotations

import pickle

import fakeredis
import msgspec
import pytest
from rq import Queue
from rq.job import Job

from tinygpt.queue.serializer import CONTRACT_EXT, SERIALIZER_PATH, MsgpackSerializer
from tinygpt.runtime.contracts import ContractError
from tinygpt.runtime.contracts.jobs import DatasetJob, DedupeJob, IngestJob, LabelJob, TrajectoryRef
from tinygpt.runtime.contracts.pipeline import LabelRule


def test_job_tuple_round_trips_with_typed_payloads():
    payload = LabelJob(sha256s=["a" * 64], rule=LabelRule(min_reward=0.7, require={"tool_outcome": 0.5}))
    data = MsgpackSerializer.dumps(("tinygpt.workers.jobs.label", None, (payload,), {"n": [1, 2.5, "x", None]}))
    func, instance, args, kwargs = MsgpackSerializer.loads(data)
    assert func == "tinygpt.workers.jobs.label" and instance is None
    assert args == [payload] and type(args[0]) is LabelJob
    assert kwargs == {"n": [1, 2.5, "x", None]}


def test_nested_contracts_and_batches_survive():
    job = IngestJob(batch=[TrajectoryRef(path="@home/a", sha256="1" * 64, origin="/tmp/a.msgpack")])
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps({"job": job})) == {"job": job}


def test_refuses_anything_that_is_not_data():
    class Opaque:
        pass

    for bad in (Opaque(), {1, 2}, lambda: None):
        with pytest.raises(TypeError, match="msgspec payloads, ids and paths only"):
            MsgpackSerializer.dumps(("f", None, (bad,), {}))


def test_never_pickles():
    data = MsgpackSerializer.dumps(("f", None, (DedupeJob(sha256s=["b" * 64]),), {}))
    assert not data.startswith(b"\x80")  # pickle's protocol marker
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    # And a pickle is not accepted as a payload.
    with pytest.raises(ValueError):  # msgspec.DecodeError
        MsgpackSerializer.loads(pickle.dumps(("f", None, (), {})))


def _ext(path: str, body: bytes) -> bytes:
    return msgspec.msgpack.encode(msgspec.msgpack.Ext(CONTRACT_EXT, msgspec.msgpack.encode([path, body])))


def test_refuses_classes_outside_tinygpt_and_non_contracts():
    with pytest.raises(ValueError, match="only tinygpt contracts"):
        MsgpackSerializer.loads(_ext("os:system", b"\x80"))
    with pytest.raises(ValueError, match="not a tinygpt Contract"):
        MsgpackSerializer.loads(_ext("tinygpt.queue.serializer:MsgpackSerializer", b"\x80"))


def test_decodes_strictly_and_refuses_newer_versions():
    path = "tinygpt.runtime.contracts.jobs:DatasetJob"
    body = msgspec.msgpack.encode({"name": "d", "base_model": "m", "colour": "red"})
    with pytest.raises(ContractError, match="unknown field `colour`"):
        MsgpackSerializer.loads(_ext(path, body))
    newer = msgspec.msgpack.encode({"name": "d", "base_model": "m", "schema_version": 99})
    with pytest.raises(ContractError, match="schema_version 99 is newer"):
        MsgpackSerializer.loads(_ext(path, newer))


def test_rq_job_data_goes_through_the_serializer():
    # fakeredis: RQ only stores here, nothing runs.
    conn = fakeredis.FakeRedis()
    q = Queue("t", connection=conn, serializer=SERIALIZER_PATH)
    payload = DatasetJob(name="d", base_model="m")
    job = q.enqueue_call("tinygpt.workers.jobs.dataset", args=(payload,), job_id="j1")
    raw = Job.fetch("j1", connection=conn, serializer=MsgpackSerializer)
    assert raw.args == [payload] and type(raw.args[0]) is DatasetJob
    assert MsgpackSerializer.loads(job.data)[2] == [payload]
