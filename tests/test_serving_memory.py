"""The prefix cache's byte bound bounds memory: what it holds is what its nbytes says."""

from __future__ import annotations

import json
import threading

from tests.serving_support import freed_by_emptying_the_prefix_cache, post, running


def test_finished_requests_keep_only_their_own_kv_rows_in_the_prefix_cache(tiny_model_dir, tmp_path):
    # Requests decoding together share the batch's KV buffers. A finished one's cache is
    # cut out of them; kept unevaluated, that cut would hold the whole batch's buffers
    # (every row, every layer) while its nbytes counted one row, so memory grew several
    # times past the bound in a long-running daemon.
    with running(tiny_model_dir, tmp_path) as rt:
        def one(i: int) -> None:
            body = {"model": "base", "max_tokens": 8 + 6 * i, "temperature": 0,
                    "messages": [{"role": "user", "content": f"request {i}: " + "tell me more " * (3 + 4 * i)}]}
            status, raw = post(rt.port, "/v1/chat/completions", body)
            assert status == 200, raw

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        freed, nbytes = freed_by_emptying_the_prefix_cache(rt.engine)
    assert nbytes > 0
    assert freed <= 1.1 * nbytes + (256 << 10), json.dumps({"freed": freed, "prefix_nbytes": nbytes})
