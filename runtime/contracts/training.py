"""Fine-tuning: the hyperparameters a run takes and the record it leaves behind.

`TrainingConfig` is what `FinetuneJob.hyperparameters` decodes into (unknown keys are an
error, so a typo never silently trains with a default). `TrainingRecord` is written next
to the adapter, last, and names everything needed to reproduce or audit the run: the
exact base weights (digest), the exact dataset (manifest hash), the method and settings,
and the final metrics.
"""

from __future__ import annotations

from typing import Literal

from .base import Contract
from .specialist import Method

TRAINING_VERSION = 1

TRAINING_RECORD = "training_record.json"

Schedule = Literal["constant", "cosine", "linear"]
Optimizer = Literal["adam", "adamw", "sgd"]
KLDirection = Literal["forward", "reverse"]
TeacherApi = Literal["chat", "completions"]
ToolChoice = Literal["auto", "required", "none"]
KTOReferencePoint = Literal["zero", "batch"]


class TrainingConfig(Contract):
    """Every knob of one training run. Defaults suit a small specialist on CPU."""

    schema_version: int = TRAINING_VERSION
    # Optimizer updates; each consumes `batch_size * grad_accumulation` sequences.
    steps: int = 200
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_schedule: Schedule = "cosine"
    warmup_steps: int = 0
    # Where cosine / linear decay ends, as a fraction of `learning_rate`.
    final_lr_fraction: float = 0.1
    optimizer: Optimizer = "adamw"
    weight_decay: float = 0.0
    # Global gradient-norm clip; 0 turns it off.
    max_grad_norm: float = 0.0
    max_seq_length: int = 2048
    # Pack several rows into one sequence of up to max_seq_length tokens (block-diagonal
    # attention, no cross-talk); then batch_size counts packed sequences, not rows.
    pack: bool = False
    grad_checkpoint: bool = False
    # Adapter layers: the last `num_layers` transformer blocks (-1: all of them).
    num_layers: int = -1
    lora_rank: int = 8
    lora_scale: float = 20.0
    lora_dropout: float = 0.0
    # Module names inside a block to adapt (e.g. ["self_attn.q_proj"]); None: every linear.
    lora_keys: list[str] | None = None
    # Validation every N updates (0: only at the end); -1 val_batches uses the whole split.
    eval_every: int = 50
    val_batches: int = -1
    # Stop after this many evaluations without improvement (0: never stop early).
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    checkpoint_every: int = 50
    report_every: int = 10
    # QLoRA: how the base is quantized before the adapter goes on top.
    quant_bits: int = 4
    quant_group_size: int = 64
    # Logit distillation: loss = alpha * T^2 * KL + (1 - alpha) * CE on the recorded tokens.
    distill_temperature: float = 2.0
    distill_direction: KLDirection = "forward"
    distill_alpha: float = 1.0
    # Keep only the teacher's top-k logits per position, precomputed and cached (0: the
    # teacher stays loaded and gives full logits every step).
    distill_top_k: int = 0
    # Sequence distillation: an OpenAI-compatible base URL (…/v1) instead of a local teacher,
    # asked through /chat/completions (messages + tools recovered from the ChatML prompt, so
    # the runtime applies its grammar) or /completions (the raw prompt text).
    teacher_endpoint: str | None = None
    teacher_api: TeacherApi = "chat"
    # tool_choice when the prompt lists tools; a local teacher then decodes under the
    # runtime's grammar constraint for it.
    teacher_tool_choice: ToolChoice = "auto"
    teacher_max_tokens: int = 256
    teacher_temperature: float = 0.0
    # `module:function(prompt_text, answer_text, reference_text) -> bool`; None: built-in rules.
    teacher_accept: str | None = None
    # Continue from this adapter directory (its recorded base must be this run's base).
    # For kto / dpo it is also the reference: log-probs come from the starting weights.
    init_adapter: str | None = None
    # Preference methods (kto, dpo, kto-sft): the strength of the implicit KL to the
    # reference (beta of DPO / KTO); larger stays closer to the reference.
    pref_beta: float = 0.1
    # KTO's weights of desirable / undesirable examples (lambda_D, lambda_U); with
    # unbalanced classes, choose them so lambda_D * n_D / (lambda_U * n_U) is in [1, 4/3].
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    # KTO's reference point z0: "zero" (failures must fall below the reference) or "batch"
    # (the batch's mean implicit reward, clamped at 0; closer to the paper's KL estimate).
    kto_reference_point: KTOReferencePoint = "zero"
    # Weight of a token-mean cross entropy on desirable rows / chosen answers added to the
    # preference loss (kto-sft defaults it to 1; for dpo it is RPO's NLL term).
    pref_sft_weight: float | None = None


class TrainingRecord(Contract):
    """`training_record.json` in an adapter directory: how the adapter was made."""

    specialist: str
    method: Method
    # The base as named by the caller, where it resolved to, and its content digest.
    base_model: str
    base_path: str
    base_digest: str
    # The weights the adapter was actually trained against (the 4-bit base for QLoRA).
    trained_base_path: str
    trained_base_digest: str
    dataset_dir: str
    dataset_name: str
    # The manifest's own content digest and the sha256 of the manifest file's bytes.
    dataset_digest: str
    dataset_manifest_sha256: str
    hyperparameters: TrainingConfig
    seed: int
    # Hash of everything that determines the result: rerunning with the same key
    # resumes (or returns) this run instead of starting another.
    run_key: str
    adapter_sha256: str
    steps_done: int
    # The step whose weights were kept (the best validation loss; the last step without one).
    best_step: int
    schema_version: int = TRAINING_VERSION
    teacher_model: str | None = None
    teacher_digest: str = ""
    # The adapter this run started from (continued training), by its weights' sha256.
    init_adapter_sha256: str = ""
    # Preference methods: the digest of the weights the reference log-probs came from.
    reference_digest: str = ""
    stopped_early: bool = False
    # train_loss, val_loss (best), initial_val_loss, trained_tokens, tokens_per_second, ...
    metrics: dict[str, float] = {}
    created_at: float = 0.0
    duration_s: float = 0.0
