"""KTO, DPO and KTO + SFT on a tiny model: each loss moves log-probs the right way.

The toy preference: the tool-calling task of tests/finetune_fixtures.py, where a success
calls the tool and a failure answers the same request in prose (what a small base model
often does instead of calling). Imported
through `tinygpt dataset import`'s formats: successes as chat records, failures with
"label": false, pairs as {"messages", "chosen", "rejected"}.
"""

from __future__ import annotations

import json
import random

import msgspec
import numpy as np
import pytest

from tests.finetune_fixtures import job, task_data, task_records, tinygpt_home, tiny_base, write_jsonl  # noqa: F401
from tinygpt.runtime.contracts.dataset import DatasetManifest, DatasetRow, PreferencePair
from tinygpt.workers.finetune import run
from tinygpt.workers.training.data import load_dataset
from tinygpt.workers.training.errors import PreferenceDataError, ReferenceMismatch, TrainingError
from tinygpt.workers.training.loop import Callbacks
from tinygpt.workers.training.preference import REFERENCE_DIR, pair_rows, sequence_logps

PROSE = ["I am not able to look that up.", "Sorry, I cannot do that for you.", "Please check it yourself."]


def _assistant(call: dict) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}


def preference_records(n: int, seed: int = 0) -> list[dict]:
    """Per request: the success, a failure (label false) and the pair of both answers."""
    rng, out = random.Random(seed), []
    for i, rec in enumerate(task_records(n, seed)):
        user, good = rec["messages"][0], _assistant(rec["messages"][1]["tool_calls"][0]["function"])
        bad = {"role": "assistant", "content": rng.choice(PROSE)}
        out.append({"messages": [user, good], "n": i})
        out.append({"messages": [user, bad], "label": False, "n": i})
        out.append({"messages": [user], "chosen": good, "rejected": bad, "n": i})
    rng.shuffle(out)
    return out


@pytest.fixture(scope="session")
def pref_data(tiny_base, tmp_path_factory):
    from mlx_lm.utils import load_tokenizer

    from tinygpt.runtime.models.manifest import model_digest
    from tinygpt.workers.training.importer import import_jsonl

    root = tmp_path_factory.mktemp("pref-data")
    eos = json.loads((tiny_base / "config.json").read_text())["eos_token_id"]
    tokenizer = load_tokenizer(tiny_base, eos_token_ids=eos)
    src = write_jsonl(root / "pref.jsonl", preference_records(48))
    out = root / "pref"
    import_jsonl(src, tokenizer, out, base_model=str(tiny_base), base_digest=model_digest(tiny_base), valid_fraction=0.2)
    return out


def _logps(base, adapter, rows) -> np.ndarray:
    from mlx_lm import load

    model, _ = load(str(base), adapter_path=None if adapter is None else str(adapter))
    model.eval()
    return sequence_logps(model, rows, 2048)


def _pref_job(base, data, out, method, **hp):
    return job(base, data, out, method, **{"steps": 40, **hp})


def test_import_writes_undesirable_rows_and_pairs(pref_data):
    ds = load_dataset(pref_data)
    assert ds.manifest.pairs is not None and ds.manifest.pairs.rows == 48
    every = [r for s in ("train", "valid") for r in ds.rows(s)]
    failed = [r for s in ("train", "valid") for r in ds.undesirable(s)]
    assert len(every) == len(failed) == 48
    assert all(r.desirable for r in every) and not any(r.desirable for r in failed)
    pair = ds.pairs("train")[0]
    assert pair.chosen_ids[0] != pair.rejected_ids[0] and pair.chosen_ids[-1] == pair.rejected_ids[-1]  # both end the turn


def test_dpo_raises_chosen_over_rejected(tiny_base, pref_data, tmp_path):
    record = run(_pref_job(tiny_base, pref_data, tmp_path / "dpo", "dpo"))
    assert record.method == "dpo" and record.reference_digest == record.base_digest
    assert record.metrics["pairs"] > 0
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"]

    pairs = load_dataset(pref_data).pairs("valid")
    rows = pair_rows(pairs)
    n = len(pairs)
    before, after = _logps(tiny_base, None, rows), _logps(tiny_base, tmp_path / "dpo", rows)
    margin_before = before[:n] - before[n:]
    margin_after = after[:n] - after[n:]
    # Held-out pairs: the chosen answer gains on the rejected one, on every pair.
    assert (margin_after - margin_before).min() > 5.0


def _kto_shifts(base, data, adapter) -> tuple[float, float]:
    """Mean change of held-out desirable / undesirable log-probs from the base to `adapter`."""
    ds = load_dataset(data)
    good, bad = ds.rows("valid"), ds.undesirable("valid")
    shift_good = _logps(base, adapter, good) - _logps(base, None, good)
    shift_bad = _logps(base, adapter, bad) - _logps(base, None, bad)
    return float(shift_good.mean()), float(shift_bad.mean())


def test_kto_lifts_desirable_and_lowers_undesirable(tiny_base, pref_data, tmp_path):
    record = run(_pref_job(tiny_base, pref_data, tmp_path / "kto", "kto"))
    assert record.metrics["desirable_rows"] > 0 and record.metrics["undesirable_rows"] > 0
    assert json.loads((tmp_path / "kto" / "adapter_config.json").read_text())["fine_tune_type"] == "lora"
    good, bad = _kto_shifts(tiny_base, pref_data, tmp_path / "kto")
    assert good > 5.0  # held-out successes more likely than under the reference
    assert bad < -5.0  # held-out failures less likely


def test_kto_sft_pushes_failures_below_where_sft_alone_leaves_them(tiny_base, pref_data, tmp_path):
    """SFT on successes lifts failures too on this random model (+60 nats: their tokens share
    its sharpened output scale); the KTO term of kto-sft must keep them clearly below that.
    Its cross entropy is unbounded and the KTO term saturates, so the SFT weight is small."""
    run(_pref_job(tiny_base, pref_data, tmp_path / "sft", "lora"))
    run(_pref_job(tiny_base, pref_data, tmp_path / "kto-sft", "kto-sft", pref_sft_weight=0.1))
    sft_good, sft_bad = _kto_shifts(tiny_base, pref_data, tmp_path / "sft")
    good, bad = _kto_shifts(tiny_base, pref_data, tmp_path / "kto-sft")
    assert good > 5.0
    assert bad < sft_bad - 10.0


def test_reference_is_computed_once_and_cached_with_the_dataset(tiny_base, pref_data, tmp_path):
    run(_pref_job(tiny_base, pref_data, tmp_path / "a", "kto", steps=2))
    cached = sorted((pref_data / REFERENCE_DIR).glob("*.safetensors"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    said: list[str] = []
    run(_pref_job(tiny_base, pref_data, tmp_path / "b", "kto", steps=3), say=said.append)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert not any(m.startswith("reference: scoring") for m in said)


def test_an_incumbent_adapter_is_the_reference_it_starts_from(tiny_base, pref_data, tmp_path):
    incumbent = run(_pref_job(tiny_base, pref_data, tmp_path / "incumbent", "lora", steps=3))
    record = run(_pref_job(tiny_base, pref_data, tmp_path / "kto", "kto", steps=2, init_adapter=str(tmp_path / "incumbent")))
    assert record.init_adapter_sha256 == incumbent.adapter_sha256
    assert record.reference_digest not in ("", record.base_digest)
    # The first validation is at the reference itself: every implicit reward is 0.
    assert record.metrics["initial_val_loss"] == pytest.approx(0.5, abs=1e-4)


class _Crash(Exception):
    pass


class _CrashAt(Callbacks):
    def on_checkpoint(self, step, folder):
        if step == 10:
            raise _Crash


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_a_crashed_preference_run_resumes_to_the_same_adapter(method, tiny_base, pref_data, tmp_path):
    hp = dict(steps=20, checkpoint_every=10, lora_dropout=0.1)
    reference = run(_pref_job(tiny_base, pref_data, tmp_path / "reference", method, **hp))
    with pytest.raises(_Crash):
        run(_pref_job(tiny_base, pref_data, tmp_path / "resumed", method, **hp), callbacks=_CrashAt())
    said: list[str] = []
    resumed = run(_pref_job(tiny_base, pref_data, tmp_path / "resumed", method, **hp), say=said.append)
    assert "resuming from the checkpoint at step 10" in said
    assert resumed.adapter_sha256 == reference.adapter_sha256
    assert resumed.metrics["val_loss"] == reference.metrics["val_loss"]


def test_dpo_without_pairs_is_a_clear_error(tiny_base, task_data, tmp_path):
    with pytest.raises(PreferenceDataError, match="dpo needs preference pairs and dataset task has no training pairs"):
        run(_pref_job(tiny_base, task_data, tmp_path / "out", "dpo"))
    assert not (tmp_path / "out").exists()


def test_kto_with_one_class_is_a_clear_error(tiny_base, task_data, tmp_path):
    with pytest.raises(PreferenceDataError, match="48|76|desirable and 0 undesirable, so every example is one class"):
        run(_pref_job(tiny_base, task_data, tmp_path / "out", "kto"))


def test_a_reference_cache_of_other_weights_is_refused(tiny_base, pref_data, tmp_path):
    import mlx.core as mx

    run(_pref_job(tiny_base, pref_data, tmp_path / "a", "dpo", steps=1))
    for file in (pref_data / REFERENCE_DIR).glob("*.safetensors"):
        arrays, meta = mx.load(str(file), return_metadata=True)
        mx.save_safetensors(str(file), arrays, metadata={**meta, "reference_digest": "f" * 64})
    try:
        with pytest.raises(ReferenceMismatch, match="delete the file to recompute it"):
            run(_pref_job(tiny_base, pref_data, tmp_path / "b", "dpo", steps=1))
    finally:
        for file in (pref_data / REFERENCE_DIR).glob("*.safetensors"):
            file.unlink()


def test_preference_settings_are_checked(tiny_base, pref_data, tmp_path):
    with pytest.raises(TrainingError, match="pack must be off"):
        run(_pref_job(tiny_base, pref_data, tmp_path / "out", "kto", pack=True))
    with pytest.raises(TrainingError, match="pref_beta must be positive"):
        run(_pref_job(tiny_base, pref_data, tmp_path / "out", "dpo", pref_beta=0.0))


def test_the_command_takes_the_methods_and_their_settings(tmp_path):
    import argparse

    from tinygpt.runtime.commands import train as command
    from tinygpt.workers.finetune import config_of

    parser = argparse.ArgumentParser()
    command.configure(parser)
    for method in ("kto", "dpo", "kto-sft"):
        args = parser.parse_args(["--model", "m", "--data", "d", "--out", "o", "--method", method, "--pref-beta", "0.2",
                                  "--kto-reference-point", "batch", "--pref-sft-weight", "0.5"])
        hp = command.hyperparameters(args)
        assert args.method == method and hp == {"pref_beta": 0.2, "kto_reference_point": "batch", "pref_sft_weight": 0.5}
        from tinygpt.runtime.contracts.jobs import FinetuneJob

        cfg = config_of(FinetuneJob(specialist="s", base_model="m", dataset_dir="d", output_dir="o", method=method, hyperparameters=hp))
        assert cfg.pref_beta == 0.2


def test_version_1_dataset_files_still_decode():
    row = msgspec.json.decode(b'{"id": "r", "input_ids": [1, 2], "loss_mask": [0, 1], "schema_version": 1}', type=DatasetRow)
    assert row.desirable and row.reward is None
    pair = msgspec.json.decode(
        b'{"id": "p", "prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "chosen_reward": 1, "rejected_reward": 0,'
        b' "chosen_trajectory": "a", "rejected_trajectory": "b", "schema_version": 1}',
        type=PreferencePair,
    )
    assert pair.split == "train"
    manifest = msgspec.json.decode(b'{"name": "d", "digest": "x", "base_model": "m", "schema_version": 1}', type=DatasetManifest)
    assert manifest.undesirable is None
