"""LoRA, DoRA and QLoRA on a tiny model: loss goes down, the adapter is mlx-lm's, runs repeat.

Every test trains the session's tiny llama for a few dozen steps on a small tool-calling
task (tests/finetune_fixtures.py); each run takes seconds on CPU.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import msgspec
import pytest

from tests.finetune_fixtures import job, task_data, teacher, tinygpt_home, tiny_base  # noqa: F401
from tinygpt.runtime.contracts.io import read_json
from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingRecord
from tinygpt.workers.finetune import run
from tinygpt.workers.training.data import BatchPlan, load_dataset
from tinygpt.workers.training.errors import OutputExists
from tinygpt.workers.training.loop import Callbacks


def _val_loss(model_dir, adapter_dir, data) -> float:
    """Validation loss of `mlx_lm.load(model_dir, adapter_path=adapter_dir)`, computed independently."""
    import mlx.core as mx
    from mlx_lm import load

    from tinygpt.workers.training.losses import batch_arrays, cross_entropy

    model, _ = load(str(model_dir), adapter_path=str(adapter_dir))
    total = count = 0.0
    for batch in BatchPlan(load_dataset(data).rows("valid"), 4, 2048, False, 0).fixed():
        loss, toks = cross_entropy(model, *batch_arrays(batch))
        mx.eval(loss, toks)
        total += loss.item() * toks.item()
        count += toks.item()
    return total / count


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_method_reduces_validation_loss_and_writes_an_mlx_lm_adapter(method, tiny_base, task_data, tmp_path):
    out = tmp_path / method
    record = run(job(tiny_base, task_data, out, method))

    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 1.0
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapters.safetensors", "metrics.jsonl", TRAINING_RECORD,
    ]
    assert read_json(out / TRAINING_RECORD, TrainingRecord) == record
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == ("dora" if method == "dora" else "lora")
    assert config["tinygpt"]["base_digest"] == record.base_digest
    # What mlx-lm loads is the best checkpoint the record reports, not merely "some" adapter.
    assert _val_loss(record.trained_base_path, out, task_data) == pytest.approx(record.metrics["val_loss"], abs=1e-4)
    kinds = Counter(json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines())
    assert kinds == {"train": 8, "val": 5}  # report every 5 of 40 steps; validation at 0, 10, 20, 30, 40


def test_qlora_trains_on_a_cached_4bit_base_with_its_digest_recorded(tiny_base, task_data, tmp_path, tinygpt_home):
    from tinygpt.runtime.models.manifest import read_manifest

    said = []
    first = run(job(tiny_base, task_data, tmp_path / "a", "qlora", steps=2), say=said.append)
    # On the CPU backend the user hears that QLoRA buys memory, not speed.
    assert any("QLoRA on the CPU backend" in line for line in said)
    quantized = first.trained_base_path
    assert quantized != first.base_path and quantized.startswith(str(tinygpt_home))
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["model"] == quantized
    assert json.loads(open(f"{quantized}/config.json").read())["quantization"]["bits"] == 4
    assert first.trained_base_digest == read_manifest(quantized).digest != first.base_digest
    written = os.stat(f"{quantized}/model.safetensors").st_mtime_ns
    second = run(job(tiny_base, task_data, tmp_path / "b", "qlora", steps=3))
    # Quantized once: the second run reuses the cached copy instead of writing it again.
    assert second.trained_base_path == quantized and second.trained_base_digest == first.trained_base_digest
    assert os.stat(f"{quantized}/model.safetensors").st_mtime_ns == written


class Recorder(Callbacks):
    def __init__(self):
        self.batches = []

    def on_batch(self, step, batch):
        self.batches.append(batch)


@pytest.mark.parametrize("pack", [False, True])
def test_trained_on_ids_are_the_recorded_ids(pack, tiny_base, task_data, tmp_path):
    recorded = [json.loads(line) for line in (task_data / "train.jsonl").read_text().splitlines()]
    recorder = Recorder()
    rows = load_dataset(task_data).rows("train")
    steps = len(BatchPlan(rows, 4, 512, pack, seed=0).epoch(0))  # exactly one epoch
    run(job(tiny_base, task_data, tmp_path / "out", steps=steps, pack=pack, max_seq_length=512), callbacks=recorder)

    seen = []
    for batch in recorder.batches:
        for b, placed in enumerate(batch.placements):
            for _, start, n in placed:
                ids = [int(batch.inputs[b, start])] + batch.targets[b, start : start + n - 1].tolist()
                mask = batch.mask[b, start : start + n - 1].astype(int).tolist()
                seen.append((tuple(ids), tuple(mask)))
    # Every recorded row, id for id and mask for mask (the first token has no target).
    expected = Counter((tuple(r["input_ids"]), tuple(r["loss_mask"][1:])) for r in recorded)
    assert Counter(seen[: len(recorded)]) == expected


def test_same_seed_same_adapter_other_seed_other_adapter(tiny_base, task_data, tmp_path):
    a = run(job(tiny_base, task_data, tmp_path / "a", steps=6, lora_dropout=0.1))
    b = run(job(tiny_base, task_data, tmp_path / "b", steps=6, lora_dropout=0.1))
    c = run(job(tiny_base, task_data, tmp_path / "c", steps=6, lora_dropout=0.1, seed=1))
    assert a.adapter_sha256 == b.adapter_sha256 != c.adapter_sha256
    assert (tmp_path / "a" / "adapters.safetensors").read_bytes() == (tmp_path / "b" / "adapters.safetensors").read_bytes()


def test_rerunning_a_finished_job_returns_its_record_and_other_runs_may_not_overwrite(tiny_base, task_data, tmp_path):
    first = run(job(tiny_base, task_data, tmp_path / "out", steps=2))
    adapter = (tmp_path / "out" / "adapters.safetensors").stat().st_mtime_ns
    assert run(job(tiny_base, task_data, tmp_path / "out", steps=2)) == first
    assert (tmp_path / "out" / "adapters.safetensors").stat().st_mtime_ns == adapter
    with pytest.raises(OutputExists, match="another training run"):
        run(job(tiny_base, task_data, tmp_path / "out", steps=3))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no work or partial folders left next to the output


def test_early_stopping_keeps_the_best_checkpoint(tiny_base, task_data, tmp_path):
    # A min_delta no evaluation can beat: the first evaluation stays best, the next one stops the run.
    record = run(job(tiny_base, task_data, tmp_path / "out", early_stopping_patience=1, early_stopping_min_delta=100.0))
    assert record.stopped_early and record.steps_done == 20 and record.best_step == 10
    val = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    val = {m["step"]: m["val_loss"] for m in val if m["kind"] == "val"}
    assert record.metrics["val_loss"] == val[10] and record.metrics["final_val_loss"] == val[20]


def test_accumulation_checkpointing_packing_and_warmup_train_together(tiny_base, task_data, tmp_path):
    from mlx_lm.models import llama

    call = llama.TransformerBlock.__call__
    record = run(
        job(
            tiny_base, task_data, tmp_path / "out", steps=20, grad_accumulation=2, grad_checkpoint=True,
            pack=True, max_seq_length=256, warmup_steps=8, lr_schedule="linear", max_grad_norm=1.0,
        )
    )
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 1.0
    # Two micro-batches per update: twice the tokens of the same steps without accumulation.
    single = run(job(tiny_base, task_data, tmp_path / "single", steps=20, pack=True, max_seq_length=256, eval_every=0))
    assert record.metrics["trained_tokens"] > 1.5 * single.metrics["trained_tokens"]
    assert llama.TransformerBlock.__call__ is call  # mlx-lm's checkpoint patch was undone
    lrs = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    lrs = [m["learning_rate"] for m in lrs if m["kind"] == "train"]
    assert lrs[0] < lrs[1] > lrs[-1]  # warmup, then decay


def test_continue_from_an_adapter(tiny_base, task_data, tmp_path):
    first = run(job(tiny_base, task_data, tmp_path / "first", steps=10))
    more = run(job(tiny_base, task_data, tmp_path / "more", steps=10, init_adapter=str(tmp_path / "first")))
    assert more.init_adapter_sha256 == first.adapter_sha256
    assert more.metrics["initial_val_loss"] == pytest.approx(first.metrics["val_loss"], abs=1e-4)
    assert more.metrics["val_loss"] < first.metrics["val_loss"]


def test_record_round_trips_through_its_contract(tiny_base, task_data, tmp_path):
    record = run(job(tiny_base, task_data, tmp_path / "out", steps=1))
    data = (tmp_path / "out" / TRAINING_RECORD).read_bytes()
    assert msgspec.json.decode(data, type=TrainingRecord) == record
    assert record.dataset_digest == load_dataset(task_data).manifest.digest
    assert record.hyperparameters.steps == 1 and record.method == "lora"
