"""The fine-tune stage: a `FinetuneJob` in, an mlx-lm adapter directory + `TrainingRecord` out.

    run(job) -> TrainingRecord

Methods: lora, dora, qlora (LoRA on a cached 4-bit copy of the base), distill-logit
(KL to a teacher sharing the tokenizer), distill-seq (train on a teacher's answers), and
the preference methods kto, dpo and kto-sft (LoRA on successes and failures, or pairs,
against cached reference log-probs; training/preference.py).
Training reads the dataset's token ids and loss masks as recorded, holds the machine's
training lock while it runs, checkpoints as it goes, and writes the output directory
atomically. The same job run twice resumes (or returns) the same run: the work folder
and the output are keyed by a hash of everything that determines the result.

Bad input stops with a `TrainingError` subclass (see training/errors.py) whose message
says what is wrong; the queue turns it into a failed job with that reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from tinygpt.runtime.contracts.io import read_json
from tinygpt.runtime.contracts.jobs import FinetuneJob
from tinygpt.runtime.hashing import sha256_file
from tinygpt.runtime.contracts.specialist import PREFERENCE_METHODS
from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingConfig, TrainingRecord

from .training.checkpoint import ADAPTER_FILE, work_dir
from .training.errors import BaseModelMismatch, NonFiniteLoss, OutputExists, TrainingError

log = logging.getLogger("tinygpt.finetune")

DISTILL = ("distill-logit", "distill-seq")


def config_of(job: FinetuneJob) -> TrainingConfig:
    """The job's hyperparameters as a checked TrainingConfig (unknown keys are errors)."""
    try:
        cfg = msgspec.convert(job.hyperparameters, TrainingConfig)
    except msgspec.ValidationError as e:
        raise TrainingError(f"hyperparameters: {e}") from None
    problems = []
    for name in ("steps", "batch_size", "grad_accumulation", "lora_rank", "report_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be at least 1")
    if cfg.max_seq_length < 2:
        problems.append("max_seq_length must be at least 2")
    if cfg.learning_rate <= 0:
        problems.append("learning_rate must be positive")
    if cfg.distill_temperature <= 0:
        problems.append("distill_temperature must be positive")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        problems.append("distill_alpha must be within [0, 1]")
    if cfg.distill_top_k < 0:
        problems.append("distill_top_k must be 0 (full logits) or positive")
    if job.method in PREFERENCE_METHODS:
        if cfg.pack:
            problems.append(f"{job.method} scores whole sequences: pack must be off")
        if cfg.pref_beta <= 0:
            problems.append("pref_beta must be positive")
        if cfg.kto_desirable_weight <= 0 or cfg.kto_undesirable_weight <= 0:
            problems.append("kto_desirable_weight and kto_undesirable_weight must be positive")
        if cfg.pref_sft_weight is not None and cfg.pref_sft_weight < 0:
            problems.append("pref_sft_weight must not be negative")
    if job.method == "distill-logit" and not job.teacher_model:
        problems.append("distill-logit needs a teacher model")
    if job.method == "distill-seq" and not (job.teacher_model or cfg.teacher_endpoint):
        problems.append("distill-seq needs a teacher model or a teacher endpoint")
    if problems:
        raise TrainingError("bad hyperparameters: " + "; ".join(problems))
    return cfg


def _run_key(job: FinetuneJob, cfg: TrainingConfig, parts: dict) -> str:
    payload = {"method": job.method, "seed": job.seed, "config": msgspec.to_builtins(cfg), **parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _same_tokenizer(recorded_base: str, base_path: Path) -> bool:
    """Whether the model a dataset was tokenized for (if still around) tokenizes like `base_path`:
    then its ids mean the same tokens, e.g. for a distilled student or a sibling fine-tune."""
    from .training import models

    try:
        other = models.resolve(recorded_base)
    except TrainingError:
        return False
    return models.tokenizer_digest(other) == models.tokenizer_digest(base_path)


def _existing(out: Path, run_key: str) -> TrainingRecord | None:
    """The finished record of this same run at `out`; OutputExists if `out` holds another."""
    if (out / TRAINING_RECORD).exists():
        record = read_json(out / TRAINING_RECORD, TrainingRecord)
        if record.run_key == run_key:
            return record
        raise OutputExists(f"{out} already holds another training run's adapter; choose a new output directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExists(f"{out} exists and is not an empty directory")
    return None


def run(job: FinetuneJob, *, progress: bool = False, callbacks=None, say: Callable[[str], None] | None = None) -> TrainingRecord:
    """Train `job` and return its record (or the record of the identical finished run)."""
    from .training import adapters, models
    from tinygpt.runtime.models.manifest import model_digest
    from .training.data import load_dataset
    from .training.lock import training_lock

    say = say or log.info
    cfg = config_of(job)
    base_path = models.resolve(job.base_model)
    base_digest = model_digest(base_path)
    dataset = load_dataset(job.dataset_dir)
    recorded = dataset.manifest.base_digest
    if recorded and recorded != base_digest and not _same_tokenizer(dataset.manifest.base_model, base_path):
        raise BaseModelMismatch(
            f"dataset {job.dataset_dir} was tokenized for {dataset.manifest.base_model} (digest {recorded[:12]}), "
            f"but the base model {job.base_model} has digest {base_digest[:12]} and not the same tokenizer; "
            "its token ids would mean other tokens"
        )
    teacher_path = teacher_digest = None
    if job.method in DISTILL and job.teacher_model and not cfg.teacher_endpoint:
        teacher_path = models.resolve(job.teacher_model)
        teacher_digest = model_digest(teacher_path)
    init_sha = ""
    if cfg.init_adapter:
        adapters.check_base(Path(cfg.init_adapter), base_digest)
        init_sha = sha256_file(Path(cfg.init_adapter) / ADAPTER_FILE)
    run_key = _run_key(
        job,
        cfg,
        {
            "base": base_digest,
            "dataset": dataset.manifest_sha256,
            "teacher": teacher_digest or job.teacher_model,
            "init": init_sha,
        },
    )
    out = Path(job.output_dir)
    done = _existing(out, run_key)
    if done is not None:
        say(f"{out} already holds this run (key {run_key[:12]}); nothing to do")
        return done

    with training_lock(say=say):
        done = _existing(out, run_key)  # finished by another process while we waited
        if done is not None:
            return done
        work = work_dir(out, run_key)
        work.mkdir(parents=True, exist_ok=True)
        context = dict(
            job=job, cfg=cfg, dataset=dataset, base_path=base_path, base_digest=base_digest,
            teacher_path=teacher_path, teacher_digest=teacher_digest or "", init_sha=init_sha,
            run_key=run_key, out=out, work=work, progress=progress, callbacks=callbacks, say=say,
        )
        try:
            from .training.session import train

            record = train(**context)
        except NonFiniteLoss:
            # Rerunning would replay the same numbers into the same NaN: start clean next time.
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        return record


__all__ = ["run", "config_of", "TrainingError"]
