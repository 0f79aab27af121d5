"""Which jobs a worker runs: the pipeline's stage entry points, nothing else.

The msgpack serializer keeps pickles off the queue, but RQ still imports and calls
whatever function name a job in Redis carries, so anyone who can write to Redis could
have a worker call `subprocess.check_output`. A worker therefore checks every job
before RQ imports anything for it: the function must be a stage entry point
(`stages.entry_points()`, derived from the stage graph) or one the operator allowed on
the worker's own command line (`--allow-job`), it must be a plain function (no
instance), and it must carry no RQ callbacks (the pipeline sets none; RQ would import
and call them too). A refused job fails at once, without retries, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from rq.job import Job

from . import stages


class JobRefused(Exception):
    """A job whose function is not ours: failed with this reason, nothing imported or run."""


class Admission:
    """The allowlist of one worker: stage entry points (and aliases) plus `extra` names."""

    def __init__(self, extra: Iterable[str] = ()):
        self.allowed = stages.entry_points()
        self.allowed.update({name: name for name in extra})

    def check(self, job: Job) -> None:
        """Raise JobRefused unless `job` may run; maps an old entry-point name to its current one.

        Reads only the job's data (msgpack, decoded by our serializer) and its callback
        names: nothing named by the job is imported before it passes.
        """
        name = job.func_name
        if not isinstance(name, str) or name not in self.allowed:
            known = ", ".join(sorted(set(self.allowed.values())))
            raise JobRefused(
                f"job {job.id}: function {name!r} is not a pipeline stage entry point; refused without importing it "
                f"(this worker runs only: {known})"
            )
        if job.instance is not None:
            raise JobRefused(f"job {job.id}: a method call on a {type(job.instance).__name__} instance; stages are plain functions")
        callbacks = {
            kind: cb
            for kind, cb in (("on_success", job._success_callback_name), ("on_failure", job._failure_callback_name),
                             ("on_stopped", job._stopped_callback_name))
            if cb
        }
        if callbacks:
            named = ", ".join(f"{k}={v!r}" for k, v in callbacks.items())
            raise JobRefused(f"job {job.id}: carries RQ callbacks ({named}); pipeline jobs have none, refused without importing them")
        if self.allowed[name] != name:
            job.func_name = self.allowed[name]  # an entry point that moved: run it where it lives now
