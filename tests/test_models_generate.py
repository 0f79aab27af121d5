"""`tinygpt generate` on a tiny synthetic llama: prompt building, greedy decoding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.reference_llama import ReferenceLlama, write_tiny_gguf
from tinygpt.runtime.cli import main
from tinygpt.runtime.commands.generate import prompt_ids
from tinygpt.runtime.models.gguf_convert import convert_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_gguf(root / "tiny.gguf", seed=3)
    convert_gguf(root / "tiny.gguf", root / "mlx")
    return root / "tiny.gguf", root / "mlx"


@pytest.fixture(scope="module")
def loaded(tiny):
    from mlx_lm import load

    return load(str(tiny[1]))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))


def test_prompt_ids_use_the_chat_template(loaded):
    _, tokenizer = loaded
    ids = prompt_ids(tokenizer, "hi there", system="be brief")
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    )
    default_system = tokenizer.decode(prompt_ids(tokenizer, "hi"))
    assert default_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt_ids(tokenizer, "hi there", chat_template=False) == tokenizer.encode("hi there")


def test_greedy_generation_follows_the_reference_argmax(tiny, loaded):
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    gguf_path, _ = tiny
    model, tokenizer = loaded
    ids = prompt_ids(tokenizer, "the cap of 12")
    ref = ReferenceLlama(gguf_path)
    out = [r.token for r in stream_generate(model, tokenizer, ids, max_tokens=4, sampler=make_sampler(temp=0.0))]
    assert len(out) >= 1
    # Each greedy token is the reference's argmax given everything before it.
    for i, token in enumerate(out):
        assert token == int(np.argmax(ref.logits(ids + out[:i])[-1]))


def test_generate_command_prints_the_answer_and_stats(tiny, loaded, capsys):
    from mlx_lm import generate

    _, model_dir = tiny
    model, tokenizer = loaded
    argv = ["generate", "--model", str(model_dir), "--prompt", "the cap", "--max-tokens", "6", "--system", "S"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    expected = generate(model, tokenizer, prompt_ids(tokenizer, "the cap", system="S"), max_tokens=6)
    assert out == expected + "\n"
    assert "prompt tokens" in err and "generated" in err


def test_generate_without_chat_template(tiny, loaded, capsys):
    from mlx_lm import generate

    _, model_dir = tiny
    model, tokenizer = loaded
    assert main(["generate", "--model", str(model_dir), "--prompt", "he", "--max-tokens", "3", "--no-chat-template"]) == 0
    out, err = capsys.readouterr()
    assert out == generate(model, tokenizer, tokenizer.encode("he"), max_tokens=3) + "\n"
    assert tokenizer.encode("he") == [259]  # the "h e" merge, no template tokens around it
    assert "1 prompt tokens" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "./no/such/dir"], "model directory not found"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--temp", "-1"], "--temp must be >= 0"),
    ],
)
def test_generate_errors_exit_2(argv, message, capsys):
    assert main(["generate", "--prompt", "hi", *argv]) == 2
    assert message in capsys.readouterr().err
