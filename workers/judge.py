"""The optional LLM judge of the label stage: rate an answer 1-10, or compare two.

The judge reads a transcript, and trajectories hold token ids, so the ids are decoded
with the base model's own tokenizer (role markers kept: a judge reads them fine). The
model answers through any OpenAI-compatible server (the TinyGPT runtime by default:
a local teacher model) or in-process through mlx-lm. A reply without a usable verdict
yields None (the dimension is left out); an unreachable server raises so the queue
retries with backoff; a server that refuses the request (bad model name, bad key) is a
configuration error and fails at once.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from functools import lru_cache

from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts.pipeline import JudgeSettings
from tinygpt.runtime.contracts.trajectory import Trajectory

URL_ENV = "TINYGPT_JUDGE_URL"
KEY_ENV = "TINYGPT_JUDGE_API_KEY"
# `tinygpt serve`'s default address.
DEFAULT_URL = "http://127.0.0.1:8000/v1"
# Only the end of a long conversation fits a small judge's context; the end has the answer.
MAX_TRANSCRIPT_CHARS = 6000

SYSTEM = "You are a strict, fair grader of an AI assistant's replies. Follow the output format exactly."
RATE = (
    "Below is a conversation in raw chat format. Rate the assistant's final reply for correctness, "
    "helpfulness and correct use of tools, from 1 (useless) to 10 (excellent). "
    "Answer with the number only.\n\n<transcript>\n{transcript}\n</transcript>"
)
COMPARE = (
    "Below is a conversation in raw chat format, then two candidate final replies, A and B. "
    "Which reply is better (correct, helpful, correct tool use)? Answer with exactly one of: A, B, tie."
    "\n\n<transcript>\n{transcript}\n</transcript>\n\n<reply A>\n{a}\n</reply A>\n\n<reply B>\n{b}\n</reply B>"
)


class JudgeUnavailable(RuntimeError):
    """The judge's server cannot be reached (retried by the queue)."""


@lru_cache(maxsize=4)
def _tokenizer(base_model: str):
    from tokenizers import Tokenizer

    from tinygpt.runtime.models import resolve_model

    try:
        model_dir = resolve_model(base_model)
    except ValueError as e:
        raise PermanentError(f"the LLM judge decodes trajectories with the base model's tokenizer: {e}") from None
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise PermanentError(f"the LLM judge needs {path} to decode {base_model!r} token ids, and it is missing")
    return Tokenizer.from_file(str(path))


def decode(base_model: str, ids: list[int]) -> str:
    return _tokenizer(base_model).decode(ids, skip_special_tokens=False)


def transcript(traj: Trajectory, *, with_reply: bool = True) -> str:
    """The final step's prompt (and reply) as text: the final reply is what gets judged."""
    last = traj.steps[-1]
    text = decode(traj.base_model, last.prompt_ids + (last.output_ids if with_reply else []))
    return text[-MAX_TRANSCRIPT_CHARS:]


def final_reply(traj: Trajectory) -> str:
    last = traj.steps[-1]
    return last.text or decode(traj.base_model, last.output_ids)


def _ask_openai(settings: JudgeSettings, user: str) -> str:
    url = (settings.url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/") + "/chat/completions"
    body = {
        "model": settings.model or "default",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "temperature": 0,
        "max_tokens": 8,
    }
    headers = {"Content-Type": "application/json"}
    if os.environ.get(KEY_ENV):
        headers["Authorization"] = f"Bearer {os.environ[KEY_ENV]}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        if e.code >= 500 or e.code == 429:
            raise JudgeUnavailable(f"judge at {url} answered {e.code}: {detail}") from None
        raise PermanentError(f"judge at {url} refused the request ({e.code}): {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise JudgeUnavailable(f"judge at {url} is unreachable: {e}; start it (`tinygpt serve`) or set {URL_ENV}") from None
    try:
        return reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise PermanentError(f"judge at {url} did not answer like an OpenAI chat completion: {str(reply)[:200]}") from None


@lru_cache(maxsize=1)
def _mlx_model(model: str):
    from mlx_lm import load

    return load(model)


def _ask_mlx(settings: JudgeSettings, user: str) -> str:
    if not settings.model:
        raise PermanentError("the mlx judge backend needs `judge.model` (a model path or name)")
    from mlx_lm import generate

    model, tokenizer = _mlx_model(settings.model)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return generate(model, tokenizer, prompt=prompt, max_tokens=8, verbose=False)


def ask(settings: JudgeSettings, user: str) -> str:
    return _ask_mlx(settings, user) if settings.backend == "mlx" else _ask_openai(settings, user)


def parse_rating(reply: str) -> float | None:
    """1-10 mapped onto [0, 1]; None when the reply holds no rating."""
    match = re.search(r"\b(10|[1-9])\b", reply)
    return (int(match.group(1)) - 1) / 9 if match else None


def parse_verdict(reply: str) -> float | None:
    """1.0 when A is better, 0.0 when B is, 0.5 for a tie; None when unclear."""
    word = reply.strip().strip(".*\"' ").lower()
    if word.startswith("tie"):
        return 0.5
    if word[:1] == "a":
        return 1.0
    if word[:1] == "b":
        return 0.0
    return None


def rate(settings: JudgeSettings, traj: Trajectory) -> float | None:
    """The judge's 1-10 rating of the final reply, in [0, 1]."""
    return parse_rating(ask(settings, RATE.format(transcript=transcript(traj))))


def compare(settings: JudgeSettings, traj: Trajectory, reference: Trajectory) -> float | None:
    """How `traj`'s final reply fares against `reference`'s to the same prompt, in [0, 1]."""
    user = COMPARE.format(transcript=transcript(traj, with_reply=False), a=final_reply(traj), b=final_reply(reference))
    return parse_verdict(ask(settings, user))
