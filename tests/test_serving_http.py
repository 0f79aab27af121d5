"""The runtime server over real HTTP on the tiny model: the openai client, SSE, errors, fuzzing."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import openai
import pytest

from tests.serving_support import get, post, raw, running

KEY = "test-key"


@pytest.fixture(scope="module")
def rt(tiny_model_dir, tmp_path_factory):
    with running(tiny_model_dir, tmp_path_factory.mktemp("http"), api_key=KEY, max_tokens=32, max_body_bytes=1 << 16) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key=KEY, max_retries=0)


AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def chat(**kw) -> dict:
    return {"model": "base", "messages": HELLO, "max_tokens": 8, **kw}


def endless(rt, **kw) -> dict:
    """A request that runs to max_tokens: the end-of-turn token is banned."""
    ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
    return chat(logit_bias=ban, **kw)


def wait_idle(rt) -> None:
    """Until the engine holds no request (the thing a dropped client must cause)."""
    while rt.engine.n_active or rt.engine.queued:
        time.sleep(0.01)


def wait_client_gone(rt, count: float) -> float:
    """The client_gone count once the engine is idle and it reached `count` (the model thread
    notices a hang-up on its next step, so the count can trail the socket's close), or after
    a minute whatever it is, for the assertion to report."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait_idle(rt)
        if rt.metrics.rejected.value(reason="client_gone") >= count:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # a second count arriving late would show here
    return rt.metrics.rejected.value(reason="client_gone")


def test_models_lists_the_base_with_its_digest(client, rt):
    models = client.models.list().data
    assert models[0].id == rt.registry.base_name
    assert models[0].model_extra["digest"] == rt.registry.base_digest


def test_logprob_bytes_are_the_bytes_a_token_writes(client, rt):
    """A token holding part of a UTF-8 character decodes to U+FFFD alone; `bytes` must be
    its real bytes, so a client joining them gets the output text back."""
    from tinygpt.runtime.grammar.vocabulary import TokenizerInfo

    table = TokenizerInfo.from_tokenizer(rt.engine.tokenizer).token_bytes
    partial = table.index(b"\xe2")  # the first byte of "—", "€", "…": a token of its own
    r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=2, temperature=0, logprobs=True,
                                       top_logprobs=2, logit_bias={str(partial): 100})
    (first, second) = r.choices[0].logprobs.content
    assert first.bytes == second.bytes == [0xE2] and first.token == "\ufffd"
    assert first.top_logprobs[0].bytes == [0xE2]


def test_completion_shape_usage_and_logprobs(client, rt):
    r = client.chat.completions.create(
        model=rt.registry.base_name, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob <= 0 and t.logprob >= t.top_logprobs[-1].logprob - 1e-4


def test_stream_equals_non_stream_and_reports_usage(client, rt):
    kw = dict(model="base", messages=HELLO, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_streamed_logprobs_line_up_with_the_streamed_text(client):
    chunks = list(client.chat.completions.create(model="base", messages=HELLO, max_tokens=10, logprobs=True, stream=True, seed=5))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in tokens) == text and all(t.logprob <= 0 for t in tokens)


def test_non_streaming_responses_report_server_timing(client):
    raw = client.chat.completions.with_raw_response.create(model="base", messages=HELLO, max_tokens=3)
    parts = dict(p.strip().split(";dur=") for p in raw.headers["server-timing"].split(","))
    assert set(parts) == {"queue", "prefill", "decode"} and all(float(v) >= 0 for v in parts.values())


def test_max_completion_tokens_and_seed(client):
    r = client.chat.completions.create(model="base", messages=HELLO, max_completion_tokens=3, temperature=1.0)
    assert r.usage.completion_tokens <= 3
    a = client.chat.completions.create(model="base", messages=HELLO, max_tokens=10, temperature=1.5, seed=11)
    b = client.chat.completions.create(model="base", messages=HELLO, max_tokens=10, temperature=1.5, seed=11)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_string_ends_the_answer_before_it(client):
    free = client.chat.completions.create(model="base", messages=HELLO, max_tokens=12, temperature=0)
    text = free.choices[0].message.content
    assert len(text) >= 3, "the tiny model should say something"
    stop = text[1:3]
    r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(model="no-such-model"), openai.NotFoundError),
        (dict(max_tokens=-5), openai.BadRequestError),
        (dict(max_tokens=100_000), openai.BadRequestError),
        (dict(n=2), openai.BadRequestError),
        (dict(top_logprobs=2), openai.BadRequestError),
        (dict(tool_choice="required"), openai.BadRequestError),
        (dict(logit_bias={"999999": 5}), openai.BadRequestError),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), openai.BadRequestError),
    ],
)
def test_bad_input_is_a_clear_4xx_error_object(client, kwargs, error):
    args = dict(model="base", messages=HELLO, max_tokens=4) | kwargs
    with pytest.raises(error) as e:
        client.chat.completions.create(**args)
    assert e.value.body["message"]


def test_context_overflow_is_400_with_its_code(client):
    long = " ".join(["word"] * 5000)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": long}], max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_api_key_is_required_and_health_is_open(rt):
    status, body = post(rt.port, "/v1/chat/completions", chat())
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, body = get(rt.port, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # No --admin-key: the admin API is off, and the API key does not open it.
    assert get(rt.port, "/admin/adapters", {"Authorization": "Bearer wrong"})[0] == 403
    assert get(rt.port, "/admin/adapters", AUTH)[0] == 403


def test_raw_http_errors(rt):
    status, body = post(rt.port, "/v1/chat/completions", b"{nope", AUTH)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, _ = post(rt.port, "/v1/chat/completions", b"x" * (1 << 17), AUTH)
    assert status == 413
    status, _ = raw(rt.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer test-key\r\n\r\n")
    assert status == 411
    status, _ = raw(rt.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    assert status == 400
    status, _ = get(rt.port, "/v1/nothing-here", AUTH)
    assert status == 404
    status, _ = get(rt.port, "/v1/chat/completions", AUTH)
    assert status == 405


def test_metrics_count_requests_and_tokens(client, rt):
    client.chat.completions.create(model="base", messages=HELLO, max_tokens=2)
    status, body = get(rt.port, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'tinygpt_requests_total{endpoint="chat",status="200"}' in text
    assert "tinygpt_completion_tokens_total" in text and "tinygpt_time_to_first_token_seconds_bucket" in text
    assert "tinygpt_queue_depth 0" in text


def test_metrics_split_the_model_threads_decode_time_by_phase(client, rt):
    def phases() -> dict[str, float]:
        text = get(rt.port, "/metrics")[1].decode()
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('tinygpt_decode_step_seconds_total{phase="')}

    before = phases()
    ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
    client.chat.completions.create(model="base", messages=HELLO, max_tokens=8, logit_bias=ban)
    after = phases()
    assert set(after) == {"prefill", "launch", "wait", "step", "tokens"}
    # A request that decoded 8 tokens spent time launching steps and handling its tokens.
    assert after["launch"] > before.get("launch", 0.0) and after["tokens"] > before.get("tokens", 0.0)
    assert all(v >= 0.0 for v in after.values())
    # The model thread's CPU time over those steps is reported too, and is not more than
    # the wall time the phases add up to (CPU time is a part of it).
    text = get(rt.port, "/metrics")[1].decode()
    cpu = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tinygpt_decode_step_cpu_seconds_total"))
    assert 0.0 < cpu <= sum(after.values()) + 1e-3


def _stream_then_drop(rt, max_tokens: int) -> None:
    port = rt.port
    body = json.dumps(endless(rt, max_tokens=max_tokens, stream=True)).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head.encode() + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()


def test_disconnect_mid_stream_frees_the_slot(rt, client):
    before = rt.metrics.rejected.value(reason="client_gone")
    _stream_then_drop(rt, max_tokens=1500)
    assert wait_client_gone(rt, before + 1) == before + 1
    assert client.chat.completions.create(model="base", messages=HELLO, max_tokens=2).choices


def test_disconnect_while_waiting_non_streaming_frees_the_slot(rt):
    before = rt.metrics.rejected.value(reason="client_gone")
    body = json.dumps(endless(rt, max_tokens=1500)).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", rt.port))
    s.sendall(head.encode() + body)
    while not rt.engine.n_active:
        time.sleep(0.005)
    s.close()
    assert wait_client_gone(rt, before + 1) == before + 1


def test_full_queue_answers_503_with_retry_after(tiny_model_dir, tmp_path):
    with running(tiny_model_dir, tmp_path, max_batch=1, max_queue=1, max_tokens=1500, record=False) as rt:
        held = []

        def occupy():
            held.append(post(rt.port, "/v1/chat/completions", endless(rt, max_tokens=1500)))

        threads = [threading.Thread(target=occupy) for _ in range(2)]
        threads[0].start()
        while not rt.engine.n_active:
            time.sleep(0.005)
        threads[1].start()
        while not rt.engine.queued:
            time.sleep(0.005)
        status, body = raw(
            rt.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(json.dumps(chat()).encode()), json.dumps(chat()).encode()),
        )
        head_ok = status == 503 and json.loads(body)["error"]["code"] == "server_busy"
        for t in threads:
            t.join()
        assert head_ok
        assert [s for s, _ in held] == [200, 200]


def test_slow_clients_do_not_block_others(rt, client):
    # Connections that send half a request and stall each hold only their own thread.
    stalled = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", rt.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"mo")
        stalled.append(s)
    try:
        assert client.chat.completions.create(model="base", messages=HELLO, max_tokens=2).choices
    finally:
        for s in stalled:
            s.close()


def test_connections_beyond_the_limit_get_a_quick_503(tiny_model_dir, tmp_path):
    with running(tiny_model_dir, tmp_path, max_connections=3, record=False) as rt:
        idle = [socket.create_connection(("127.0.0.1", rt.port)) for _ in range(3)]
        try:
            while rt.httpd._open < 3:
                time.sleep(0.005)
            status, body = get(rt.port, "/health")
            assert status == 503 and json.loads(body)["error"]["code"] == "server_busy"
        finally:
            for s in idle:
                s.close()
        while rt.httpd._open:
            time.sleep(0.005)
        assert get(rt.port, "/health")[0] == 200


def _mutations(valid: dict, rng: random.Random) -> list[bytes]:
    """Malformed requests: broken JSON, wrong types, odd values, garbage bytes."""
    text = json.dumps(valid)
    values = [None, -1, 0, 10**30, 1.5e308, "", "x" * 300, [], {}, True, [1, 2], {"a": None}]
    out = []
    for _ in range(150):
        body = dict(valid)
        key = rng.choice(list(valid) + ["temperature", "top_p", "stop", "tools", "tool_choice", "seed", "logprobs",
                                        "response_format", "stream_options", "n", "logit_bias", "metadata", "zzz"])
        body[key] = rng.choice(values)
        out.append(json.dumps(body).encode())
    for _ in range(70):
        cut = rng.randrange(len(text))
        out.append(text[:cut].encode())
        i = rng.randrange(len(text))
        out.append((text[:i] + rng.choice("{}[]\",:\\\x00") + text[i + 1 :]).encode("utf-8", "surrogatepass"))
    for _ in range(40):
        out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    nested = b"[" * 10000 + b"]" * 10000
    out += [nested, b"null", b"1", b'"str"', json.dumps({**valid, "messages": [{"role": "user"}] * 3}).encode()]
    return out


def test_fuzz_hundreds_of_malformed_requests_then_a_valid_one_succeeds(rt, client):
    rng = random.Random(1234)
    valid = chat(max_tokens=2)
    statuses = []
    for body in _mutations(valid, rng):
        status, _ = post(rt.port, "/v1/chat/completions", body, AUTH)
        statuses.append(status)
    # A few mutations are still valid requests (e.g. seed=0); everything else is a 4xx.
    assert len(statuses) >= 300
    assert all(s == 200 or 400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert sum(400 <= s < 500 for s in statuses) > 250
    for _ in range(100):
        raw(rt.port, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n")
    r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert get(rt.port, "/health")[0] == 200
