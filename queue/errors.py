"""Errors a stage raises to steer the queue."""

from __future__ import annotations


class PermanentError(ValueError):
    """Retrying cannot help (bad configuration or input the stage cannot quarantine).

    The job goes straight to the failed registry with this message as its reason,
    instead of spending its retries and their backoff first.
    """
