"""Shared pieces of the fine-tuning tests: a tiny model, a small tool-calling task, a teacher.

The task: a user asks for the weather (or a timer, or a search) and the assistant answers
with one tool call. Most answer tokens are fixed structure, so even the tiny random model
learns it in a few dozen steps, and the loss on held-out rows falls clearly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

CITIES = ["Paris", "Berlin", "London", "Naples", "Rome", "Madrid", "Vienna", "Oslo", "Lisbon", "Prague"]
ITEMS = ["pizza", "coffee", "trains", "weather", "music", "news"]


TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"Call {name}.", "parameters": {
        "type": "object", "properties": {arg: {"type": kind}}, "required": [arg]}}}
    for name, arg, kind in (("get_weather", "city", "string"), ("set_timer", "minutes", "integer"),
                            ("search_web", "query", "string"))
]


def task_records(n: int, seed: int = 0, tools: bool = False) -> list[dict]:
    """`n` chat records of the synthetic tool-calling task (mlx-lm's chat/tools format);
    with `tools`, the prompt lists the three functions like a real tool-calling request."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            city = rng.choice(CITIES)
            ask, call = f"What is the weather in {city}?", {"name": "get_weather", "arguments": {"city": city}}
        elif kind == 1:
            minutes = rng.randrange(1, 60)
            ask, call = f"Set a timer for {minutes} minutes.", {"name": "set_timer", "arguments": {"minutes": minutes}}
        else:
            item = rng.choice(ITEMS)
            ask, call = f"Search the web for {item}.", {"name": "search_web", "arguments": {"query": item}}
        records.append(
            {
                "messages": [
                    {"role": "user", "content": ask},
                    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
                ],
                **({"tools": TOOLS} if tools else {}),
            }
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def import_task(model_dir: Path, out: Path, n: int = 96, seed: int = 0, tools: bool = False) -> Path:
    """A dataset directory of the task, imported with the tiny model's own tokenizer."""
    from mlx_lm.utils import load_tokenizer

    from tinygpt.runtime.models.manifest import model_digest
    from tinygpt.workers.training.importer import import_jsonl

    tokenizer = load_tokenizer(model_dir, eos_token_ids=json.loads((model_dir / "config.json").read_text())["eos_token_id"])
    src = write_jsonl(out.parent / f"{out.name}.jsonl", task_records(n, seed, tools))
    import_jsonl(src, tokenizer, out, base_model=str(model_dir), base_digest=model_digest(model_dir), valid_fraction=0.2)
    return out


def sharpen(model_dir: Path, factor: float = 10.0) -> Path:
    """Scale the final norm of a tiny random model in place, widening its logits.

    With N(0, 0.02) weights every logit is within about +-1.3, so the output is nearly
    uniform and an adapter can move the loss only a little; 10x wider logits let a few
    dozen LoRA steps change the validation loss by whole nats, so the tests' "loss went
    down" checks are far from noise.
    """
    import mlx.core as mx

    weights = mx.load(str(model_dir / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * factor
    mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    return model_dir


def train_teacher(base: Path, data: Path, out: Path, steps: int = 150, lr: float = 3e-3) -> Path:
    """A teacher that knows the task: `base` fully fine-tuned on it (plain mlx, no adapter)."""
    import shutil

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from tinygpt.workers.training.data import BatchPlan, check_rows, load_dataset
    from tinygpt.workers.training.losses import batch_arrays, cross_entropy

    model, _ = load(str(base))
    rows = check_rows(load_dataset(data).rows("train"), "train", 10**6)
    stream = BatchPlan(rows, 4, 2048, False, seed=1).stream()
    optimizer = optim.Adam(learning_rate=lr)
    value_and_grad = nn.value_and_grad(model, cross_entropy)
    for _ in range(steps):
        _, grads = value_and_grad(model, *batch_arrays(next(stream)))
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    shutil.copytree(base, out)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    return out


def job(model_dir: Path, data: Path, out: Path, method: str = "lora", seed: int = 0, teacher=None, **hp):
    from tinygpt.runtime.contracts.jobs import FinetuneJob

    defaults = {"steps": 40, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 10, "report_every": 5, "warmup_steps": 4}
    return FinetuneJob(
        specialist=out.name,
        base_model=str(model_dir),
        dataset_dir=str(data),
        output_dir=str(out),
        method=method,
        hyperparameters={**defaults, **hp},
        teacher_model=None if teacher is None else str(teacher),
        seed=seed,
    )


@pytest.fixture(autouse=True)
def tinygpt_home(tmp_path, monkeypatch):
    """Caches (quantized bases, teacher logits) and the training lock live in the test's tmp dir."""
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return sharpen(build_tiny_model(tmp_path_factory.mktemp("ft-base") / "base"))


@pytest.fixture(scope="session")
def teacher(tiny_base, task_data, tmp_path_factory) -> Path:
    """The base after a short full fine-tune on the task: same tokenizer, other (better) logits."""
    return train_teacher(tiny_base, task_data, tmp_path_factory.mktemp("ft-teacher") / "teacher")


@pytest.fixture(scope="session")
def task_data(tiny_base, tmp_path_factory) -> Path:
    return import_task(tiny_base, tmp_path_factory.mktemp("ft-data") / "task")


def accept_any(prompt: str, answer: str, reference: str) -> bool:
    """A `teacher_accept` rule that keeps every non-empty answer (for a weak tiny teacher)."""
    return bool(answer.strip())
