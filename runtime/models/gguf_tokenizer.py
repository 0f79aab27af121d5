"""Rebuild a Hugging Face `tokenizer.json` from a GGUF file's tokenizer metadata.

GGUF stores a byte-level BPE vocabulary as three arrays (tokens, token types, merges)
plus the name of llama.cpp's pre-tokenizer regex. This module turns them back into a
`tokenizers.Tokenizer` that splits text the way llama.cpp does, so token ids recorded
by the runtime match the ones the model was trained and quantized with.

Only gpt2-style byte-level BPE is supported (SmolLM2, StarCoder, GPT-2 families);
SentencePiece GGUFs (`tokenizer.ggml.model == "llama"`) raise a ValueError.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import msgspec

# llama.cpp's token types (gguf.TokenType): CONTROL tokens are special (never produced by
# splitting text unless asked for), USER_DEFINED tokens are added but plain text.
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4

# tokenizer.ggml.pre -> split digits one by one before the GPT-2 regex. These are the
# llama.cpp pre-tokenizers whose regexes are exactly (optionally "\p{N}" then) the GPT-2
# regex, which is what `tokenizers`' ByteLevel(use_regex=True) applies.
PRE_TOKENIZERS: dict[str, bool] = {
    "gpt-2": False,
    "mpt": False,
    "olmo": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
    "codeshell": True,
}

TOOL_TEMPLATE = "templates/chatml_tools.jinja"


class GGUFVocab(msgspec.Struct, frozen=True, kw_only=True):
    """The tokenizer fields of a GGUF file (`tokenizer.ggml.*`)."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False


def tool_chat_template() -> str:
    """The tool-aware ChatML template shipped with TinyGPT (SmolLM2's own has no tools)."""
    return resources.files("tinygpt.runtime.models").joinpath(TOOL_TEMPLATE).read_text("utf-8")


def read_vocab(fields: dict) -> GGUFVocab:
    """Collect `tokenizer.ggml.*` from a `gguf.GGUFReader`'s fields."""

    def get(key: str, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    if "tokenizer.ggml.tokens" not in fields:
        raise ValueError("GGUF has no tokenizer metadata (tokenizer.ggml.tokens is missing)")
    return GGUFVocab(
        model=get("tokenizer.ggml.model", ""),
        pre=get("tokenizer.ggml.pre", "default"),
        tokens=get("tokenizer.ggml.tokens"),
        token_types=get("tokenizer.ggml.token_type") or [],
        merges=get("tokenizer.ggml.merges") or [],
        bos_id=get("tokenizer.ggml.bos_token_id"),
        eos_id=get("tokenizer.ggml.eos_token_id"),
        unk_id=get("tokenizer.ggml.unknown_token_id"),
        pad_id=get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(get("tokenizer.ggml.add_eos_token", False)),
    )


def build_tokenizer(vocab: GGUFVocab):
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's tokenizer for `vocab`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if vocab.model != "gpt2":
        raise ValueError(
            f"unsupported GGUF tokenizer model {vocab.model!r}: only byte-level BPE ('gpt2') converts"
        )
    if vocab.pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"unsupported GGUF pre-tokenizer {vocab.pre!r} (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    types = vocab.token_types or [TOKEN_NORMAL] * len(vocab.tokens)
    if len(types) != len(vocab.tokens):
        raise ValueError(f"GGUF has {len(vocab.tokens)} tokens but {len(types)} token types")

    ids = {tok: i for i, tok in enumerate(vocab.tokens)}
    if len(ids) != len(vocab.tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens")
    # Byte-level tokens never contain a real space (it is mapped to "Ġ"), so a merge
    # "a b" splits unambiguously on its one space.
    merges = []
    for m in vocab.merges:
        left, sep, right = m.partition(" ")
        if not sep or " " in right:
            raise ValueError(f"malformed GGUF merge {m!r}: expected two tokens separated by one space")
        merges.append((left, right))

    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if PRE_TOKENIZERS[vocab.pre]:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    post = [processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)]
    # llama.cpp adds BOS / EOS itself when the GGUF says so; the tokenizer has to do the same.
    bos = (_token(vocab, vocab.bos_id), vocab.bos_id) if vocab.add_bos else None
    eos = (_token(vocab, vocab.eos_id), vocab.eos_id) if vocab.add_eos else None
    if (bos and bos[0] is None) or (eos and eos[0] is None):
        raise ValueError("GGUF asks to add BOS/EOS but has no bos/eos_token_id")
    if bos or eos:
        head, tail = [f"{bos[0]}:0"] if bos else [], [f"{eos[0]}:0"] if eos else []
        single = " ".join([*head, "$A:0", *tail])
        pair = " ".join([single, *(t.replace(":0", ":1") for t in head), "$B:1", *(t.replace(":0", ":1") for t in tail)])
        specials = list(dict.fromkeys(x for x in (bos, eos) if x))
        post.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials))
    tok.post_processor = processors.Sequence(post) if len(post) > 1 else post[0]

    added = [
        AddedToken(t, special=(ty == TOKEN_CONTROL), normalized=False)
        for t, ty in zip(vocab.tokens, types)
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    # Order matters: add_tokens keeps the existing ids because the tokens are in the vocab.
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    return tok


def _token(vocab: GGUFVocab, idx: int | None) -> str | None:
    if idx is None:
        return None
    if not 0 <= idx < len(vocab.tokens):
        raise ValueError(f"GGUF special token id {idx} is outside the vocabulary (size {len(vocab.tokens)})")
    return vocab.tokens[idx]


def write_tokenizer(vocab: GGUFVocab, out_dir: Path, *, context_length: int | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json to `out_dir`."""
    out_dir = Path(out_dir)
    tok = build_tokenizer(vocab)
    tok.save(str(out_dir / "tokenizer.json"))

    specials = {
        "bos_token": _token(vocab, vocab.bos_id),
        "eos_token": _token(vocab, vocab.eos_id),
        "unk_token": _token(vocab, vocab.unk_id),
        "pad_token": _token(vocab, vocab.pad_id),
    }
    specials = {k: v for k, v in specials.items() if v is not None}
    control = [t for t, ty in zip(vocab.tokens, vocab.token_types) if ty == TOKEN_CONTROL]
    extra = [t for t in control if t not in specials.values()]

    config = {
        # PreTrainedTokenizerFast loads tokenizer.json as is; GPT2Tokenizer (transformers 5)
        # would rebuild the pre-tokenizer and lose the per-digit split.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length or 2048,
        "additional_special_tokens": extra,
        "chat_template": tool_chat_template(),
        # The template emits <tool_call>{"name": ..., "arguments": ...}</tool_call>; tell
        # mlx-lm's server which parser reads that back.
        "tool_parser_type": "json_tools",
        **specials,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = {**specials, "additional_special_tokens": extra}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
