"""Training internals behind workers/finetune.py, one concern per module.

data        dataset directory -> checked rows -> deterministic (packed) batches
losses      forward passes (packed rows kept apart) and the CE / KL objectives
adapters    mlx-lm LoRA / DoRA layers, optimizer + schedule, the adapter format
loop        mlx-lm's compiled step + validation, early stopping, checkpoints, NaN stop
checkpoint  resumable checkpoints and the atomic output directory
session     one run inside the machine lock: load, objective, loop, record
quantize    QLoRA's 4-bit base, cached in the model cache with its digest
distill     logit distillation (full logits or cached top-k)
distill_seq sequence distillation: teacher answers, label rules
chatml      recorded ChatML prompts <-> chat requests (for teachers behind the runtime)
importer    mlx-lm JSONL -> token-id rows (`tinygpt dataset import`)
lock        one training job per machine
report      progress bar and metrics.jsonl
models      resolving, hashing and loading base / teacher models
errors      the reasons a run stops, as exception classes
"""
