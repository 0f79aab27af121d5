"""Token-preserving trajectories recorded by the running server: grouping, continuity, files, feedback."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.serving_support import get, post, running
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory
from tinygpt.runtime.serving.recorder import Recorder


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("traj"), max_tokens=16) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key="unused", max_retries=0)


def open_trajectory(rt, tid: str) -> Trajectory:
    rt.recorder.flush().result()
    return read_any(rt.recorder.open_dir / f"{tid}.msgpack", Trajectory)


def ask(client, messages, **kw):
    raw = client.chat.completions.with_raw_response.create(model="base", messages=messages, **kw)
    return raw.parse(), raw.headers["x-tinygpt-trajectory"], int(raw.headers["x-tinygpt-step"])


def test_multi_turn_conversation_is_one_prefix_consistent_token_stream(rt, client):
    tok = rt.engine.tokenizer
    messages = [{"role": "system", "content": "Be brief."}]
    tids, replies = set(), []
    for turn in range(5):
        messages.append({"role": "user", "content": f"Question number {turn}: what is the weather in Paris?"})
        r, tid, step = ask(client, messages, max_tokens=12, temperature=1.0, seed=turn)
        assert step == turn
        tids.add(tid)
        replies.append(r)
        messages.append(r.choices[0].message)
    assert len(tids) == 1, "content matching should keep one conversation in one trajectory"
    traj = open_trajectory(rt, tids.pop())
    assert [s.index for s in traj.steps] == list(range(5))
    for i, (step, r) in enumerate(zip(traj.steps, replies)):
        content = r.choices[0].message.content
        body = step.output_ids[:-1] if step.output_ids[-1] in tok.eos_token_ids else step.output_ids
        assert tok.decode(body, clean_up_tokenization_spaces=False) == content == step.text
        assert len(step.logprobs) == len(step.output_ids) == r.usage.completion_tokens
        assert step.prompt_ids and len(step.prompt_ids) == r.usage.prompt_tokens
        assert step.sampling.seed == i and step.model == "base"
        if i:
            prev = traj.steps[i - 1]
            stream = prev.prompt_ids + prev.output_ids
            assert step.prompt_ids[: len(stream)] == stream
            assert not step.prefix_mismatch
            # The earlier turns came from the prefix cache, not a fresh prefill.
            assert step.timings.cached_tokens >= len(prev.prompt_ids)
            assert r.usage.prompt_tokens_details.cached_tokens == step.timings.cached_tokens


def test_session_header_and_metadata_group_independent_requests(rt, client):
    first = [{"role": "user", "content": "one"}]
    _, a, _ = ask(client, first, max_tokens=3, extra_headers={"X-TinyGPT-Session": "sess-1"})
    _, b, step = ask(client, [{"role": "user", "content": "two"}], max_tokens=3, extra_headers={"X-TinyGPT-Session": "sess-1"})
    assert a == b and step == 1
    _, c, _ = ask(client, first, max_tokens=3, metadata={"session_id": "sess-2"})
    _, d, _ = ask(client, first, max_tokens=3, metadata={"session_id": "sess-2"})
    assert c == d != a
    assert open_trajectory(rt, a).session == "sess-1"


def test_edited_history_is_flagged_and_tool_results_attach_to_the_earlier_step(rt, client):
    headers = {"X-TinyGPT-Session": "edit-1"}
    messages = [{"role": "user", "content": "Set a timer for twenty minutes."}]
    r, tid, _ = ask(client, messages, max_tokens=6, temperature=0, extra_headers=headers)
    edited = {"role": "assistant", "content": "Edited: " + (r.choices[0].message.content or "")}
    tool = {"role": "tool", "tool_call_id": "call_x", "content": json.dumps({"ok": True})}
    ask(client, messages + [edited, tool], max_tokens=4, extra_headers=headers)
    traj = open_trajectory(rt, tid)
    assert traj.steps[1].prefix_mismatch
    # Still the earlier turns' ids: only the edited reply is tokenized afresh.
    assert traj.steps[1].prompt_ids[: len(traj.steps[0].prompt_ids)] == traj.steps[0].prompt_ids
    assert [(t.tool_call_id, t.ok) for t in traj.steps[0].tool_results] == [("call_x", True)]


def test_feedback_attaches_by_id_and_rejects_unknown_ids(rt, client):
    _, tid, _ = ask(client, [{"role": "user", "content": "rate me"}], max_tokens=2)
    status, body = post(rt.port, f"/v1/trajectories/{tid}/feedback", {"reward": 1.0, "label": "good", "step": 0})
    assert status == 200 and json.loads(body)["feedback"] == 1
    assert post(rt.port, f"/v1/trajectories/{tid}/feedback", {"reward": 1.0, "step": 7})[0] == 400
    assert post(rt.port, f"/v1/trajectories/{tid}/feedback", {"comment": "no reward"})[0] == 400
    assert post(rt.port, "/v1/trajectories/traj_nope/feedback", {"reward": 0.0})[0] == 404
    assert post(rt.port, "/v1/trajectories/..%2F..%2Fetc/feedback", {"reward": 0.0})[0] == 404
    fb = open_trajectory(rt, tid).feedback
    assert [(f.reward, f.label, f.step) for f in fb] == [(1.0, "good", 0)]


def test_sealing_hands_files_to_the_hook_atomically_and_feedback_reaches_sealed_files(tiny_model_dir, tmp_path):
    flushed: list[Path] = []
    with running(tiny_model_dir, tmp_path, on_flushed=flushed.append, max_tokens=4) as rt:
        client = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        _, tid, _ = ask(client, [{"role": "user", "content": "hello"}], max_tokens=3)
        rt.recorder.seal_all().result()
        sealed = rt.recorder.root / f"{tid}.msgpack"
        assert flushed == [sealed]
        assert post(rt.port, f"/v1/trajectories/{tid}/feedback", {"reward": -1.0})[0] == 200
        assert flushed == [sealed, sealed]
        assert read_any(sealed, Trajectory).feedback[0].reward == -1.0
        # The session goes on after sealing: its file is reopened, then sealed again at stop.
        msgs = [{"role": "user", "content": "hello"}]
        _, again, step = ask(client, msgs, max_tokens=2, extra_headers={"X-TinyGPT-Session": "late"})
    root = tmp_path / "trajectories"
    assert not list(root.rglob("*.tmp")) and not list((root / "open").iterdir())
    assert {p.name for p in flushed} >= {f"{tid}.msgpack", f"{again}.msgpack"}
    for p in root.glob("*.msgpack"):
        assert read_any(p, Trajectory).steps


def test_files_a_crash_left_open_are_sealed_on_start(tmp_path):
    root = tmp_path / "t"
    (root / "open").mkdir(parents=True)
    (root / "open" / "traj_old.msgpack").write_bytes(b"left by a crash")
    flushed = []
    rec = Recorder(root, on_flushed=flushed.append).start()
    rec.flush().result()
    rec.close()
    assert flushed == [root / "traj_old.msgpack"] and not list((root / "open").iterdir())


def test_a_failing_queue_hook_never_breaks_serving(tiny_model_dir, tmp_path):
    def broken(path):
        raise RuntimeError("queue down")

    with running(tiny_model_dir, tmp_path, on_flushed=broken, max_tokens=4) as rt:
        client = openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)
        ask(client, [{"role": "user", "content": "hello"}], max_tokens=2)
        rt.recorder.seal_all().result()
        assert ask(client, [{"role": "user", "content": "again"}], max_tokens=2)[0].choices
        assert rt.metrics.recorder_errors.value() >= 1
        assert get(rt.port, "/health")[0] == 200
