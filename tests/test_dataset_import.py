"""`tinygpt dataset import`: mlx-lm JSONL -> token-id rows whose mask covers exactly the assistant's tokens."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from tests.finetune_fixtures import write_jsonl
from tests.tiny_model import EOS, build_tiny_model
from tinygpt.workers.training.data import load_dataset
from tinygpt.workers.training.errors import DatasetFormatError, EmptyDatasetError
from tinygpt.workers.training.importer import ImportStats, chat_row, import_jsonl, record_row

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("import") / "m")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(model_dir, eos_token_ids=json.loads((model_dir / "config.json").read_text())["eos_token_id"])


def trained_text(tokenizer, ids, mask) -> list[str]:
    """The decoded runs of mask-1 tokens."""
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_chat_masks_only_the_assistant_content_and_its_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    ids, mask = record_row(tokenizer, {"messages": messages}, ImportStats())
    # Tokenized once: the row is exactly the chat template's rendering of the conversation.
    assert ids == list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    assert trained_text(tokenizer, ids, mask) == [f"Paris.{EOS}"]  # not the header, not the trailing newline


def test_tool_conversation_trains_each_assistant_turn_but_no_tool_output(tokenizer):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 3}'},
        {"role": "assistant", "content": "It is 3 degrees."},
    ]
    stats = ImportStats()
    ids, mask = record_row(tokenizer, {"messages": messages, "tools": TOOLS}, stats)
    assert stats.formats == {"tools": 1} and stats.skipped_turns == 0
    assert trained_text(tokenizer, ids, mask) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' + EOS,
        "It is 3 degrees." + EOS,
    ]
    assert "get_weather" in tokenizer.decode(ids[: mask.index(1)])  # the tool list is in the prompt


def test_completions_are_one_user_and_one_assistant_turn(tokenizer):
    record = {"prompt": "Say hi", "completion": "Hi!"}
    ids, mask = record_row(tokenizer, record, ImportStats())
    as_chat = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert (ids, mask) == record_row(tokenizer, {"messages": as_chat}, ImportStats())
    assert trained_text(tokenizer, ids, mask) == ["Hi!" + EOS]


def test_text_rows_train_every_token_and_end_with_eos(tokenizer):
    ids, mask = record_row(tokenizer, {"text": "The quick brown fox."}, ImportStats())
    assert ids[-1] == tokenizer.eos_token_id and all(mask)


class RewritingTokenizer:
    """A character tokenizer whose template drops earlier assistant turns' text (like
    templates that strip reasoning from history), so earlier turns are not a prefix."""

    eos_token_id = 0
    eos_token_ids = [0]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False, tokenize=True, return_dict=False):
        text = ""
        for i, m in enumerate(messages):
            last_assistant = m["role"] == "assistant" and i == len(messages) - 1
            body = m["content"] if m["role"] != "assistant" or last_assistant else "..."
            text += f"<{m['role']}>{body}\x00"
        if add_generation_prompt:
            text += "<assistant>"
        return [0 if c == "\x00" else ord(c) for c in text]


def test_a_turn_the_template_rewrites_is_masked_out_not_guessed():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second"},
    ]
    stats = ImportStats()
    ids, mask = chat_row(RewritingTokenizer(), messages, None, stats)
    trained = "".join(chr(i) if i else "|" for i, m in zip(ids, mask) if m)
    assert trained == "second|" and stats.skipped_turns == 1


def test_import_writes_a_dataset_the_trainer_reads(model_dir, tokenizer, tmp_path):
    records = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(40)]
    src = write_jsonl(tmp_path / "chat.jsonl", records)
    manifest, stats = import_jsonl(src, tokenizer, tmp_path / "ds", base_model="tiny", base_digest="d" * 64,
                                   valid_fraction=0.25, test_fraction=0.1)
    data = load_dataset(tmp_path / "ds")
    assert stats.rows == manifest.rows == 40 and set(data.splits) == {"train", "valid", "test"}
    assert {r.split for r in data.rows("valid")} == {"valid"}
    assert manifest.base_digest == "d" * 64 and manifest.trained_tokens > 0
    # The split follows content, not position: shuffled input, same assignment.
    again = write_jsonl(tmp_path / "shuffled.jsonl", records[::-1])
    import_jsonl(again, tokenizer, tmp_path / "ds2", base_model="tiny", base_digest="d" * 64,
                 valid_fraction=0.25, test_fraction=0.1)
    ids = lambda d, s: sorted(r.id for r in load_dataset(d).rows(s))  # noqa: E731
    assert all(ids(tmp_path / "ds", s) == ids(tmp_path / "ds2", s) for s in ("train", "valid", "test"))


def test_import_a_folder_of_splits(tokenizer, tmp_path):
    src = tmp_path / "mlx-data"
    src.mkdir()
    write_jsonl(src / "train.jsonl", [{"prompt": "p", "completion": "c"}] * 3)
    write_jsonl(src / "valid.jsonl", [{"text": "hello"}])
    manifest, stats = import_jsonl(src, tokenizer, tmp_path / "ds", base_model="tiny", base_digest="")
    assert {s: f.rows for s, f in manifest.splits.items()} == {"train": 3, "valid": 1}
    assert stats.formats == {"completions": 3, "text": 1}


def test_bad_input(tokenizer, tmp_path):
    with pytest.raises(DatasetFormatError, match="unsupported record with keys"):
        import_jsonl(write_jsonl(tmp_path / "a.jsonl", [{"question": "?"}]), tokenizer, tmp_path / "a", base_model="t", base_digest="")
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetFormatError, match="line 1 is not JSON"):
        import_jsonl(tmp_path / "b.jsonl", tokenizer, tmp_path / "b", base_model="t", base_digest="")
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(EmptyDatasetError, match="no training rows"):
        import_jsonl(tmp_path / "c.jsonl", tokenizer, tmp_path / "c", base_model="t", base_digest="")


def _command(name):
    import importlib

    module = importlib.import_module(f"tinygpt.runtime.commands.{name}")
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return module, parser


def test_dataset_command_import_and_show(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    src = write_jsonl(tmp_path / "x.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)])
    module, parser = _command("dataset")
    out = tmp_path / "ds"
    assert module.run(parser.parse_args(["import", str(src), "--model", str(model_dir), "--out", str(out)])) == 0
    assert "10 rows" in capsys.readouterr().out
    from tinygpt.runtime.models.manifest import model_digest

    assert load_dataset(out).manifest.base_digest == model_digest(model_dir)
    assert module.run(parser.parse_args(["show", str(out), "--rows", "1"])) == 0
    assert "train:" in capsys.readouterr().out
    assert module.run(parser.parse_args(["import", str(tmp_path / "missing.jsonl"), "--model", str(model_dir), "--out", str(out)])) == 2


def test_command_modules_do_not_import_mlx():
    code = (
        "import argparse, sys\n"
        "from tinygpt.runtime.commands import dataset, train\n"
        "for m in (dataset, train): m.configure(argparse.ArgumentParser())\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('mlx', 'mlx_lm', 'transformers', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
