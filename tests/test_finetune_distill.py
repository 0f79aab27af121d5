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
    )
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
    )
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
    )
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


def _chat_answer(messages: list[dict]) -> dict:
    """The fake teacher's chat reply: the same calls as `_answer`, as OpenAI tool_calls."""
    text = _answer("<|im_start|>user\n" + messages[-1]["content"])
    call = json.loads(text.split("\n")[1]) if "arguments\": {\n" not in text else None
    if call is None:
        return {"role": "assistant", "content": text}
    function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": function}]}


class _Teacher(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        if self.path.endswith("/chat/completions"):
            reply = {"choices": [{"message": _chat_answer(body["messages"]), "finish_reason": "stop"}]}
        else:
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


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_sequence_distillation_from_an_openai_compatible_teacher_keeps_only_accepted_answers(
    api, tiny_base, task_data, endpoint, tmp_path
):
    _Teacher.requests = []
    record = run(
        job(tiny_base, task_data, tmp_path / "out", "distill-seq", steps=20, teacher_endpoint=endpoint, teacher_api=api)
    )
    prompts = len(load_dataset(task_data).rows("train"))
    assert len(_Teacher.requests) == prompts
    path, body = _Teacher.requests[0]
    if api == "chat":
        assert path == "/v1/chat/completions" and body["messages"][-1]["role"] == "user"
        assert body["messages"][0]["role"] == "system"  # the template's default system turn, as recorded
    else:
        assert path == "/v1/completions" and body["stop"] == ["<|im_end|>"]
    # The broken timer calls are rejected by the label rules; the rest are trained on.
    assert record.metrics["teacher_rejected"] > 0 and record.metrics["teacher_accepted"] > 0
    assert record.metrics["teacher_accepted"] + record.metrics["teacher_rejected"] == prompts
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 1.0


def test_chatml_prompts_map_back_to_the_chat_request(tiny_base):
    from mlx_lm.utils import load_tokenizer

    from tests.finetune_fixtures import TOOLS
    from tinygpt.workers.training.chatml import parse_prompt, render_answer

    tokenizer = load_tokenizer(tiny_base)
    call = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 3}'},
        {"role": "assistant", "content": "It is 3 degrees."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    parsed_messages, parsed_tools = parse_prompt(text)
    assert parsed_tools == TOOLS
    again = tokenizer.apply_chat_template(parsed_messages, tools=parsed_tools, add_generation_prompt=True, tokenize=False)
    assert again == text  # the request the recorded prompt came from, up to ids
    rendered = tokenizer.apply_chat_template(messages[:3], tools=TOOLS, tokenize=False)
    assert rendered.endswith(render_answer(None, [call]) + "<|im_end|>\n")
    assert parse_prompt("plain text, not ChatML") is None


def test_a_local_teacher_decodes_under_the_runtimes_grammar_for_the_prompts_tools(tiny_base, teacher, tmp_path):
    from tests.finetune_fixtures import TOOLS, import_task
    from tinygpt.workers.training.chatml import TOOL_CALL

    data = import_task(tiny_base, tmp_path / "with-tools", n=12, tools=True)
    recorder = Recorder()
    record = run(
        job(
            tiny_base, data, tmp_path / "out", "distill-seq", teacher=teacher, steps=2, teacher_max_tokens=96,
            teacher_tool_choice="required", teacher_accept="tests.finetune_fixtures:accept_any",
        ),
        callbacks=recorder,
    )
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    names = {t["function"]["name"] for t in TOOLS}
    assert record.metrics["teacher_accepted"] > 0
    for ids, mask in recorder.rows:
        answer = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        # Every answer is nothing but well-formed calls of listed tools, then the end token.
        calls = [json.loads(c) for c in TOOL_CALL.findall(answer)]
        assert calls and all(c["name"] in names and isinstance(c["arguments"], dict) for c in calls)
        assert TOOL_CALL.sub("", answer).strip("\n") == "<|im_end|>"


def test_default_label_rules():
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert default_accept("p", good, good.replace("Oslo", "Rome"))
    assert not default_accept("p", good.replace("get_weather", "set_timer"), good)  # another function
    assert not default_accept("p", '<tool_call>\n{"name": "get_weather", \n</tool_call>', good)  # not JSON
    assert not default_accept("p", "It is sunny.", good)  # no call where one was made
    assert not default_accept("p", "  ", "Hello")
    assert default_accept("p", "Hi there.", "Hello")


def test_default_label_rules_check_calls_against_the_prompts_tools(tiny_base):
    from mlx_lm.utils import load_tokenizer

    from tests.finetune_fixtures import TOOLS

    prompt = load_tokenizer(tiny_base).apply_chat_template(
        [{"role": "user", "content": "Timer for 5 minutes"}], tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    call = '<tool_call>\n{"name": "set_timer", "arguments": %s}\n</tool_call>'
    assert default_accept(prompt, call % '{"minutes": 5}', call % '{"minutes": 5}')
    assert not default_accept(prompt, call % '{"minutes": "five"}', call % '{"minutes": 5}')  # schema says integer
    assert not default_accept(prompt, call % "{}", call % '{"minutes": 5}')  # required argument missing
