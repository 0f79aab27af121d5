"""Runtime server parts that need no model: assembler, protocol, registry, metrics, sessions, sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec
import pytest

from tinygpt.runtime.serving.adapters import BASE, AdapterInfo, ServedAdapters
from tinygpt.runtime.serving.assembler import Assembler, Call
from tinygpt.runtime.serving.metrics import Metrics
from tinygpt.runtime.serving.prompts import PriorTurn
from tinygpt.runtime.serving.protocol import ApiError, ChatRequest, Message, decode
from tinygpt.runtime.serving.recorder import Match, SessionIndex, reply_message, tool_results


@dataclass
class Parsed:
    name: str
    arguments_json: str


def parse(block: str) -> list[Parsed]:
    body = block.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    obj = json.loads(body)
    return [Parsed(obj["name"], json.dumps(obj["arguments"]))]


def feed_all(asm: Assembler, pieces: list[str]) -> str:
    shown = "".join(asm.feed(p).content for p in pieces)
    return shown + asm.finish().content


# ---------------------------------------------------------------- assembler


def test_stop_string_split_across_pieces_ends_content_before_it():
    asm = Assembler(tools=False, stop=["STOP"])
    shown = feed_all(asm, ["Hel", "lo ST", "OP and more"])
    assert shown == "Hello " and asm.text() == "Hello " and asm.stopped


def test_partial_stop_string_is_held_back_then_released():
    asm = Assembler(tools=False, stop=["STOP"])
    assert asm.feed("abc ST").content == "abc "
    assert asm.feed("ay").content == "STay"
    assert not asm.stopped


def test_tool_calls_are_split_out_and_the_separator_newline_dropped():
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    asm = Assembler(tools=True, stop=[], parse=parse)
    shown = feed_all(asm, pieces)
    assert shown == "Sure."
    assert [(c.name, json.loads(c.arguments)) for c in asm.calls] == [("f", {"a": 1}), ("g", {})]
    assert all(c.id.startswith("call_") for c in asm.calls) and len({c.id for c in asm.calls}) == 2


def test_only_tool_calls_means_null_content():
    asm = Assembler(tools=True, stop=[], parse=parse)
    feed_all(asm, ['<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'])
    assert asm.text() is None and len(asm.calls) == 1


def test_unparsable_or_unclosed_call_stays_content():
    asm = Assembler(tools=True, stop=[], parse=parse)
    assert feed_all(asm, ["<tool_call>\nnot json\n</tool_call>"]) == "<tool_call>\nnot json\n</tool_call>"
    asm = Assembler(tools=True, stop=[], parse=parse)
    assert feed_all(asm, ['<tool_call>\n{"name": "f", "argu']) == '<tool_call>\n{"name": "f", "argu'
    assert asm.calls == []


def test_without_tools_markers_are_plain_text():
    asm = Assembler(tools=False, stop=[])
    assert feed_all(asm, ["<tool_call>x</tool_call>"]) == "<tool_call>x</tool_call>"


# ---------------------------------------------------------------- protocol


def minimal(**extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def test_valid_request_decodes():
    req = decode(minimal(max_tokens=5, stop="x", tools=[{"type": "function", "function": {"name": "f"}}]), ChatRequest)
    assert req.max_tokens == 5 and req.stop == "x" and req.tools[0].function.name == "f"


@pytest.mark.parametrize(
    "body, param",
    [
        (minimal(max_tokens=-1), "$.max_tokens"),
        (minimal(max_tokens=0), "$.max_tokens"),
        (minimal(temperature=3), "$.temperature"),
        (minimal(n=2), "$.n"),
        (minimal(bogus=1), None),
        (minimal(stop=["a", "b", "c", "d", "e"]), "$.stop"),
        (json.dumps({"model": "m", "messages": []}).encode(), "$.messages"),
        (json.dumps({"model": "m", "messages": [{"role": "robot", "content": "x"}]}).encode(), "$.messages[0].role"),
        (b"{not json", None),
        (b"\xff\xfe\x00garbage", None),
        (b"[]", None),
    ],
)
def test_bad_requests_are_400_naming_the_problem(body, param):
    with pytest.raises(ApiError) as e:
        decode(body, ChatRequest)
    assert e.value.status == 400
    if param:
        assert e.value.param == param
    err = json.loads(e.value.body())["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_unknown_field_error_names_the_field():
    with pytest.raises(ApiError) as e:
        decode(minimal(bogus=1), ChatRequest)
    assert "bogus" in e.value.message


# ---------------------------------------------------------------- registry


def info(name: str, version: str, digest: str = "d" * 64) -> AdapterInfo:
    return AdapterInfo(name=name, version=version, digest=digest, path="/x", method="lora", rank=8)


def test_registry_swap_keeps_old_version_until_its_requests_finish():
    reg = ServedAdapters("base-model", "b" * 64)
    assert reg.acquire("base-model") == (BASE, None)
    reg.publish(info("sql", "1"))
    key1, _ = reg.acquire("sql")
    assert key1 == "sql@1"
    retired = reg.publish(info("sql", "2", "e" * 64))
    assert retired == "sql@1"
    assert reg.acquire("sql")[0] == "sql@2"
    with pytest.raises(ApiError) as e:
        reg.acquire("sql@1")
    assert e.value.status == 404
    assert reg.freeable() == []  # still held by the request in flight
    reg.release(key1)
    assert reg.freeable() == ["sql@1"]


def test_registry_unknown_models_are_404_and_versions_are_addressable():
    reg = ServedAdapters("base-model", "b" * 64)
    reg.publish(info("sql", "1"))
    reg.publish(info("sql", "2", "e" * 64), keep_previous=True)
    assert reg.acquire("sql@1")[0] == "sql@1"
    for bad in ("nope", "sql@3", "nope@1", ""):
        with pytest.raises(ApiError) as e:
            reg.acquire(bad)
        assert e.value.status == 404 and e.value.code == "model_not_found"
    assert reg.unpublish("sql") == ["sql@1", "sql@2"]
    with pytest.raises(ApiError):
        reg.acquire("sql")


def test_registry_refuses_base_name_and_reused_version():
    reg = ServedAdapters("base-model", "b" * 64)
    with pytest.raises(ApiError):
        reg.check_new(info("base-model", "1"))
    reg.publish(info("sql", "1"))
    with pytest.raises(ApiError) as e:
        reg.check_new(info("sql", "1", "f" * 64))
    assert e.value.status == 409


# ---------------------------------------------------------------- metrics


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.requests.inc(endpoint="chat", status="200")
    m.latency.observe(0.3, model="m")
    m.gauge("tinygpt_queue_depth", "waiting", lambda: 3)
    text = m.render()
    assert 'tinygpt_requests_total{endpoint="chat",status="200"} 1' in text
    assert 'tinygpt_request_seconds_bucket{model="m",le="0.5"} 1' in text
    assert 'tinygpt_request_seconds_bucket{model="m",le="0.25"} 0' in text
    assert 'tinygpt_request_seconds_count{model="m"} 1' in text
    assert "tinygpt_queue_depth 3" in text
    assert "# TYPE tinygpt_request_seconds histogram" in text


# ---------------------------------------------------------------- sessions


def msgs(*items) -> list[Message]:
    return msgspec.convert(list(items), list[Message])


def test_session_index_matches_a_continued_conversation_by_content():
    index = SessionIndex()
    first = msgs({"role": "user", "content": "hi"})
    m = index.find(None, first)
    assert m.index == 0 and m.prior is None
    prior = PriorTurn([1, 2], "p", [3, 4], "o")
    call = Call(id="call_1", name="f", arguments='{"a": 1, "b": 2}')
    index.remember(m, first, reply_message(None, [call]), prior)
    # The client re-serialised the arguments (other key order and spacing): still a match.
    nxt = msgs(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"b":2,"a":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
    )
    m2 = index.find(None, nxt)
    assert (m2.trajectory_id, m2.index, m2.prior) == (m.trajectory_id, 1, prior)
    assert [(r.tool_call_id, r.ok) for r in m2.tool_results] == [("c1", True)]
    other = msgs({"role": "user", "content": "hi"}, {"role": "assistant", "content": "something else"})
    assert index.find(None, other).trajectory_id != m.trajectory_id


def test_named_session_groups_requests_and_a_fresh_conversation_continues_nothing():
    index = SessionIndex()
    m = index.find("s1", msgs({"role": "user", "content": "a"}))
    index.remember(m, msgs({"role": "user", "content": "a"}), reply_message("b", []), PriorTurn([1], "x", [2], "y"))
    again = index.find("s1", msgs({"role": "user", "content": "new topic"}))
    assert again.trajectory_id == m.trajectory_id and again.index == 1 and again.prior is None


def test_tool_results_ok_is_read_from_the_result_when_it_says():
    results = tool_results(
        msgs(
            {"role": "assistant", "content": "x"},
            {"role": "tool", "tool_call_id": "a", "content": '{"error": "boom"}'},
            {"role": "tool", "tool_call_id": "b", "content": "plain text"},
        )
    )
    assert [(r.tool_call_id, r.ok) for r in results] == [("a", False), ("b", None)]


def test_match_defaults():
    assert Match("t", 0, None).tool_results == []


# ---------------------------------------------------------------- sampling


def test_seeded_sampler_is_reproducible_and_seed_dependent():
    import mlx.core as mx

    from tinygpt.runtime.serving.sampling import make_sampler

    logprobs = mx.log(mx.softmax(mx.random.normal((1, 200), key=mx.random.key(1)), axis=-1))

    def draw(seed):
        s = make_sampler(1.0, 1.0, seed)
        return [s(logprobs).item() for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    greedy = make_sampler(0.0, 1.0, None)
    assert greedy(logprobs).item() == mx.argmax(logprobs).item()


def test_streaming_deltas_are_coalesced_only_when_many_streams_decode():
    import queue
    from types import SimpleNamespace

    from tinygpt.runtime.serving import engine as engine_mod
    from tinygpt.runtime.serving.events import Delta

    eng = engine_mod.Engine("unused", registry=ServedAdapters("base-model", "b" * 64))
    seq = SimpleNamespace(sent_at=0.0, unsent=Delta("a", [], [1], [0.0], []), req=SimpleNamespace(events=queue.SimpleQueue()))

    def send(now: float, text: str) -> None:
        seq.unsent.content += text
        eng._send(seq, now)

    # One stream: every piece goes out as it comes (steps are ms apart).
    eng.n_active = 1
    for i, t in enumerate("bcd"):
        send(10.0 + 0.001 * i, t)
    got = []
    while not seq.req.events.empty():
        got.append(seq.req.events.get().content)
    assert got == ["ab", "c", "d"]
    # 128 streams: a piece waits until ~26 ms after the last send, and nothing is lost.
    eng.n_active = 128
    start = seq.sent_at
    for i, t in enumerate("efgh"):
        send(start + 0.01 * (i + 1), t)
    sent = []
    while not seq.req.events.empty():
        sent.append(seq.req.events.get().content)
    assert sent == ["efg"] and seq.unsent.content == "h"
    assert engine_mod.STREAM_SECONDS_PER_ACTIVE * 128 < engine_mod.STREAM_INTERVAL_MAX
