"""A tiny random llama + a small trained byte-level BPE tokenizer, built in a temp dir.

The result is a real mlx-lm checkpoint (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with TinyGPT's tool-aware ChatML template), so tests exercise the
same loading, templating and generation code as the real default model, in seconds and
without network. Load it as a pytest plugin (``pytest_plugins = ["tests.tiny_model"]`` in
tests/conftest.py) to get the session fixture ``tiny_model_dir``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path

import pytest

# Imported before mlx so the fast BLAS (if installed) is in place when libmlx.so loads.
import tinygpt.runtime.models

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama
from mlx_lm.utils import save_config, save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|im_end|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", EOS]
VOCAB_SIZE = 512

MODEL_ARGS = dict(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    rms_norm_eps=1e-5,
    rope_theta=10000,
    tie_word_embeddings=True,
)

_SENTENCES = """\
The quick brown fox jumps over the lazy dog.
What is the capital of France? The capital of France is Paris.
Please book a table for two people at seven in the evening.
The weather in Berlin is cloudy with a chance of rain tomorrow.
I would like to convert one hundred dollars to euros.
Can you find the nearest coffee shop that is open now?
Send an email to Alice saying the meeting moved to Thursday.
The train to London leaves from platform nine at noon.
Summarize this article in three short sentences, please.
Set a timer for twenty minutes and remind me to check the oven.
How many days are there between March first and June tenth?
The model answered the question and then called a tool.
Read the file, count the lines, and report the total.
Our team shipped the new release on Monday morning.
She said the results were good, but the tests were slow.
Numbers like 3.14, 42, 1000 and -7 appear in text as well.
"""

_TOOLS = [
    ("get_weather", {"city": "Paris", "unit": "celsius"}),
    ("search_web", {"query": "best pizza in Naples", "limit": 5}),
    ("send_email", {"to": "alice@example.com", "subject": "Meeting", "body": "Moved to Thursday."}),
    ("convert_currency", {"amount": 100, "from": "USD", "to": "EUR"}),
    ("set_timer", {"minutes": 20, "label": "oven"}),
    ("read_file", {"path": "/tmp/notes.txt", "encoding": "utf-8"}),
]


def corpus() -> list[str]:
    """A few KB of English and tool-call JSON, shaped like the chat template's output."""
    lines = _SENTENCES.splitlines()
    for name, args in _TOOLS:
        schema = {
            "name": name,
            "description": f"Call {name.replace('_', ' ')}.",
            "parameters": {"type": "object", "properties": {k: {"type": "string"} for k in args}},
        }
        lines.append(json.dumps({"type": "function", "function": schema}))
        lines.append(f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>')
        lines.append(f"<tool_response>\n{json.dumps({'ok': True, 'result': args})}\n</tool_response>")
    for i, sentence in enumerate(lines[:16]):
        lines.append(f"<|im_start|>user\n{sentence}<|im_end|>\n<|im_start|>assistant\n{lines[(i + 1) % 16]}<|im_end|>")
    return lines


def chat_template() -> str:
    """TinyGPT's tool-aware ChatML template, as shipped in the package."""
    files = importlib.resources.files(tinygpt.runtime.models)
    return files.joinpath("templates/chatml_tools.jinja").read_text(encoding="utf-8")


def train_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE trained on `corpus()`; the special tokens get ids 0, 1, 2."""
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: byte-level BPE then decodes back to exactly the input text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer


def _write_tokenizer(path: Path, tokenizer: Tokenizer) -> None:
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 2048,
        # transformers would otherwise rewrite " ." to "." on decode.
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template(),
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def random_llama(config: dict, seed: int) -> llama.Model:
    """A llama with seeded N(0, 0.02) weights and unit norms.

    Each weight gets its own key split from `seed`, so the result depends on nothing else
    (not on MLX's global random state, nor on what ran before).
    """
    model = llama.Model(llama.ModelArgs.from_dict(config))
    params = sorted(tree_flatten(model.parameters()), key=lambda item: item[0])
    keys = mx.random.split(mx.random.key(seed), len(params))
    fresh = [
        (name, mx.ones_like(value) if "norm" in name else 0.02 * mx.random.normal(value.shape, key=key))
        for (name, value), key in zip(params, keys)
    ]
    model.update(tree_unflatten(fresh))
    mx.eval(model.parameters())
    return model


def build_tiny_model(path: Path, *, seed: int = 0, **overrides) -> Path:
    """Write a loadable tiny llama checkpoint into `path` and return it.

    `overrides` replace entries of MODEL_ARGS (e.g. ``num_hidden_layers=1``); unknown
    names raise ValueError. ``mlx_lm.load(path)`` then returns (model, tokenizer).
    """
    fields = {f.name for f in dataclasses.fields(llama.ModelArgs)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown llama.ModelArgs field(s) {unknown}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    _write_tokenizer(path, tokenizer)
    config = {
        **MODEL_ARGS,
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_token_id": tokenizer.token_to_id(EOS),
        **overrides,
    }
    save_model(path, random_llama(config, seed))
    # config.json last: mlx_lm.load needs it, so its presence means the checkpoint is whole.
    save_config(config, config_path=path / "config.json")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny model checkpoint per test session (seed 0); treat it as read-only."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
