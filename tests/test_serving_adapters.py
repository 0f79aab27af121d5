"""Specialists on one base: load, per-request switch, atomic hot swap, unload, batching."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref

import openai
import pytest

from tests.serving_support import get, post, running, write_lora_adapter
from tinygpt.runtime.serving.adapters import BASE

ADMIN = {"Authorization": "Bearer admin"}
PROMPT = [{"role": "user", "content": "Send an email to Alice saying the meeting moved to Thursday."}]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "v1": write_lora_adapter(root / "v1", tiny_model_dir, seed=1, std=0.2),
        "v2": write_lora_adapter(root / "v2", tiny_model_dir, seed=2, std=0.2),
        "dora": write_lora_adapter(root / "dora", tiny_model_dir, seed=3, std=0.2, dora=True),
    }


@pytest.fixture
def rt(tiny_model_dir, tmp_path, adapters):
    # No prefix cache: greedy outputs compared across runs must come from identical prefills.
    dirs = [str(adapters["v1"].parent), str(tmp_path)]
    with running(tiny_model_dir, tmp_path, admin_key="admin", prefix_cache_mb=0, max_tokens=64, adapter_dirs=dirs) as rt:
        yield rt


def client_of(rt):
    return openai.OpenAI(base_url=rt.url + "/v1", api_key="x", max_retries=0)


def load(rt, name, path, **kw) -> dict:
    status, body = post(rt.port, "/admin/adapters", {"name": name, "path": str(path), **kw}, ADMIN)
    assert status == 200, body
    return json.loads(body)


def greedy(rt, model, max_tokens=24, **kw):
    ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
    raw = client_of(rt).chat.completions.with_raw_response.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0, logit_bias=ban, **kw
    )
    return raw.parse().choices[0].message.content, raw.headers["x-tinygpt-model"]


def test_an_adapter_changes_answers_and_leaves_the_base_untouched(rt, adapters):
    base_before, served = greedy(rt, "base")
    assert served == rt.registry.base_name
    base_model = rt.engine._models[BASE]
    loaded = load(rt, "mail", adapters["v1"], version="1")
    assert loaded["loaded"]["version"] == "1" and loaded["retired"] is None
    text, served = greedy(rt, "mail")
    assert served == "mail@1" and text != base_before
    assert greedy(rt, "base")[0] == base_before
    assert greedy(rt, "mail@1")[0] == text
    # The base module tree is the same object and was not wrapped in LoRA layers.
    assert rt.engine._models[BASE] is base_model
    assert type(base_model.layers[0].self_attn.q_proj).__name__ == "Linear"
    ids = [m.id for m in client_of(rt).models.list().data]
    assert ids == [rt.registry.base_name, "mail", "mail@1"]
    card = client_of(rt).models.retrieve("mail")
    assert card.model_extra["version"] == "1" and len(card.model_extra["digest"]) == 64


def test_hot_swap_lets_requests_in_flight_finish_on_the_old_weights(rt, adapters):
    load(rt, "mail", adapters["v1"], version="1")
    long_v1, _ = greedy(rt, "mail", max_tokens=600)
    load(rt, "probe", adapters["v2"], version="x")
    expect_v2, _ = greedy(rt, "probe@x")

    stream = client_of(rt).chat.completions.create(
        model="mail", messages=PROMPT, max_tokens=600, temperature=0, stream=True,
        logit_bias={str(t): -100 for t in rt.engine.tokenizer.eos_token_ids},
    )
    chunks = iter(stream)
    first = next(chunks)
    swapped = load(rt, "mail", adapters["v2"], version="2")
    in_flight_when_swapped = rt.engine.n_active == 1
    assert swapped["retired"] == "mail@1"
    after, served = greedy(rt, "mail")
    results = []

    def hammer():
        results.append(greedy(rt, "mail", max_tokens=4)[1])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    rest = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    for t in threads:
        t.join()
    assert in_flight_when_swapped
    assert (first.choices[0].delta.content or "") + rest == long_v1
    assert served == "mail@2" and after == expect_v2
    assert results == ["mail@2"] * 4
    # The retired version is gone once its last request finished.
    rt.engine.call(lambda engine: None).result()
    assert "mail@1" not in rt.engine._models
    status, _ = post(rt.port, "/v1/chat/completions", {"model": "mail@1", "messages": PROMPT})
    assert status == 404


def test_unload_frees_the_adapter_and_404s_new_requests(rt, adapters):
    load(rt, "mail", adapters["v1"], version="1")
    greedy(rt, "mail", max_tokens=2)
    ref = weakref.ref(rt.engine._models["mail@1"])
    status, body = get(rt.port, "/admin/adapters", ADMIN)
    assert status == 200 and json.loads(body)["current"] == {"mail": "mail@1"}
    status, body = post(rt.port, "/admin/adapters", {"name": "x", "path": str(adapters["v1"].parent / "nonexistent")}, ADMIN)
    assert status == 400
    req = "DELETE /admin/adapters/mail HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer admin\r\nConnection: close\r\n\r\n"
    from tests.serving_support import raw

    status, body = raw(rt.port, req.encode())
    assert status == 200 and json.loads(body)["unloaded"] == ["mail@1"]
    gc.collect()
    assert ref() is None
    with pytest.raises(openai.NotFoundError):
        greedy(rt, "mail")
    assert greedy(rt, "base")[0]


def test_admin_needs_the_admin_key_and_rejects_bad_adapters(rt, adapters, tmp_path):
    assert post(rt.port, "/admin/adapters", {"name": "m", "path": str(adapters["v1"])})[0] == 401
    assert post(rt.port, "/admin/adapters", {"name": "m", "path": str(adapters["v1"])}, {"Authorization": "Bearer no"})[0] == 401
    # Shapes that do not fit this base: rank in the config disagrees with the weights.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapters.safetensors").write_bytes((adapters["v1"] / "adapters.safetensors").read_bytes())
    config = json.loads((adapters["v1"] / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 4
    (bad / "adapter_config.json").write_text(json.dumps(config))
    status, body = post(rt.port, "/admin/adapters", {"name": "m", "path": str(bad)}, ADMIN)
    assert status == 400 and "does not fit" in json.loads(body)["error"]["message"]
    config["fine_tune_type"] = "full"
    (bad / "adapter_config.json").write_text(json.dumps(config))
    assert post(rt.port, "/admin/adapters", {"name": "m", "path": str(bad)}, ADMIN)[0] == 400
    assert post(rt.port, "/admin/adapters", {"name": "base", "path": str(adapters["v1"])}, ADMIN)[0] == 400
    load(rt, "m", adapters["v1"], version="1")
    assert post(rt.port, "/admin/adapters", {"name": "m", "path": str(adapters["v2"]), "version": "1"}, ADMIN)[0] == 409
    assert greedy(rt, "m")[1] == "m@1"


def test_admin_is_disabled_without_a_key(tiny_model_dir, tmp_path, adapters):
    with running(tiny_model_dir, tmp_path, record=False) as rt:
        assert post(rt.port, "/admin/adapters", {"name": "m", "path": str(adapters["v1"])})[0] == 403


def test_dora_adapters_and_startup_adapters_are_served(tiny_model_dir, tmp_path, adapters):
    with running(tiny_model_dir, tmp_path, adapters=[("d", str(adapters["dora"]))], record=False) as rt:
        assert greedy(rt, "d")[1].startswith("d@")

        def logprobs(model):
            r = client_of(rt).chat.completions.create(model=model, messages=PROMPT, max_tokens=4, temperature=0, logprobs=True)
            return [t.logprob for t in r.choices[0].logprobs.content]

        assert logprobs("d") != logprobs("base")


def test_concurrent_requests_for_one_specialist_decode_as_one_batch(rt, adapters):
    load(rt, "mail", adapters["v1"], version="1")
    steps0 = rt.metrics.decode_steps.value()
    tokens0 = rt.metrics.completion_tokens.value(model="mail")
    # Hold the model thread until all six requests wait in its queue, so the test checks
    # that queued requests for one specialist decode together, not how fast six HTTP
    # threads reach the server on a busy machine (a lone tiny request decodes in ~40 ms).
    release = threading.Event()
    held = rt.engine.call(lambda engine: release.wait(120))
    threads = [threading.Thread(target=greedy, args=(rt, "mail"), kwargs={"max_tokens": 40}) for _ in range(6)]
    for t in threads:
        t.start()
    for _ in range(6000):
        if rt.engine.queued == 6:
            break
        time.sleep(0.01)
    release.set()
    assert held.result(timeout=120) is True
    for t in threads:
        t.join()
    tokens = rt.metrics.completion_tokens.value(model="mail") - tokens0
    steps = rt.metrics.decode_steps.value() - steps0
    assert tokens == 240
    assert tokens / steps > 1.5, f"{tokens} tokens in {steps} steps: requests were not batched"
