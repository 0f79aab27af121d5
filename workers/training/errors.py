"""Why a training run refused to start or stopped: one class per reason a caller acts on.

Every class derives from `TrainingError` (a `ValueError`), whose message is the whole
story in one line; the queue turns it into a failed job with that message as the reason,
and `tinygpt train` prints it and exits 2. Nothing here imports MLX.
"""

from __future__ import annotations


class TrainingError(ValueError):
    """A run that must not produce an adapter. `reason` is a short machine-usable tag."""

    reason = "training-error"


class EmptyDatasetError(TrainingError):
    """No training rows, or no row with a single token to learn from."""

    reason = "empty-dataset"


class DatasetFormatError(TrainingError):
    """A dataset directory whose manifest or row files do not match the contract."""

    reason = "bad-dataset"


class BaseModelMismatch(TrainingError):
    """An adapter, checkpoint or dataset recorded for other base weights than the ones given."""

    reason = "base-model-mismatch"


class TeacherTokenizerMismatch(TrainingError):
    """Logit distillation needs one vocabulary; the teacher's differs from the student's."""

    reason = "teacher-tokenizer-mismatch"


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; the partial adapter is discarded."""

    reason = "non-finite-loss"


class TeacherError(TrainingError):
    """Sequence distillation could not get usable answers from the teacher."""

    reason = "teacher-error"


class OutputExists(TrainingError):
    """The output directory holds a different run's adapter."""

    reason = "output-exists"


class PreferenceDataError(TrainingError):
    """A preference method without the examples it needs (no pairs, or KTO with one class)."""

    reason = "preference-data"


class ReferenceMismatch(TrainingError):
    """Cached reference log-probs that belong to other weights or other rows."""

    reason = "reference-mismatch"
