"""GGUF -> MLX conversion on a tiny synthetic llama, checked against a numpy reference.

`reference_llama.ReferenceLlama` runs on the GGUF tensors as stored (Q/K rows still
permuted, llama.cpp's adjacent-pair RoPE), so matching logits proves the converter's
un-permutation, rope_theta, norms and weight tying independently of mlx-lm's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reference_llama import ReferenceBPE, ReferenceLlama, llama_cpp_permute, write_tiny_gguf
from tinygpt.runtime.models import gguf_convert
from tinygpt.runtime.models.gguf_convert import convert_gguf, read_config, unpermute_qk
from tinygpt.runtime.models.gguf_tokenizer import GGUFVocab, build_tokenizer, tool_chat_template

PROMPT = "<|im_start|>user\nWhat is the cap of 2012 in  the\tcap?<|im_end|>\n<|im_start|>assistant\n"


def mlx_logits(model_dir, ids):
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_dir))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    hf = write_tiny_gguf(root / "tiny.gguf", tied=request.param, seed=1)
    ticks = []
    result = convert_gguf(root / "tiny.gguf", root / "mlx", progress=lambda done, total: ticks.append((done, total)))
    # The pull's progress bar: one tick per tensor, ending complete once the weights are written.
    n = len(ticks) - 1
    assert ticks == [(i, n) for i in range(n + 1)] and n == len(list(mx_load(root / "mlx")))
    return root / "tiny.gguf", root / "mlx", hf, result


def mx_load(model_dir):
    import mlx.core as mx

    return mx.load(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("n_head", [1, 3, 4])
def test_unpermute_inverts_llama_cpp_permute(n_head):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_head * 16, 24))
    permuted = llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, n_head), w)
    bias = rng.standard_normal(n_head * 16)
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(bias, n_head), n_head), bias)


def test_unpermute_rejects_a_row_count_that_does_not_split_into_heads():
    with pytest.raises(ValueError, match="10 rows into 3 heads"):
        unpermute_qk(np.zeros((10, 4)), 3)


def test_converted_weights_are_the_original_hf_weights(tiny):
    import mlx.core as mx

    _, out, hf, result = tiny
    weights = mx.load(str(out / "model.safetensors"))
    assert set(weights) == set(hf)
    for name, w in hf.items():
        np.testing.assert_array_equal(np.array(weights[name]), w, err_msg=name)
    assert result.parameters == sum(w.size for w in hf.values())
    assert result.tie_word_embeddings == ("lm_head.weight" not in hf)


def test_config_reads_gguf_metadata(tiny):
    _, out, hf, _ = tiny
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["rope_theta"] == 50000.0  # written by write_tiny_gguf, not a default
    assert config["rms_norm_eps"] == 1e-5
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 16)
    assert config["tie_word_embeddings"] == ("lm_head.weight" not in hf)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert config["dtype"] == "float32"


def test_mlx_logits_match_the_llama_cpp_style_reference(tiny):
    gguf_path, out, _, _ = tiny
    from mlx_lm import load

    _, tokenizer = load(str(out))
    ids = tokenizer.encode(PROMPT)
    assert len(ids) > 20  # long enough for RoPE to matter
    got, want = mlx_logits(out, ids), ReferenceLlama(gguf_path).logits(ids)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_a_wrong_rope_theta_breaks_the_match(tiny, tmp_path):
    gguf_path, _, _, _ = tiny
    convert_gguf(gguf_path, tmp_path, rope_theta=10000.0)
    ids = list(range(3, 40))
    diff = np.abs(mlx_logits(tmp_path, ids) - ReferenceLlama(gguf_path).logits(ids)).max()
    assert diff > 1e-2


def test_skipping_the_unpermutation_breaks_the_match(tiny, tmp_path, monkeypatch):
    gguf_path, _, _, _ = tiny
    monkeypatch.setattr(gguf_convert, "unpermute_qk", lambda w, n_head: w)
    convert_gguf(gguf_path, tmp_path)
    ids = list(range(3, 40))
    diff = np.abs(mlx_logits(tmp_path, ids) - ReferenceLlama(gguf_path).logits(ids)).max()
    assert diff > 1e-2


@pytest.mark.parametrize(
    "freq_base, basename, expected",
    [(123456.0, "tiny", 123456.0), (None, "smollm2", 100000.0), (None, "tiny", 10000.0)],
)
def test_rope_theta_comes_from_metadata_else_known_value(tmp_path, freq_base, basename, expected):
    write_tiny_gguf(tmp_path / "m.gguf", freq_base=freq_base, basename=basename, n_layer=1)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rope_theta"] == expected


def test_bfloat16_option(tiny, tmp_path):
    import mlx.core as mx

    gguf_path, _, _, _ = tiny
    result = convert_gguf(gguf_path, tmp_path, dtype="bfloat16")
    assert result.dtype == "bfloat16"
    assert mx.load(str(tmp_path / "model.safetensors"))["model.norm.weight"].dtype == mx.bfloat16
    with pytest.raises(ValueError, match="'int8'"):
        convert_gguf(gguf_path, tmp_path, dtype="int8")


TEXTS = [
    PROMPT,
    "the cap of 2012, 1212 and 12.",  # the "1 2" merge must never apply: digits split one by one
    "  leading and trailing spaces  \n\n",
    "café naïve 東京 — ok?!",
    "he's the one they'll see",
    "<|im_end|>the<|im_start|><|endoftext|>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_llama_cpp_tokenization(tiny, text):
    gguf_path, out, _, _ = tiny
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    want = ReferenceBPE.from_gguf(gguf_path).encode(text)
    assert tok.encode(text).ids == want
    assert tok.decode(want, skip_special_tokens=False) == text


def test_tokenizer_loads_through_mlx_lm_with_the_tool_template(tiny):
    _, out, _, _ = tiny
    from mlx_lm import load

    _, tokenizer = load(str(out))
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_ids == {2}
    assert tokenizer.chat_template == tool_chat_template()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "weather?"}]
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    assert '<tools>\n{"name": "get_weather", "parameters": {"type": "object"}}\n</tools>' in text
    assert text.endswith("<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n")
    # tokenize=True returns the same text's ids, special tokens as single ids.
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True)
    assert ids == tokenizer.encode(text) and ids[0] == 1
    # mlx-lm's server reads the template's <tool_call> JSON back with its json_tools parser.
    assert tokenizer.tool_call_start == "<tool_call>"


def test_template_renders_tool_calls_and_tool_results(tiny):
    _, out, _, _ = tiny
    from mlx_lm import load

    _, tokenizer = load(str(out))
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "w", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "content": "18C"},
        {"role": "tool", "content": "25C"},
        {"role": "assistant", "content": "18C and 25C."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\nParis and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "w", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "w", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n18C and 25C.<|im_end|>\n"
    )


class _Field:
    def __init__(self, value):
        self.value = value

    def contents(self):
        return self.value


def test_unsupported_architecture_and_tokenizer_are_named():
    with pytest.raises(ValueError, match="'qwen2'"):
        read_config({"general.architecture": _Field("qwen2")}, vocab_size=10)
    spm = GGUFVocab(model="llama", pre="default", tokens=["a"], token_types=[1], merges=[])
    with pytest.raises(ValueError, match="'llama'"):
        build_tokenizer(spm)
    odd_pre = GGUFVocab(model="gpt2", pre="deepseek-llm", tokens=["a"], token_types=[1], merges=[])
    with pytest.raises(ValueError, match="'deepseek-llm'"):
        build_tokenizer(odd_pre)


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_gguf_add_bos_is_honoured_by_the_tokenizer(tmp_path):
    from mlx_lm import load

    write_tiny_gguf(tmp_path / "bos.gguf", add_bos=True, n_layer=1)
    convert_gguf(tmp_path / "bos.gguf", tmp_path / "out")
    _, tokenizer = load(str(tmp_path / "out"))
    assert tokenizer.encode("the") == [1, *tokenizer.encode("the", add_special_tokens=False)]
    # The chat template writes its own <|im_start|>: no doubled BOS.
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True)
    assert ids[:2] != [1, 1]
