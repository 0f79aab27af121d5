"""Fuzzing the HTTP API (tests/fuzz_http.py): hostile requests get 4xx, never a 5xx or a
traceback; afterwards a valid request is still served and every trajectory decodes.

The always-on run is a few hundred requests; the slow one is the issue's 2,000+
(`benchmarks/http_fuzz.py` runs it against a `tinygpt serve` process and records counts).
"""

from __future__ import annotations

import logging

import openai
import pytest

from tests.fuzz_http import check_trajectories, run_fuzz
from tests.serving_support import running

MAX_BODY = 1 << 16


def fuzz_and_check(tiny_model_dir, tmp_path, caplog, n: int, seed: int) -> None:
    caplog.set_level(logging.ERROR, logger="tinygpt")
    with running(tiny_model_dir, tmp_path, max_tokens=8, max_body_bytes=MAX_BODY) as rt:
        tally = run_fuzz(rt.port, n, seed=seed, max_body=MAX_BODY)
        assert not tally.unexpected, tally.unexpected[:10]
        assert not [s for s in tally.statuses if s >= 500 and s != 505], tally.as_dict()
        assert len(tally.by_kind) == 11 and tally.statuses[200] > 0
        # Still serving, through the official client.
        client = openai.OpenAI(base_url=rt.url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "still there?"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length") and rt.engine.healthy
        rt.recorder.seal_all().result()
        assert check_trajectories(tmp_path / "trajectories", tally.trajectories) >= len(tally.trajectories) > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records][:5]


def test_fuzzing_the_http_api(tiny_model_dir, tmp_path, caplog):
    fuzz_and_check(tiny_model_dir, tmp_path, caplog, n=240, seed=1)


@pytest.mark.slow
def test_fuzzing_the_http_api_2000_requests(tiny_model_dir, tmp_path, caplog):
    fuzz_and_check(tiny_model_dir, tmp_path, caplog, n=2000, seed=2)
