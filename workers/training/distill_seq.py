"""Sequence-level distillation: a teacher answers the dataset's prompts; the student trains on them.

A row's prompt is everything before its last trained span (the final assistant turn);
the recorded answer is kept only as the reference the acceptance rules compare with.
The teacher is either a local mlx-lm model or any OpenAI-compatible server (`…/v1`).

Ids stay ids where they can: a local teacher that shares the student's tokenizer gets
the prompt ids as recorded and its sampled ids are trained on as sampled. A teacher with
another tokenizer can only exchange text, so its prompt is the decoded prompt and its
answer is tokenized once by the student's tokenizer (the new row then records those ids).
"""

from __future__ import annotations

import importlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tinygpt.runtime.contracts.dataset import DatasetRow

from .errors import TeacherError

Accept = Callable[[str, str, str], bool]

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def split_prompt(row: DatasetRow) -> tuple[list[int], list[int]]:
    """(prompt ids, recorded answer ids): the answer is the last run of mask-1 tokens."""
    mask = row.loss_mask
    end = max(i for i, m in enumerate(mask) if m)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return row.input_ids[:start], row.input_ids[start : end + 1]


def _tool_calls(text: str) -> list[dict] | None:
    """Parsed `<tool_call>` blocks (Qwen / TinyGPT ChatML style); None if one is not JSON."""
    calls = []
    for block in _TOOL_CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append(call)
    return calls


def default_accept(prompt: str, answer: str, reference: str) -> bool:
    """The built-in label rules: a non-empty answer; when the recorded answer called
    tools, the teacher's must too, as well-formed calls to the same functions."""
    if not answer.strip():
        return False
    wanted = _tool_calls(reference)
    if not wanted:
        return "<tool_call>" not in answer or bool(_tool_calls(answer))
    got = _tool_calls(answer)
    return bool(got) and [c["name"] for c in got] == [c["name"] for c in wanted]


def load_accept(spec: str | None) -> Accept:
    """`module:function` named by `teacher_accept`, else the built-in rules."""
    if not spec:
        return default_accept
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise TeacherError(f"teacher_accept={spec!r}: cannot import it ({e})") from None


@dataclass
class Answer:
    ids: list[int] | None  # in the student's vocabulary when known, else None
    text: str
    finished: bool  # stopped on EOS rather than at max_tokens


class LocalTeacher:
    """An mlx-lm model answering prompt ids; `same_vocab` when it shares the student's tokenizer."""

    def __init__(self, model, tokenizer, same_vocab: bool, temperature: float, max_tokens: int):
        self.model, self.tokenizer, self.same_vocab = model, tokenizer, same_vocab
        self.temperature, self.max_tokens = temperature, max_tokens

    def answer(self, prompt_ids: list[int], prompt_text: str) -> Answer:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        ids = prompt_ids if self.same_vocab else self.tokenizer.encode(prompt_text, add_special_tokens=False)
        out, finished = [], False
        sampler = make_sampler(temp=self.temperature)
        for token, _ in generate_step(mx.array(ids), self.model, max_tokens=self.max_tokens, sampler=sampler):
            token = int(token)
            if token in self.tokenizer.eos_token_ids:
                out.append(token)
                finished = True
                break
            out.append(token)
        text = self.tokenizer.decode([t for t in out if t not in self.tokenizer.eos_token_ids])
        return Answer(ids=out if self.same_vocab else None, text=text, finished=finished)


class EndpointTeacher:
    """An OpenAI-compatible `/v1/completions` server answering the raw (templated) prompt."""

    def __init__(self, base_url: str, model: str, temperature: float, max_tokens: int, stop: list[str]):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.temperature, self.max_tokens, self.stop = model, temperature, max_tokens, stop

    def answer(self, prompt_ids: list[int], prompt_text: str) -> Answer:
        body = {
            "model": self.model,
            "prompt": prompt_text,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": self.stop,
        }
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
            raise TeacherError(f"teacher endpoint {self.url} failed: {e}") from None
        try:
            choice = reply["choices"][0]
            return Answer(ids=None, text=choice["text"], finished=choice.get("finish_reason") != "length")
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher endpoint {self.url} returned no completion: {str(reply)[:200]}") from None


def teacher_rows(rows: list[DatasetRow], teacher, student_tokenizer, accept: Accept, say: Callable[[str], None]):
    """New rows (recorded prompt + teacher answer, mask 1 on the answer) the rules accept.

    Returns (rows, stats). Answers cut off at max_tokens are dropped: a truncated answer
    would teach the student to stop mid-sentence.
    """
    eos = student_tokenizer.eos_token_id
    kept, stats = [], {"prompts": len(rows), "accepted": 0, "rejected": 0, "truncated": 0}
    for n, row in enumerate(rows, 1):
        prompt_ids, reference_ids = split_prompt(row)
        prompt_text = student_tokenizer.decode(prompt_ids)
        answer = teacher.answer(prompt_ids, prompt_text)
        if not answer.finished:
            stats["truncated"] += 1
            continue
        reference = student_tokenizer.decode(reference_ids)
        if not accept(prompt_text, answer.text, reference):
            stats["rejected"] += 1
            continue
        ids = answer.ids if answer.ids is not None else student_tokenizer.encode(answer.text, add_special_tokens=False) + [eos]
        kept.append(
            DatasetRow(
                id=f"{row.id}:teacher",
                input_ids=list(prompt_ids) + ids,
                loss_mask=[0] * len(prompt_ids) + [1] * len(ids),
                trajectory_id=row.trajectory_id,
                step=row.step,
                split=row.split,
                weight=row.weight,
            )
        )
        stats["accepted"] += 1
        if n % 50 == 0:
            say(f"teacher: {n}/{len(rows)} prompts answered, {stats['accepted']} accepted")
    if not kept:
        raise TeacherError(
            f"the teacher gave no acceptable answer for {len(rows)} prompts "
            f"({stats['rejected']} rejected by the label rules, {stats['truncated']} cut off at max_tokens)"
        )
    return kept, stats
