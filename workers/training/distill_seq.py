"""Sequence-level distillation: a teacher answers the dataset's prompts; the student trains on them.

A row's prompt is everything before its last trained span (the final assistant turn);
the recorded answer is kept only as the reference the acceptance rules compare with.
The teacher is either a local mlx-lm model or any OpenAI-compatible server (`…/v1`),
e.g. TinyGPT's own runtime serving a bigger model; tools listed in a prompt constrain the
teacher's decoding with the runtime's grammar either way (see chatml.py).

Ids stay ids where they can: a local teacher that shares the student's tokenizer gets
the prompt ids as recorded and its sampled ids are trained on as sampled. A teacher with
another tokenizer can only exchange text, so its prompt is the decoded prompt and its
answer is tokenized once by the student's tokenizer (the new row then records those ids).
"""

from __future__ import annotations

import importlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tinygpt.runtime.contracts.dataset import DatasetRow

from .chatml import TOOL_CALL, parse_prompt, render_answer
from .errors import TeacherError
from .models import vocab_size

Accept = Callable[[str, str, str], bool]


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
    for block in TOOL_CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append(call)
    return calls


def default_accept(prompt: str, answer: str, reference: str) -> bool:
    """The built-in label rules: a non-empty answer; tool calls well-formed and, when the
    prompt lists tools, valid against their parameter schemas (the label stage's
    tool-validity check); and when the recorded answer called tools, the teacher's must
    call the same functions in the same order."""
    if not answer.strip():
        return False
    got = _tool_calls(answer)
    if got is None or ("<tool_call>" in answer and not got):
        return False
    parsed = parse_prompt(prompt)
    if got and parsed is not None and parsed[1]:
        from tinygpt.runtime.contracts.trajectory import ToolCall
        from tinygpt.runtime.tool_schema import call_problem

        tools = {t["function"]["name"]: t["function"] for t in parsed[1]}
        for c in got:
            call = ToolCall(id="teacher", name=c["name"], arguments=json.dumps(c.get("arguments", {})))
            if call_problem(call, tools) is not None:
                return False
    wanted = _tool_calls(reference)
    if wanted:
        return [c["name"] for c in got] == [c["name"] for c in wanted]
    return True


def load_accept(spec: str | None) -> Accept:
    """`module:function` named by `teacher_accept`, else the built-in rules."""
    if not spec:
        return default_accept
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:  # the user's module, named in the config
        raise TeacherError(f"teacher_accept={spec!r}: cannot import it ({e})") from None


@dataclass
class Answer:
    ids: list[int] | None  # in the student's vocabulary when known, else None
    text: str
    finished: bool  # stopped on EOS rather than at max_tokens


class LocalTeacher:
    """An mlx-lm model answering prompt ids; `same_vocab` when it shares the student's tokenizer.

    When the prompt lists tools and `tool_choice` is not "none", decoding runs under the
    runtime's grammar (`tinygpt.runtime.grammar`), so the teacher can only produce the
    tool calls (or text) the runtime itself would have allowed.
    """

    def __init__(self, model, tokenizer, same_vocab: bool, temperature: float, max_tokens: int, tool_choice: str = "auto"):
        self.model, self.tokenizer, self.same_vocab = model, tokenizer, same_vocab
        self.temperature, self.max_tokens, self.tool_choice = temperature, max_tokens, tool_choice

    def _constraint(self, prompt_text: str):
        parsed = parse_prompt(prompt_text)
        if parsed is None or not parsed[1] or self.tool_choice == "none":
            return None
        from tinygpt.runtime.grammar import GrammarError, TokenizerInfo, build_constraint

        info = TokenizerInfo.from_tokenizer(self.tokenizer, vocab_size=vocab_size(self.model))
        try:
            return build_constraint(info, tools=parsed[1], tool_choice=self.tool_choice)
        except GrammarError as e:
            raise TeacherError(f"the prompt's tools cannot be enforced: {e}") from None

    def answer(self, prompt_ids: list[int], prompt_text: str) -> Answer:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        ids = prompt_ids if self.same_vocab else self.tokenizer.encode(prompt_text, add_special_tokens=False)
        constraint = self._constraint(prompt_text)
        out, finished = [], False
        steps = generate_step(
            mx.array(ids), self.model, max_tokens=self.max_tokens, sampler=make_sampler(temp=self.temperature),
            logits_processors=[constraint] if constraint is not None else None,
        )
        for token, _ in steps:
            token = int(token)
            out.append(token)
            if token in self.tokenizer.eos_token_ids:
                finished = True
                break
        text = self.tokenizer.decode([t for t in out if t not in self.tokenizer.eos_token_ids])
        return Answer(ids=out if self.same_vocab else None, text=text, finished=finished)


class EndpointTeacher:
    """An OpenAI-compatible server: `/chat/completions` (TinyGPT's runtime) or `/completions`.

    In chat mode the ChatML prompt is turned back into messages and tools, so the server
    applies its own grammar constraint for those tools; the reply is rendered the way the
    chat template renders an assistant turn. Completions mode sends the raw prompt text.
    """

    def __init__(self, base_url: str, model: str, temperature: float, max_tokens: int, stop: list[str],
                 api: str = "chat", tool_choice: str = "auto"):
        self.base_url, self.model, self.api, self.tool_choice = base_url.rstrip("/"), model, api, tool_choice
        self.temperature, self.max_tokens, self.stop = temperature, max_tokens, stop

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise TeacherError(f"teacher endpoint {url} answered {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
            raise TeacherError(f"teacher endpoint {url} failed: {e}") from None

    def answer(self, prompt_ids: list[int], prompt_text: str) -> Answer:
        common = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.api == "completions":
            reply = self._post("/completions", {**common, "prompt": prompt_text, "stop": self.stop})
            try:
                choice = reply["choices"][0]
                return Answer(ids=None, text=choice["text"], finished=choice.get("finish_reason") != "length")
            except (KeyError, IndexError, TypeError):
                raise TeacherError(f"teacher endpoint returned no completion: {str(reply)[:200]}") from None
        parsed = parse_prompt(prompt_text)
        if parsed is None:
            raise TeacherError("the dataset's prompts are not ChatML, so they cannot be sent as chat messages; "
                               "use teacher_api='completions'")
        messages, tools = parsed
        body = {**common, "messages": messages}
        if tools:
            body.update(tools=tools, tool_choice=self.tool_choice)
        reply = self._post("/chat/completions", body)
        try:
            choice = reply["choices"][0]
            message = choice["message"]
            text = render_answer(message.get("content"), message.get("tool_calls"))
            return Answer(ids=None, text=text, finished=choice.get("finish_reason") != "length")
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher endpoint returned no message: {str(reply)[:200]}") from None


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
