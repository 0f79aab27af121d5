"""Load test: clients stream completions while a specialist is swapped several times.

Zero failed requests, and every response attributable to exactly one version: its
`X-TinyGPT-Model` header, the version its recorded trajectory step names (with that
version's digest), and its text, which is the greedy answer of that version and of no
other. Swaps go the production way: the pin file changes on disk, the watcher pulls,
verifies and swaps. Bounded: 4 streaming clients plus one long stream per swap, 6 swaps,
loopback only.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from tests.hotswap_support import PROMPT, following, make_adapters, publish_version, serving, wait_until
from tests.registry_support import write_project
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory

CLIENTS = 4
SWAPS = ["2", "3", "1", "2", "3", "1"]
TOKENS = 24
LONG_TOKENS = 300


def stream(port: int, ban: dict, session: str, max_tokens: int, on_first=None, model: str = "mail") -> dict:
    """One streamed chat completion over a raw loopback connection; what came back, and when."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "logit_bias": ban}
    out = {"session": session, "start": time.monotonic(), "text": "", "finish": None, "done": False, "errors": []}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json", "X-TinyGPT-Session": session})
        resp = conn.getresponse()
        out["status"] = resp.status
        out["headers"] = {k.lower(): v for k, v in resp.getheaders()}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                out["done"] = True
                break
            event = json.loads(data)
            if "error" in event:
                out["errors"].append(event["error"])
                continue
            for choice in event.get("choices", []):
                if out.get("first") is None:
                    out["first"] = time.monotonic()
                    if on_first:
                        on_first()
                out["text"] += choice["delta"].get("content") or ""
                out["finish"] = choice.get("finish_reason") or out["finish"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["errors"].append(repr(e))
    finally:
        conn.close()
        out["end"] = time.monotonic()
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return make_adapters(tmp_path_factory.mktemp("adapters"), tiny_model_dir, 3)


def test_streams_under_repeated_swaps_never_fail_and_each_has_exactly_one_version(
    tiny_model_dir, tmp_path, monkeypatch, adapters
):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    reg = tmp_path / "reg"
    digests = {v: publish_version(reg, v, adapters[int(v) - 1], tiny_model_dir).digest for v in ("1", "2", "3")}
    project = write_project(tmp_path, [{"name": "mail", "version": "1"}], ["reg"])
    results: list[dict] = []
    long_streams: list[dict] = []
    swapped_at: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    with following(tiny_model_dir, tmp_path, project, record=True, prefix_cache_mb=256, max_tokens=LONG_TOKENS) as (rt, swapper):
        ban = {str(t): -100 for t in rt.engine.tokenizer.eos_token_ids}
        # The greedy answer of every version, from the same packages loaded under other names.
        refs = {}
        for v in digests:
            rt.load_adapter(f"ref{v}", str(reg / "mail" / v), "0")
            refs[v] = stream(rt.port, ban, f"ref-{v}", TOKENS, model=f"ref{v}")["text"]
            rt.unload_adapter(f"ref{v}")
        assert len(set(refs.values())) == 3, "the versions must answer differently for the text check to mean anything"

        def client(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 200:
                r = stream(rt.port, ban, f"c{i}-{n}", TOKENS)
                with lock:
                    results.append(r)
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            for k, version in enumerate(SWAPS):
                with lock:
                    seen = len(results)
                wait_until(lambda seen=seen: len(results) >= seen + 3, "clients kept completing between swaps")
                # A long stream under way when the pin changes must finish on the old version.
                first = threading.Event()
                holder: dict = {}
                long = threading.Thread(target=lambda holder=holder, k=k, first=first: holder.update(stream(rt.port, ban, f"long-{k}", LONG_TOKENS, first.set)))
                long.start()
                assert first.wait(120), "the long stream never started"
                begin = time.monotonic()
                write_project(tmp_path, [{"name": "mail", "version": version}], ["reg"])
                wait_until(lambda version=version: serving(swapper) == version, f"swap {k + 1} to mail@{version}")
                swapped_at.append((version, begin, time.monotonic()))
                long.join()
                long_streams.append(holder)
        finally:
            stop.set()
            for t in threads:
                t.join()

    everything = results + long_streams
    failed = [r for r in everything if r.get("status") != 200 or not r["done"] or r["errors"] or r["finish"] != "length"]
    assert not failed, f"{len(failed)} of {len(everything)} requests failed: {failed[:3]}"
    assert len(results) >= CLIENTS + 3 * len(SWAPS)

    # Each response: one version in its header, the same in its trajectory, and that version's text.
    steps = {}
    for f in (tmp_path / "trajectories").glob("*.msgpack"):
        traj = read_any(f, Trajectory)
        for s in traj.steps:
            steps[traj.id, s.index] = s
    for r in everything:
        served = r["headers"]["x-tinygpt-model"]
        name, _, version = served.partition("@")
        assert name == "mail" and version in digests, served
        step = steps[r["headers"]["x-tinygpt-trajectory"], int(r["headers"]["x-tinygpt-step"])]
        assert (step.adapter_version, step.adapter_digest) == (version, digests[version]), r["session"]
        text = r["text"] if r["session"].startswith("c") else r["text"][: len(refs[version])]
        assert text == refs[version], f"{r['session']} says {served} but its text is not that version's"
    assert {r["headers"]["x-tinygpt-model"] for r in results} == {f"mail@{v}" for v in digests}

    # Long streams that were decoding when their swap happened finished on the old version.
    old = ["1", *SWAPS[:-1]]
    assert [s["headers"]["x-tinygpt-model"] for s in long_streams] == [f"mail@{v}" for v in old]
    spanning = [s for s, (_, begin, done) in zip(long_streams, swapped_at) if s["first"] < begin and s["end"] > done]
    assert spanning, "no long stream was still decoding when its swap completed"
