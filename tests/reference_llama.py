"""An independent reference for GGUF llama models, written the way llama.cpp computes.

Nothing here imports TinyGPT or MLX. It reads a GGUF file with `gguf.GGUFReader`,
dequantizes the tensors as stored and runs a plain numpy forward pass with llama.cpp's
conventions: the Q/K rows stay permuted and RoPE rotates *adjacent* pairs ("normal"
RoPE), the base comes straight from `llama.rope.freq_base`. If the converter's
un-permutation, rope_theta, norms, GQA grouping or weight tying were wrong, the MLX
logits would not match these.

`ReferenceBPE` is llama.cpp's byte-level BPE (special-token split, pre-tokenizer
regexes, lowest-rank merges) in pure Python, to check the rebuilt tokenizer.json.

`write_tiny_gguf` writes a small random llama GGUF the way llama.cpp's converter
does (Q/K permuted), so the fast tests need no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# --- the model -----------------------------------------------------------------------------


class ReferenceLlama:
    """Dequantized GGUF tensors (GGUF names, numpy (rows, cols)) plus hyper-parameters."""

    def __init__(self, path: str | Path, dtype=np.float64):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(path)

        def get(key, default=None):
            field = reader.fields.get(key)
            return default if field is None else field.contents()

        assert get("general.architecture") == "llama"
        self.n_layer = get("llama.block_count")
        self.n_embd = get("llama.embedding_length")
        self.n_head = get("llama.attention.head_count")
        self.n_head_kv = get("llama.attention.head_count_kv", self.n_head)
        self.head_dim = self.n_embd // self.n_head
        self.eps = get("llama.attention.layer_norm_rms_epsilon")
        # llama.cpp's default base when the key is absent.
        self.freq_base = get("llama.rope.freq_base", 10000.0)
        self.w = {}
        for t in reader.tensors:
            a = dequantize(t.data, t.tensor_type).astype(dtype)
            self.w[t.name] = a.reshape(tuple(int(n) for n in reversed(t.shape)))

    def _rms(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope_normal(self, x):
        """llama.cpp GGML_ROPE_TYPE_NORM: rotate (x[2i], x[2i+1]) by pos * base^(-2i/d)."""
        T, _, d = x.shape
        inv = self.freq_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # (T, d/2)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (len(ids), vocab) of a causal forward pass from position 0."""
        w = self.w
        T, hd = len(ids), self.head_dim
        x = w["token_embd.weight"][np.asarray(ids)]
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        group = self.n_head // self.n_head_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, self.n_head, hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, self.n_head_kv, hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.n_head_kv, hd)
            q, k = self._rope_normal(q), self._rope_normal(k)
            heads = []
            for hq in range(self.n_head):
                hk = hq // group  # consecutive query heads share one KV head
                s = q[:, hq] @ k[:, hk].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                heads.append(s @ v[:, hk])
            x = x + np.concatenate(heads, axis=-1) @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * up) @ w[p + "ffn_down.weight"].T
        x = self._rms(x, w["output_norm.weight"])
        out = w.get("output.weight", w["token_embd.weight"])
        return x @ out.T


# --- the tokenizer -------------------------------------------------------------------------

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# llama.cpp's regex list per tokenizer.ggml.pre (llama-vocab.cpp).
PRE_REGEXES = {"gpt-2": [GPT2_REGEX], "smollm": [r"\p{N}", GPT2_REGEX]}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ReferenceBPE:
    """llama.cpp's gpt2-style tokenization over GGUF vocab metadata."""

    def __init__(self, tokens: list[str], token_types: list[int], merges: list[str], pre: str):
        import regex

        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.specials = sorted((t for t, ty in zip(tokens, token_types) if ty == 3), key=len, reverse=True)
        self.regexes = [regex.compile(r) for r in PRE_REGEXES[pre]]
        self.byte_map = bytes_to_unicode()

    @classmethod
    def from_gguf(cls, path: str | Path) -> ReferenceBPE:
        from gguf import GGUFReader

        f = GGUFReader(path).fields
        return cls(
            f["tokenizer.ggml.tokens"].contents(),
            f["tokenizer.ggml.token_type"].contents(),
            f["tokenizer.ggml.merges"].contents(),
            f["tokenizer.ggml.pre"].contents(),
        )

    def _split(self, pieces: list[str], rx) -> list[str]:
        # llama.cpp keeps both the matches and the text between them as pieces.
        out = []
        for piece in pieces:
            pos = 0
            for m in rx.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos : m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        return out

    def _bpe(self, word: str) -> list[int]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [p for p in pairs if p[0] is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and self.ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        """Token ids with special tokens recognised (llama.cpp's parse_special=true)."""
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(s), s) for s in self.specials if s in rest]
            if not hits:
                chunk, special, rest = rest, None, ""
            else:
                at, special = min(hits, key=lambda h: (h[0], -len(h[1])))
                chunk, rest = rest[:at], rest[at + len(special) :]
            if chunk:
                pieces = [chunk]
                for rx in self.regexes:
                    pieces = self._split(pieces, rx)
                for piece in pieces:
                    ids += self._bpe("".join(self.byte_map[b] for b in piece.encode("utf-8")))
            if special is not None:
                ids.append(self.ids[special])
        return ids


# --- a tiny synthetic GGUF -----------------------------------------------------------------

TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A few merges, including digits ("1 2") that a per-digit pre-tokenizer must never apply.
TINY_MERGES = ["h e", "Ġ t", "Ġt he", "i n", "Ġ a", "1 2", "Ġ c", "a p", "Ġc ap", "o f", "Ġ o", "Ġo f"]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` (HF rows -> GGUF rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(
    path: str | Path,
    *,
    seed: int = 0,
    tied: bool = True,
    freq_base: float | None = 50000.0,
    basename: str = "tiny",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    add_bos: bool = False,
) -> dict[str, np.ndarray]:
    """Write a random llama GGUF; returns the HF-layout weights it was made from."""
    import gguf

    rng = np.random.default_rng(seed)
    byte_tokens = list(bytes_to_unicode().values())
    merged = ["".join(m.split(" ")) for m in TINY_MERGES]
    tokens = TINY_SPECIALS + byte_tokens + merged
    types = [3] * len(TINY_SPECIALS) + [1] * (len(tokens) - len(TINY_SPECIALS))
    vocab = len(tokens)
    hd = n_embd // n_head

    def lin(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)

    hf: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, n_embd)).astype(np.float32)}
    tensors: dict[str, np.ndarray] = {"token_embd.weight": hf["model.embed_tokens.weight"]}
    for i in range(n_layer):
        layer = {
            "attn_norm": ("input_layernorm", norm()),
            "attn_q": ("self_attn.q_proj", lin(n_head * hd, n_embd)),
            "attn_k": ("self_attn.k_proj", lin(n_head_kv * hd, n_embd)),
            "attn_v": ("self_attn.v_proj", lin(n_head_kv * hd, n_embd)),
            "attn_output": ("self_attn.o_proj", lin(n_embd, n_head * hd)),
            "ffn_norm": ("post_attention_layernorm", norm()),
            "ffn_gate": ("mlp.gate_proj", lin(n_ff, n_embd)),
            "ffn_up": ("mlp.up_proj", lin(n_ff, n_embd)),
            "ffn_down": ("mlp.down_proj", lin(n_embd, n_ff)),
        }
        for g, (h, w) in layer.items():
            hf[f"model.layers.{i}.{h}.weight"] = w
            if g == "attn_q":
                w = llama_cpp_permute(w, n_head)
            elif g == "attn_k":
                w = llama_cpp_permute(w, n_head_kv)
            tensors[f"blk.{i}.{g}.weight"] = w
    hf["model.norm.weight"] = tensors["output_norm.weight"] = norm()
    if not tied:
        hf["lm_head.weight"] = tensors["output.weight"] = lin(vocab, n_embd)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_basename(basename)
    writer.add_block_count(n_layer)
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hd)
    if freq_base is not None:
        writer.add_rope_freq_base(freq_base)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(add_bos)
    for name, w in tensors.items():
        if name == "token_embd.weight":
            # Store one tensor quantized, like real GGUFs, to exercise dequantization.
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            hf["model.embed_tokens.weight"] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf
