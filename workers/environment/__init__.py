"""The environment stage: rounds of collect ▶ train ▶ gate ▶ publish on a user's environment (rounds.py).

    run(job: EnvironmentJob, conn=None) -> EnvRunRecord

The payload names the environment only; its entry point is read from the project file
(`job.project_file`), which the worker trusts, never from Redis. A broken environment
(import error, a method that raises, a reward outside [0, 1]) and a run that cannot go on
(nothing to train on) fail the job permanently with that reason: retrying cannot fix them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tinygpt.queue.errors import PermanentError
from tinygpt.runtime.contracts import ContractError
from tinygpt.runtime.contracts.environments import EnvRunRecord
from tinygpt.runtime.contracts.jobs import EnvironmentJob

log = logging.getLogger("tinygpt.environment")


class EnvironmentJobError(PermanentError):
    """The environment or its run failed; the message says which and why."""


def run(job: EnvironmentJob, conn=None) -> EnvRunRecord:
    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.workers.environment.rounds import EnvRunError, run_environment
    from tinygpt.runtime.environments.loader import EnvironmentBroken

    # The run's own burst worker and publish notice reach the Redis this worker uses:
    # $REDIS_URL, else the embedded server (the same rule `tinygpt worker` follows).
    try:
        return run_environment(Path(job.project_file), job.settings, Path(job.work_dir))
    except EnvironmentBroken as e:
        raise EnvironmentJobError(f"environment {job.settings.environment!r} is broken: {e}") from None
    except (EnvRunError, ContractError) as e:
        raise EnvironmentJobError(f"environment {job.settings.environment!r}: {e}") from None
