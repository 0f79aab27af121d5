"""Base and teacher models for training: where they are, what they are (digest), loading.

The digest is the model cache's own (`tinygpt-model.json`), so a training record and the
runtime name the same weights with the same value; a plain directory without a manifest
(e.g. a test's tiny model) is hashed the same way on the fly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tinygpt.runtime.hashing import sha256_file

from .errors import TrainingError


def resolve(name_or_path: str) -> Path:
    """A model directory from a cache name or a path (pulling the offline default if needed)."""
    from tinygpt.runtime.models import ModelNotFound, resolve_model

    try:
        return Path(resolve_model(name_or_path))
    except ModelNotFound as e:
        raise TrainingError(str(e)) from None


def load(model_dir: Path):
    """(model, tokenizer) through mlx-lm, so training sees what `mlx_lm.load` serves.

    First the process's device and memory budget (runtime/device.py: $TINYGPT_DEVICE,
    $TINYGPT_MEMORY_FRACTION, which `tinygpt up` sets per worker so a training job cannot
    take the runtime's GPU memory); on a GPU the weights are cast to bf16, as the runtime
    serves them.
    """
    from mlx_lm.utils import load as mlx_load

    from tinygpt.runtime import device

    info = device.apply_memory_budget(device.memory_fraction(None))
    model, tokenizer = mlx_load(str(model_dir))
    device.cast_for_device(model, info)
    return model, tokenizer


def vocab_size(model) -> int:
    """Rows of the output layer: the largest token id + 1 the model can score."""
    return int(model.args.vocab_size) if hasattr(model, "args") else int(model.model.embed_tokens.weight.shape[0])


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id), special tokens and EOS ids.

    Two tokenizers with one fingerprint map every text to the same ids, which is what
    logit distillation needs: the teacher's logit i must mean the student's token i.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    payload = {
        "vocab": sorted(hf.get_vocab().items()),
        "special": sorted(map(str, getattr(hf, "all_special_tokens", []))),
        "eos": sorted(getattr(tokenizer, "eos_token_ids", []) or []),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Files that define how text becomes ids; weights and config do not.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def tokenizer_digest(model_dir: Path) -> str:
    """sha256 over the tokenizer files: equal digests mean equal token ids for every text."""
    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            h.update(f"{name} {sha256_file(path)}\n".encode())
    return h.hexdigest()
