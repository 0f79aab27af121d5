"""Distillation on a tiny teacher/student pair that shares one tokenizer.

The teacher is the student's base after a short full fine-tune on the task, so its
distributions differ from the student's and carry task knowledge.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.finetune_fixtures import job, task_data, teacher, tinygpt_home, tiny_base  # noqa: F401
from tinygpt.workers.finetune import run
from tinygpt.workers.training.data import load_dataset
from tinygpt.workers.training.distill_seq import default_accept, split_prompt
from tinygpt.workers.training.loop import Callbacks


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("top_k", [0, 8])
def test_logit_distillation_reduces_the_kl_to_the_teacher(direction, top_k, tiny_base, task_data, teacher, tmp_path):
    record = run(
        job(
            tiny_base, task_data, tmp_path / "out", "distill-logit", teacher=teacher, steps=20,
            distill_direction=direction, distill_top_k=top_k, distill_temperature=2.0,
        )
    )  # fmt: skip
    # val_loss is the distillation objective (T^2 * KL) on the validation rows.
    assert record.metrics["val_loss"] < 0.9 * record.metrics["initial_val_loss"]
    assert record.teacher_digest and record.method == "distill-logit"


def test_top_k_logits_are_computed_once_and_cached(tiny_base, task_data, teacher, tmp_path, tinygpt_home):
    run(job(tiny_base, task_data, tmp_path / "a", "distill-logit", teacher=teacher, steps=2, distill_top_k=4))
    cached = sorted((tinygpt_home / "distill").glob("*.safetensors"))
    assert len(cached) == 2  # train and valid
    stamps = [p.stat().st_mtime_ns for p in cached]
    run(job(tiny_base, task_data, tmp_path / "b", "distill-logit", teacher=teacher, steps=3, distill_top_k=4))
    assert [p.stat().st_mtime_ns for p in sorted((tinygpt_home / "distill").glob("*.safetensors"))] == stamps


def test_mixing_in_cross_entropy_with_alpha(tiny_base, task_data, teacher, tmp_path):
    record = run(
        job(tiny_base, task_data, tmp_path / "out", "distill-logit", teacher=teacher, steps=10, distill_alpha=0.5,
            distill_top_k=8)
    )  # fmt: skip
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"]


class Recorder(Callbacks):
    def __init__(self):
        self.rows = []

    def on_batch(self, step, batch):
        for b, placed in enumerate(batch.placements):
            for _, start, n in placed:
                ids = [int(batch.inputs[b, start])] + batch.targets[b, start : start + n - 1].tolist()
                self.rows.append((ids, [0] + batch.mask[b, start : start + n - 1].astype(int).tolist()))


def test_sequence_distillation_trains_on_the_local_teachers_own_token_ids(tiny_base, task_data, teacher, tmp_path):
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    import mlx.core as mx

    recorder = Recorder()
    record = run(
        job(
            tiny_base, task_data, tmp_path / "out", "distill-seq", teacher=teacher, steps=20, teacher_max_tokens=48,
            teacher_accept="tests.finetune_fixtures:accept_any",
        ),
        callbacks=recorder,
    )  # fmt: skip
    assert record.metrics["teacher_accepted"] > 0
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 1.0
    prompts = {tuple(split_prompt(r)[0]) for r in load_dataset(task_data).rows("train")}
    model, tokenizer = load(str(teacher))
    ids, mask = recorder.rows[0]
    start = mask.index(1)
    assert tuple(ids[:start]) in prompts  # the recorded prompt, as recorded
    # The answer is the teacher's greedy sample, id for id (same tokenizer: no re-tokenization).
    sampled = []
    for token, _ in generate_step(mx.array(ids[:start]), model, max_tokens=len(ids) - start):
        sampled.append(int(token))
    assert ids[start:] == sampled and all(mask[start:])


def _answer(prompt: str) -> str:
    """The fake teacher: right for weather and search, a broken call for timers."""
    question = prompt.rsplit("<|im_start|>user\n", 1)[1]
    if m := re.search(r"weather in (\w+)", question):
        call = {"name": "get_weather", "arguments": {"city": m.group(1)}}
    elif m := re.search(r"web for (\w+)", question):
        call = {"name": "search_web", "arguments": {"query": m.group(1)}}
    else:
        return '<tool_call>\n{"name": "set_timer", "arguments": {\n</tool_call>'
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


class _Teacher(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        reply = {"choices": [{"text": _answer(body["prompt"]), "finish_reason": "stop"}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_sequence_distillation_from_an_openai_compatible_teacher_keeps_only_accepted_answers(
    tiny_base, task_data, endpoint, tmp_path
):
    _Teacher.requests = []
    record = run(
        job(tiny_base, task_data, tmp_path / "out", "distill-seq", steps=20, teacher_endpoint=endpoint)
    )
    prompts = len([r for r in load_dataset(task_data).rows("train")])
    assert len(_Teacher.requests) == prompts
    assert _Teacher.requests[0]["stop"] == ["<|im_end|>"]
    # The broken timer calls are rejected by the label rules; the rest are trained on.
    assert record.metrics["teacher_rejected"] > 0 and record.metrics["teacher_accepted"] > 0
    assert record.metrics["teacher_accepted"] + record.metrics["teacher_rejected"] == prompts
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 1.0


def test_default_label_rules():
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert default_accept("p", good, good.replace("Oslo", "Rome"))
    assert not default_accept("p", good.replace("get_weather", "set_timer"), good)  # another function
    assert not default_accept("p", '<tool_call>\n{"name": "get_weather", \n</tool_call>', good)  # not JSON
    assert not default_accept("p", "It is sunny.", good)  # no call where one was made
    assert not default_accept("p", "  ", "Hello")
    assert default_accept("p", "Hi there.", "Hello")
