"""One training run inside the machine lock: load, build the objective, loop, write the output.

`workers/finetune.py` checks the inputs, computes the run key and takes the lock; this
module does the MLX work. Kept apart so the stage's contract (what is checked, when a run
is a repeat) reads on one page and the mechanics on another.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.dataset import DatasetRow
from tinygpt.runtime.contracts.specialist import PREFERENCE_METHODS
from tinygpt.runtime.contracts.io import atomic_write_bytes
from tinygpt.runtime.contracts.training import TRAINING_RECORD, TrainingRecord
from tinygpt.runtime.hashing import sha256_file

from . import adapters, distill, losses, models, preference
from .checkpoint import ADAPTER_CONFIG, ADAPTER_FILE, METRICS_FILE, load_checkpoint, trim_metrics, write_output
from .data import BatchPlan, check_rows, trainable_tokens
from .distill_seq import EndpointTeacher, LocalTeacher, load_accept, teacher_rows
from .loop import Objective, run_loop
from .quantize import quantized_base
from .report import Reporter


def _sft_objective() -> Objective:
    return Objective(loss=losses.cross_entropy, arrays=losses.batch_arrays)


def _logit_objective(ctx, tokenizer, train_rows, val_rows) -> tuple[Objective, object | None]:
    """The distillation objective, and the teacher when it must stay loaded (full logits)."""
    import mlx.core as mx

    cfg, job = ctx["cfg"], ctx["job"]
    teacher, teacher_tokenizer = models.load(ctx["teacher_path"])
    distill.check_tokenizers(tokenizer, teacher_tokenizer, job.teacher_model)
    teacher.freeze()
    if cfg.distill_top_k == 0:
        return distill.full_logits_objective(teacher, cfg), teacher
    k, tables = cfg.distill_top_k, {}
    for split, rows in (("train", train_rows), ("valid", val_rows)):
        if rows:
            key = distill.cache_key(ctx["teacher_digest"], ctx["dataset"].manifest_sha256, split, k, cfg.max_seq_length)
            cache_file = paths.subdir("distill") / f"{key}.safetensors"
            tables[split] = distill.precompute_topk(teacher, rows, k, cfg.max_seq_length, cache_file, ctx["say"])
    # The point of top-k: the teacher's memory is free before the student trains.
    del teacher
    mx.clear_cache()
    objective = Objective(
        loss=distill.topk_loss(cfg),
        arrays=distill.topk_arrays(tables["train"], k),
        val_arrays=distill.topk_arrays(tables["valid"], k) if "valid" in tables else None,
    )
    return objective, None


def _teacher_rows(ctx, tokenizer, rows: list[DatasetRow]) -> tuple[list[DatasetRow], dict]:
    """Sequence distillation's training rows, generated once per run and kept in the work folder."""
    import mlx.core as mx

    cfg, job, work, say = ctx["cfg"], ctx["job"], ctx["work"], ctx["say"]
    cache, stats_file = work / "teacher_rows.jsonl", work / "teacher_stats.json"
    if cache.exists() and stats_file.exists():
        decoder = msgspec.json.Decoder(DatasetRow)
        return [decoder.decode(line) for line in cache.read_bytes().splitlines()], json.loads(stats_file.read_text())
    prompts = [r for r in rows if trainable_tokens(r) > 0]
    if cfg.teacher_endpoint:
        eos_text = tokenizer.decode([tokenizer.eos_token_id])
        teacher = EndpointTeacher(
            cfg.teacher_endpoint, job.teacher_model or "default", cfg.teacher_temperature, cfg.teacher_max_tokens,
            [eos_text], api=cfg.teacher_api, tool_choice=cfg.teacher_tool_choice,
        )
        say(f"teacher: {cfg.teacher_endpoint} answers {len(prompts)} prompts")
    else:
        model, teacher_tokenizer = models.load(ctx["teacher_path"])
        same = models.tokenizer_fingerprint(tokenizer) == models.tokenizer_fingerprint(teacher_tokenizer)
        teacher = LocalTeacher(
            model, teacher_tokenizer, same, cfg.teacher_temperature, cfg.teacher_max_tokens, cfg.teacher_tool_choice
        )
        say(f"teacher: {job.teacher_model} answers {len(prompts)} prompts")
    new_rows, stats = teacher_rows(prompts, teacher, tokenizer, load_accept(cfg.teacher_accept), say)
    del teacher
    mx.clear_cache()
    atomic_write_bytes(cache, b"".join(msgspec.json.encode(r) + b"\n" for r in new_rows))
    atomic_write_bytes(stats_file, json.dumps(stats).encode())
    return new_rows, stats


def train(*, job, cfg, dataset, base_path, base_digest, teacher_path, teacher_digest, init_sha, run_key, out, work,
          progress, callbacks, say) -> TrainingRecord:
    """Everything between "inputs are valid, the lock is ours" and "the output exists"."""
    import mlx.core as mx

    # What the objective builders need from this run.
    ctx = dict(cfg=cfg, job=job, dataset=dataset, work=work, say=say, teacher_path=teacher_path, teacher_digest=teacher_digest)
    started = time.time()
    method = job.method
    trained_path, trained_digest = base_path, base_digest
    if method == "qlora":
        trained_path, trained_digest = quantized_base(
            base_path, base_digest, bits=cfg.quant_bits, group_size=cfg.quant_group_size, say=say
        )
        if mx.default_device() == mx.cpu:
            # Measured (benchmarks/RESULTS.md): MLX's CPU quantized matmul has no BLAS path,
            # so a QLoRA step is many times slower than a LoRA step. Worth saying up front.
            say("QLoRA on the CPU backend saves memory but trains much slower than LoRA (MLX's CPU "
                "quantized matmul is ~40x slower than its BLAS matmul); prefer --method lora unless memory is short")
    model, tokenizer = models.load(trained_path)
    vocab = models.vocab_size(model)
    preference_run = method in PREFERENCE_METHODS
    train_rows, val_rows = dataset.rows("train"), dataset.rows("valid")
    extra: dict[str, float] = {}
    if method == "distill-seq":
        check_rows(train_rows, "train", vocab)
        train_rows, stats = _teacher_rows(ctx, tokenizer, train_rows)
        extra = {f"teacher_{k}": float(v) for k, v in stats.items()}
    if not preference_run:  # preference methods pick their own rows (preference.prepare)
        train_rows = check_rows(train_rows, "train", vocab)
        val_rows = check_rows(val_rows, "valid", vocab) if val_rows else []

    teacher = None
    if method == "distill-logit":
        objective, teacher = _logit_objective(ctx, tokenizer, train_rows, val_rows)
    else:
        objective = _sft_objective()

    # Seeded right before the adapter layers are created: their init is the only random draw.
    mx.random.seed(job.seed)
    num_layers = adapters.attach(model, cfg, dora=method == "dora")
    if cfg.init_adapter:
        adapters.load_initial(model, Path(cfg.init_adapter))
    optimizer = adapters.build_optimizer(cfg)

    metrics_path = work / METRICS_FILE
    resume = load_checkpoint(work)
    if resume is not None:
        trim_metrics(metrics_path, resume[0].step)
        say(f"resuming from the checkpoint at step {resume[0].step}")
    else:
        metrics_path.unlink(missing_ok=True)
    ref_digest = ""
    if preference_run:
        # Before the first step (and before a checkpoint is loaded): the model holds the
        # starting weights, which are the reference.
        ref_digest = preference.reference_digest(base_digest, init_sha)
        started_ref = time.time()
        prepared = preference.prepare(model, method, cfg, dataset, vocab=vocab, seed=job.seed, ref_digest=ref_digest, say=say)
        objective, train_plan, val_batches = prepared.objective, prepared.train, prepared.val
        extra |= {**prepared.counts, "reference_seconds": time.time() - started_ref}
    else:
        train_plan = BatchPlan(train_rows, cfg.batch_size, cfg.max_seq_length, cfg.pack, job.seed)
        val_batches = BatchPlan(val_rows, cfg.batch_size, cfg.max_seq_length, cfg.pack, job.seed).fixed(cfg.val_batches)
    if train_plan.truncated:
        say(f"{train_plan.truncated} rows are longer than max_seq_length={cfg.max_seq_length} and are cut")
    if not val_batches:
        say("no validation rows: the last step's adapter is kept and early stopping is off")

    start = resume[0].step if resume else 0
    with Reporter(metrics_path, cfg.steps, start=start, show=progress, title=job.specialist) as reporter:
        result = run_loop(
            model, optimizer, objective, train_plan, val_batches, cfg,
            seed=job.seed, work=work, reporter=reporter, resume=resume, callbacks=callbacks,
        )
    del teacher

    state = result.state
    weights = result.best if result.best is not None else result.final
    adapter_file = work / "output.safetensors"
    # Sorted: the best weights of a resumed run come back from a checkpoint file in another
    # key order, and the adapter's bytes (its sha256) must not depend on that.
    mx.save_safetensors(str(adapter_file), dict(sorted(weights.items())))
    base_info = {"base_model": job.base_model, "base_digest": base_digest, "trained_base_digest": trained_digest}
    config = adapters.adapter_config(
        cfg, dora=method == "dora", num_layers=num_layers, model_path=trained_path, base=base_info
    )
    metrics = {
        "train_loss": state.last_train_loss,
        "val_loss": state.best_val,
        "initial_val_loss": state.initial_val,
        "final_val_loss": state.last_val,
        "steps": float(state.step),
        "trained_tokens": float(state.trained_tokens),
        "tokens_per_second": state.trained_tokens / max(state.train_time, 1e-9),
        "input_tokens": float(state.input_tokens),
        "input_tokens_per_second": state.input_tokens / max(state.train_time, 1e-9),
        "peak_memory_gb": result.peak_memory_gb,
        **extra,
    }
    record = TrainingRecord(
        specialist=job.specialist,
        method=method,
        base_model=job.base_model,
        base_path=str(base_path),
        base_digest=base_digest,
        trained_base_path=str(trained_path),
        trained_base_digest=trained_digest,
        dataset_dir=str(job.dataset_dir),
        dataset_name=dataset.manifest.name,
        dataset_digest=dataset.manifest.digest,
        dataset_manifest_sha256=dataset.manifest_sha256,
        hyperparameters=cfg,
        seed=job.seed,
        teacher_model=job.teacher_model,
        teacher_digest=teacher_digest,
        init_adapter_sha256=init_sha,
        reference_digest=ref_digest,
        run_key=run_key,
        adapter_sha256=sha256_file(adapter_file),
        steps_done=state.step,
        best_step=state.best_step if result.best is not None else state.step,
        stopped_early=state.stopped_early,
        metrics={k: float(v) for k, v in metrics.items() if v is not None},
        created_at=time.time(),
        duration_s=time.time() - started,
    )
    write_output(
        out,
        {
            ADAPTER_FILE: adapter_file,
            ADAPTER_CONFIG: json.dumps(config, indent=2).encode(),
            METRICS_FILE: metrics_path,
        },
        (TRAINING_RECORD, msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n"),
    )
    return record


