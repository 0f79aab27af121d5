"""Convert a llama-architecture GGUF file into an mlx-lm model directory, without torch.

The output is what `mlx_lm.load(path)` expects: `config.json`, `model.safetensors`,
`tokenizer.json` + `tokenizer_config.json` (with TinyGPT's tool-aware chat template),
`special_tokens_map.json` and `generation_config.json`.

Two llama.cpp conventions have to be undone on the way:
- its converter permutes the rows of attn_q / attn_k so that llama.cpp can apply
  "normal" (adjacent-pair) RoPE; mlx-lm's llama applies Hugging Face's half-split RoPE
  to the original rows, so the permutation is inverted here;
- the RoPE base lives in `llama.rope.freq_base`; mlx-lm assumes 10000 when the config
  says nothing, and SmolLM2 uses 100000.

Weights are dequantized (Q4_1, Q8_0, ... via `gguf.quants.dequantize`) and stored as
float32 by default: on the Linux CPU backend fp32 matmuls go through BLAS and run about
twice as fast as bf16.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from .gguf_tokenizer import read_vocab, write_tokenizer

DTYPES = ("float32", "bfloat16", "float16")

# llama.cpp's default when a GGUF has no llama.rope.freq_base.
LLAMA_CPP_ROPE_THETA = 10000.0
# Known bases for model families whose GGUFs may have been written without the key.
KNOWN_ROPE_THETA = {"smollm2": 100000.0}

# GGUF tensor name (without the "blk.N." prefix and ".weight"/".bias") -> HF name.
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


class ConvertedModel(msgspec.Struct, frozen=True, kw_only=True):
    """What `convert_gguf` wrote."""

    path: str
    dtype: str
    parameters: int
    rope_theta: float
    tie_word_embeddings: bool
    seconds: float


def unpermute_qk(w, n_head: int):
    """Invert llama.cpp's `permute` of attn_q / attn_k rows (weights or biases).

    llama.cpp writes, per head, the rows as (pair index, 2) interleaved; Hugging Face
    keeps (2, pair index), i.e. first halves then second halves of each head.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute a tensor with {rows} rows into {n_head} heads")
    return (
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    if stem in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_TENSORS:
        if suffix == "bias" and parts[2].endswith("_norm"):
            raise ValueError(f"unexpected GGUF tensor {gguf_name!r}: llama RMSNorm has no bias")
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{suffix}"
    if stem == "rope_freqs":
        raise ValueError("GGUF uses llama3-style rope scaling (rope_freqs), which this converter does not support")
    raise ValueError(f"unsupported GGUF tensor {gguf_name!r} for a llama model")


def _round(x: float) -> float:
    # GGUF stores float32: 1e-5 comes back as 9.999999747378752e-06.
    return float(f"{x:.7g}")


def read_config(fields: dict, *, vocab_size: int, rope_theta: float | None = None) -> dict:
    """The Hugging Face / mlx-lm `config.json` for a llama GGUF's metadata."""

    def get(key: str, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    arch = get("general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}: only 'llama' converts")

    def need(key: str):
        value = get(f"llama.{key}")
        if value is None:
            raise ValueError(f"GGUF is missing llama.{key}")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = int(get("llama.attention.head_count_kv", heads))
    head_dim = int(get("llama.attention.key_length", hidden // heads))
    rope_dim = int(get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ValueError(f"partial rotary embeddings (rope dim {rope_dim} != head dim {head_dim}) are not supported")
    scaling = get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"GGUF rope scaling {scaling!r} is not supported")

    if rope_theta is None:
        rope_theta = get("llama.rope.freq_base")
    if rope_theta is None:
        basename = (get("general.basename") or "").lower()
        rope_theta = KNOWN_ROPE_THETA.get(basename, LLAMA_CPP_ROPE_THETA)

    bos = get("tokenizer.ggml.bos_token_id")
    eos = get("tokenizer.ggml.eos_token_id")
    pad = get("tokenizer.ggml.padding_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _round(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": _round(rope_theta),
        "rope_scaling": None,
        "max_position_embeddings": int(get("llama.context_length", 2048)),
        "vocab_size": int(get("llama.vocab_size", vocab_size)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    return config


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    rope_theta: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertedModel:
    """Convert the llama GGUF at `gguf_path` into an mlx-lm directory `out_dir`.

    `dtype` is the stored weight type (float32 | bfloat16 | float16); `rope_theta`
    overrides the GGUF's own `llama.rope.freq_base`; `progress(done, total)` hears about
    every converted tensor.
    """
    import mlx.core as mx
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    start = time.perf_counter()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file not found: {gguf_path}")
    out_dir.mkdir(parents=True, exist_ok=True)

    reader = GGUFReader(gguf_path)
    vocab = read_vocab(reader.fields)
    config = read_config(reader.fields, vocab_size=len(vocab.tokens), rope_theta=rope_theta)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    weights: dict[str, mx.array] = {}
    parameters = 0
    total = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        if progress is not None:
            progress(i, total)
        name = _hf_name(t.name)
        # numpy shape is the reverse of GGUF's ne[]: (rows, cols) like a torch Linear.
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        expected = tuple(int(n) for n in reversed(t.shape))
        if w.shape != expected:
            w = w.reshape(expected)
        if ".self_attn.q_proj." in name:
            w = unpermute_qk(w, heads)
        elif ".self_attn.k_proj." in name:
            w = unpermute_qk(w, kv_heads)
        if name.endswith("_proj.bias") and ".self_attn." in name:
            config["attention_bias"] = True
        elif name.endswith("_proj.bias"):
            config["mlp_bias"] = True
        parameters += w.size
        weights[name] = mx.array(w).astype(getattr(mx, dtype))
    if "model.embed_tokens.weight" not in weights:
        raise ValueError(f"{gguf_path.name}: no token_embd.weight tensor")
    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    config["vocab_size"] = int(weights["model.embed_tokens.weight"].shape[0])
    config["dtype"] = dtype

    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    if progress is not None:
        progress(total, total)
    del weights
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_tokenizer(vocab, out_dir, context_length=config["max_position_embeddings"])

    return ConvertedModel(
        path=str(out_dir),
        dtype=dtype,
        parameters=parameters,
        rope_theta=config["rope_theta"],
        tie_word_embeddings=config["tie_word_embeddings"],
        seconds=time.perf_counter() - start,
    )
