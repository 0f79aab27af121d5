"""Label: named reward dimensions, the keep / drop rule, and the LLM judge (real Redis)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from tests.fixtures.trajectories import helpers
from tinygpt.queue import keys
from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts import read_any
from tinygpt.runtime.contracts.jobs import LabelJob
from tinygpt.runtime.contracts.pipeline import JudgeSettings, LabelRecord, LabelRule
from tinygpt.runtime.contracts.trajectory import Feedback, Step, ToolCall, ToolResult, Trajectory
from tinygpt.workers import judge, label


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def fixture(name: str) -> Trajectory:
    return read_any(helpers.HERE / name, Trajectory)


def labels(conn) -> dict[str, LabelRecord]:
    recs = (msgspec.msgpack.decode(v, type=LabelRecord) for v in conn.hgetall(keys.labels("default")).values())
    return {r.trajectory_id: r for r in recs}


def test_dimensions_are_recorded_separately_and_the_rule_decides(redis_client):
    helpers.run_stages(redis_client, helpers.GOOD)
    got = labels(redis_client)
    weather = got["rec-weather-tool"]
    assert weather.dimensions == {"tool_validity": 1.0, "tool_outcome": 1.0, "feedback": 1.0} and weather.keep
    bad_args = got["rec-invalid-args"]
    assert bad_args.dimensions["tool_validity"] == 0.0 and bad_args.invalid_steps == [0]
    assert not bad_args.keep and bad_args.reason == "tool_validity 0.00 < 1.00"
    tool_error = got["rec-tool-error"]
    assert tool_error.dimensions == {"tool_validity": 1.0, "tool_outcome": 0.0} and tool_error.reward == 0.5
    plain = got["rec-plain-chat"]
    # A plain chat nobody scored is no evidence of a good answer: dropped by default,
    # marked so a build policy can opt in.
    assert plain.dimensions == {} and plain.reward is None and not plain.keep and plain.no_signal
    assert plain.reason == "no reward dimension applies" and plain.rows == 1
    assert not got["rec-pair-bad"].keep and got["rec-pair-bad"].reason == "reward 0.00 < 0.50"
    # Answers to the same prompt share a key (the dataset stage pairs them up).
    assert got["rec-pair-good"].prompt_keys == got["rec-pair-bad"].prompt_keys


def test_project_rule_is_applied(redis_client):
    strict = LabelJob(sha256s=["x"], rule=LabelRule(require={"tool_outcome": 1.0}, keep_unlabelled=False))
    helpers.run_stages(redis_client, helpers.GOOD, label=strict)
    got = labels(redis_client)
    assert not got["rec-tool-error"].keep and got["rec-tool-error"].reason == "tool_outcome 0.00 < 1.00"
    assert not got["rec-plain-chat"].keep and got["rec-plain-chat"].reason == "no reward dimension applies"


def test_every_label_is_logged_once_in_write_order(redis_client):
    shas = helpers.run_stages(redis_client, helpers.GOOD)
    logged = [fields[b"sha"].decode() for _, fields in redis_client.xrange(keys.label_log("default"))]
    assert sorted(logged) == sorted(set(shas)) and len(logged) == len(shas)
    label.run(LabelJob(sha256s=shas), redis_client)  # a rerun labels nothing, logs nothing
    assert redis_client.xlen(keys.label_log("default")) == len(shas)


def test_relabelling_by_trajectory_id_overwrites_and_plain_reruns_skip(redis_client):
    shas = helpers.run_stages(redis_client, helpers.GOOD)
    again = label.run(LabelJob(sha256s=shas), redis_client)
    assert again.labelled == 0 and again.skipped == len(shas)
    redo = label.run(LabelJob(trajectory_id="rec-tool-error", rule=LabelRule(min_reward=0.9)), redis_client)
    assert redo.labelled == 1 and not labels(redis_client)["rec-tool-error"].keep


def test_tool_call_validation_uses_the_offered_schema():
    tools = label._tools_by_name(fixture("weather_tool.msgpack"))
    ok = ToolCall(id="1", name="get_weather", arguments='{"city": "Oslo"}')
    assert label.call_problem(ok, tools) is None
    assert "unknown tool 'get_time'" in label.call_problem(ToolCall(id="2", name="get_time", arguments="{}"), tools)
    assert "not JSON" in label.call_problem(ToolCall(id="3", name="get_weather", arguments='{"city": '), tools)
    assert "'city' is a required property" in label.call_problem(ToolCall(id="4", name="get_weather", arguments="{}"), tools)
    assert "is not one of" in label.call_problem(ToolCall(id="5", name="get_weather", arguments='{"city": "x", "unit": "k"}'), tools)


@pytest.mark.parametrize(
    "content, ok",
    [
        ('{"temp": 3}', True),
        ('{"error": "boom"}', False),
        ('{"ok": false}', False),
        ('{"status": "failed"}', False),
        ('{"status": "success"}', True),
        ("Error: no such city", False),
        ("Traceback (most recent call last):\n ...", False),
        ("sunny, 21C", True),
        ("", None),
    ],
)
def test_tool_outcome_is_read_from_the_result(content, ok):
    assert label.outcome_of(ToolResult(tool_call_id="c", content=content)) is ok


def test_feedback_rewards_and_labels():
    t = fixture("plain_chat.msgpack")
    fb = [Feedback(trajectory_id=t.id, reward=2.0), Feedback(trajectory_id=t.id, label="thumbs_down"), Feedback(trajectory_id=t.id, label="meh")]
    assert label.feedback_score(msgspec.structs.replace(t, feedback=fb)) == 0.5


def test_weights_shape_the_reward():
    keep, reward, _ = label.decide({"tool_outcome": 0.0, "feedback": 1.0}, LabelRule(weights={"feedback": 3.0}, require={}))
    assert keep and reward == 0.75
    with pytest.raises(PermanentError):
        label.decide({"feedback": 1.0}, LabelRule(weights={"feedback": 0.0}))


# --- the LLM judge --------------------------------------------------------------------


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions that rates 7 and prefers reply A."""

    requests: list[dict] = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append(body)
        prompt = body["messages"][-1]["content"]
        text = "A" if "<reply A>" in prompt else "7"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(FakeJudge.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    FakeJudge.requests, FakeJudge.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def small_traj(tid: str, base_model: str, reply: list[int]) -> Trajectory:
    # Ids below the tiny test tokenizer's 512, so the judge can decode them for real.
    step = Step(index=0, prompt_ids=[1, 40, 41, 42, 2], output_ids=reply, text="")
    return Trajectory(id=tid, base_model=base_model, base_digest="d" * 64, steps=[step])


def test_judge_rates_through_an_openai_compatible_server(redis_client, tmp_path, tiny_model_dir, judge_url):
    files = helpers.write(tmp_path, {"j.msgpack": msgspec.msgpack.encode(small_traj("j1", str(tiny_model_dir), [50, 60, 70]))})
    job = LabelJob(sha256s=["x"], judge=JudgeSettings(mode="rate", url=judge_url, model="teacher"))
    helpers.run_stages(redis_client, files, label=job)
    assert labels(redis_client)["j1"].dimensions == {"judge": pytest.approx(6 / 9)}
    (request,) = FakeJudge.requests
    assert request["model"] == "teacher" and "<transcript>" in request["messages"][-1]["content"]


def test_pairwise_judge_compares_with_the_first_answer_to_the_same_prompt(redis_client, tmp_path, tiny_model_dir, judge_url):
    base = str(tiny_model_dir)
    first = helpers.write(tmp_path, {"a.msgpack": msgspec.msgpack.encode(small_traj("a", base, [50, 51]))})
    second = helpers.write(tmp_path, {"b.msgpack": msgspec.msgpack.encode(small_traj("b", base, [60, 61]))})
    job = LabelJob(sha256s=["x"], judge=JudgeSettings(mode="pairwise", url=judge_url))
    helpers.run_stages(redis_client, first, label=job)
    helpers.run_stages(redis_client, second, label=job)
    got = labels(redis_client)
    assert "judge" not in got["a"].dimensions  # the reference has nothing to be compared with
    assert got["b"].dimensions["judge"] == 1.0  # the fake judge prefers reply A, the new answer
    assert len(FakeJudge.requests) == 1


def test_judge_failures_are_retryable_or_permanent(tiny_model_dir, judge_url):
    traj = small_traj("t", str(tiny_model_dir), [5])
    FakeJudge.status = 503
    with pytest.raises(judge.JudgeUnavailable):
        judge.rate(JudgeSettings(mode="rate", url=judge_url), traj)
    FakeJudge.status = 404
    with pytest.raises(PermanentError, match="refused the request"):
        judge.rate(JudgeSettings(mode="rate", url=judge_url), traj)
    with pytest.raises(judge.JudgeUnavailable, match="unreachable"):
        judge.rate(JudgeSettings(mode="rate", url="http://127.0.0.1:9/v1", timeout_s=2), traj)
    with pytest.raises(PermanentError, match="tokenizer"):
        judge.rate(JudgeSettings(mode="rate", url=judge_url), small_traj("t", "no-such-model-here", [5]))


def test_mlx_judge_runs_a_local_model(tiny_model_dir):
    # A random tiny model: whatever it says, the judge parses it or leaves the dimension out.
    settings = JudgeSettings(mode="rate", backend="mlx", model=str(tiny_model_dir))
    score = judge.rate(settings, small_traj("t", str(tiny_model_dir), [50, 60]))
    assert score is None or 0.0 <= score <= 1.0


@pytest.mark.parametrize("reply, score", [("7", 6 / 9), ("Rating: 10/10", 1.0), ("I cannot rate", None)])
def test_rating_parse(reply, score):
    assert judge.parse_rating(reply) == (pytest.approx(score) if score is not None else None)


# --- only good data ---------------------------------------------------------------------


def _call_step(index: int, calls: list[tuple[str, str]], output: list[int], finish="tool_calls", results=()) -> Step:
    return Step(index=index, prompt_ids=list(range(100, 110 + 40 * index)), output_ids=output, finish_reason=finish,
                tool_calls=[ToolCall(id=f"c{index}{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)],
                tool_results=[ToolResult(tool_call_id=f"c{index}0", content='{"ok": true}')] if results else [])


def test_a_reply_repeating_one_call_until_max_tokens_is_dropped_not_kept(redis_client, tmp_path):
    """The field report: six identical calls until max_tokens was labelled keep 1.00."""
    call = ("get_weather", '{"city": "Oslo"}')
    loop = [7, 8, 9, 10, 11, 12, 13, 14] * 6
    traj = fixture("weather_tool.msgpack")
    bad = msgspec.structs.replace(traj, id="rec-loop", steps=[_call_step(0, [call] * 6, loop, finish="length")],
                                  feedback=[Feedback(trajectory_id="rec-loop", reward=1.0)])
    (path,) = helpers.write(tmp_path, {"loop.msgpack": msgspec.msgpack.encode(bad)})
    helpers.run_stages(redis_client, [path])
    got = labels(redis_client)["rec-loop"]
    assert not got.keep and got.quality == 0.0
    assert set(got.flags[0]) == {"cut off by max_tokens", "degenerate repetition", "repeats an earlier identical tool call (get_weather)"}
    assert got.reason.startswith("quality 0.00 < 0.50")


def test_flagged_steps_are_masked_and_repeats_count_across_the_turn():
    from tinygpt.workers import quality, tokens

    call = ("get_weather", '{"city": "Oslo"}')
    same = ("get_weather", '{ "city":"Oslo" }')  # re-serialized: still the same call
    steps = [_call_step(0, [call], [1, 2, 3], results=True), _call_step(1, [same], [4, 5, 6], results=True),
             _call_step(2, [("get_time", "{}")], [7, 8], finish="stop")]
    for i in (1, 2):  # each prompt continues the previous one
        steps[i].prompt_ids = steps[i - 1].prompt_ids + steps[i - 1].output_ids + [99]
    traj = Trajectory(id="t", base_model="m", base_digest="d", steps=steps)
    flags = quality.step_flags(traj)
    assert list(flags) == [1] and "repeats an earlier identical tool call" in flags[1][0]
    # A new user turn (no tool results before it) may call it again.
    steps[1].tool_results = []
    steps[0].tool_results = []
    assert quality.step_flags(traj) == {}
    (seq,) = tokens.sequences(traj, set(flags))
    assert seq.trained == 3 + 2


def test_looping_is_a_repeated_pattern_not_any_repetition():
    from tinygpt.workers.quality import looping

    assert looping([5] * 40) and looping([1, 2, 3, 4, 5] * 8)
    assert not looping(list(range(200))) and not looping([1, 2] * 10)  # too short to call a loop
    assert not looping([3, 1, 4, 1, 5, 9, 2, 6] * 3 + list(range(50, 90)))  # three repeats only
