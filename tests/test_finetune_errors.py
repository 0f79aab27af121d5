"""Bad input stops training with a specific error and a message that says what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.finetune_fixtures import job, task_data, tinygpt_home, tiny_base  # noqa: F401
from tests.tiny_model import build_tiny_model
from tinygpt.runtime.contracts.dataset import DatasetRow
from tinygpt.workers.finetune import run
from tinygpt.runtime.models.manifest import model_digest
from tinygpt.workers.training.data import load_dataset
from tinygpt.workers.training.errors import (
    BaseModelMismatch,
    DatasetFormatError,
    EmptyDatasetError,
    NonFiniteLoss,
    TeacherTokenizerMismatch,
    TrainingError,
)
from tinygpt.workers.training.importer import write_dataset


def _dataset(path, base, rows, digest=None, base_model=None):
    """A dataset directory with `rows` as its train split and the task's valid split."""
    write_dataset(path, "bad", {"train": rows}, base_model or str(base), model_digest(base) if digest is None else digest)
    return path


def test_empty_training_split(tiny_base, tmp_path):
    data = _dataset(tmp_path / "data", tiny_base, [])
    with pytest.raises(EmptyDatasetError, match="train split has no rows"):
        run(job(tiny_base, data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_all_masked_dataset(tiny_base, tmp_path):
    rows = [DatasetRow(id=str(i), input_ids=[5, 6, 7, 8], loss_mask=[1, 0, 0, 0]) for i in range(3)]
    data = _dataset(tmp_path / "data", tiny_base, rows)
    with pytest.raises(EmptyDatasetError, match="every one of the 3 train rows is fully masked"):
        run(job(tiny_base, data, tmp_path / "out"))


def test_ids_outside_the_vocabulary(tiny_base, tmp_path):
    rows = [DatasetRow(id="x", input_ids=[5, 100000], loss_mask=[0, 1])]
    with pytest.raises(DatasetFormatError, match="100000 is outside the model's vocabulary"):
        run(job(tiny_base, _dataset(tmp_path / "data", tiny_base, rows), tmp_path / "out"))


def test_row_files_must_match_the_manifest(tiny_base, task_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(task_data, data)
    with open(data / "train.jsonl", "a") as f:
        f.write(json.dumps({"id": "extra", "input_ids": [1, 2], "loss_mask": [0, 1]}) + "\n")
    with pytest.raises(DatasetFormatError, match="sha256 does not match the manifest"):
        load_dataset(data)


def test_dataset_for_another_base_model(tiny_base, task_data, tmp_path):
    rows = load_dataset(task_data).rows("train")
    data = _dataset(tmp_path / "data", tiny_base, rows, digest="0" * 64, base_model="some-other-model")
    with pytest.raises(BaseModelMismatch, match="tokenized for some-other-model"):
        run(job(tiny_base, data, tmp_path / "out"))


def test_dataset_of_a_sibling_model_with_the_same_tokenizer_is_fine(tiny_base, task_data, tmp_path):
    # Same tokenizer, other weights (e.g. the student of a distillation): ids mean the same tokens.
    sibling = build_tiny_model(tmp_path / "sibling", seed=1)
    record = run(job(sibling, task_data, tmp_path / "out", steps=1))
    assert record.base_digest == model_digest(sibling) != load_dataset(task_data).manifest.base_digest


def test_continuing_an_adapter_of_another_base(tiny_base, task_data, tmp_path):
    other = build_tiny_model(tmp_path / "other", seed=1)
    run(job(other, task_data, tmp_path / "theirs", steps=1))
    with pytest.raises(BaseModelMismatch, match=r"was trained on .*other \(digest"):
        run(job(tiny_base, task_data, tmp_path / "out", steps=1, init_adapter=str(tmp_path / "theirs")))


def test_teacher_with_another_tokenizer(tiny_base, task_data, tmp_path):
    strange = tmp_path / "strange-teacher"
    shutil.copytree(tiny_base, strange)
    tokenizer = json.loads((strange / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = (token for token, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same tokens, other ids
    (strange / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(TeacherTokenizerMismatch, match="different tokenizer than the student"):
        run(job(tiny_base, task_data, tmp_path / "out", "distill-logit", teacher=strange))


def test_nan_loss_stops_without_an_adapter(tiny_base, task_data, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step \d+"):
        run(job(tiny_base, task_data, tmp_path / "out", learning_rate=1e30, warmup_steps=0, eval_every=0))
    # No output, and no work folder to resume into the same NaN.
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_unknown_or_invalid_hyperparameters(tiny_base, task_data, tmp_path):
    with pytest.raises(TrainingError, match="unknown field `learning_rat`"):
        run(job(tiny_base, task_data, tmp_path / "out", learning_rat=1e-3))
    with pytest.raises(TrainingError, match="steps must be at least 1"):
        run(job(tiny_base, task_data, tmp_path / "out", steps=0))
    with pytest.raises(TrainingError, match="distill-logit needs a teacher"):
        run(job(tiny_base, task_data, tmp_path / "out", "distill-logit"))


def test_errors_carry_a_reason_the_queue_can_record():
    assert issubclass(NonFiniteLoss, TrainingError) and issubclass(TrainingError, ValueError)
    assert {c.reason for c in (EmptyDatasetError, BaseModelMismatch, TeacherTokenizerMismatch, NonFiniteLoss)} == {
        "empty-dataset", "base-model-mismatch", "teacher-tokenizer-mismatch", "non-finite-loss",
    }
