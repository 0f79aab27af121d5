"""Bring up TinyGPT on this machine: Redis, the base model, pipeline workers and the
OpenAI-compatible runtime, with a live status screen.

  1. Redis: $REDIS_URL when set, else the embedded redis-server under the cache
     directory (AOF on, so queued jobs survive restarts).
  2. The project's base model (tinygpt.project.json, else the offline default
     smollm2-135m-instruct), pulled and converted on first start.
  3. Pipeline workers for every queue, each in its own spawned process.
  4. The runtime on http://127.0.0.1:8000/v1, recording every conversation as a
     token-preserving trajectory into the pipeline.
  5. The specialists pinned in tinygpt.project.json, pulled from its registries,
     verified (sha256 of every file) and loaded; then the runtime follows the pin
     file and "published" notifications on Redis, hot-swapping new versions in
     without a restart (requests in flight finish on the old version). A pin file
     change that does not validate is rejected and the last good pins stay in force.
  6. The autopilot: for each specialist whose pin carries a build policy, it counts
     the kept training rows the label stage produced for the policy's selection and,
     when the trigger fires, enqueues dataset ▶ finetune ▶ eval gate ▶ publish by
     itself. A version that passes is published (and hot-swapped where a pin accepts
     it); one that fails is kept with its gate report under <home>/builds/, never served.

While it runs, a worker that dies (the OOM killer's SIGKILL, a crash) is restarted with
backoff and its job retried; a dead embedded Redis is restarted on its AOF; an external
Redis's outage is shown here and in `tinygpt status`. On start and whenever Redis comes
back, sealed trajectories Redis has no record of are put back on the pipeline. With the
live screen on, worker logs go to <home>/logs/ (shown on the screen).

Ctrl-C or SIGTERM shuts down in order: the watchers stop, the server stops taking
requests and seals its trajectories into the queue (with Redis down they wait on disk
for the next start), workers finish their current job, the embedded Redis writes its
AOF and exits. Queued jobs wait for the next `tinygpt up`."""

from __future__ import annotations

import argparse
import os

EXAMPLE = "tinygpt up\n  tinygpt up --port 8080 --workers 2\n  REDIS_URL=redis://db:6379/0 tinygpt up --no-workers"


def configure(parser: argparse.ArgumentParser) -> None:
    from .serve import add_security_options

    parser.add_argument("--project", help="project pin file (default: the nearest tinygpt.project.json, if any)")
    parser.add_argument("--model", help="base model name or directory (default: the project's base_model)")
    from tinygpt.runtime.serving.config import DEFAULTS

    parser.add_argument("--host", default=DEFAULTS.host, help=f"interface to bind (default: {DEFAULTS.host})")
    parser.add_argument("--port", type=int, default=DEFAULTS.port, help=f"runtime port (default: {DEFAULTS.port}; 0 picks a free one)")
    parser.add_argument("--api-key", default=os.environ.get("TINYGPT_API_KEY"), help="require this Bearer key on /v1")
    parser.add_argument("--admin-key", default=os.environ.get("TINYGPT_ADMIN_KEY"),
                        help="key for the /admin endpoints, which are off without it (default: $TINYGPT_ADMIN_KEY)")
    add_security_options(parser)
    parser.add_argument("--workers", type=int, default=1, help="pipeline worker processes (default: 1)")
    parser.add_argument("--no-workers", dest="start_workers", action="store_false",
                        help="run no workers here (e.g. they run on other hosts against $REDIS_URL)")
    parser.add_argument("--session-idle", type=float, default=DEFAULTS.session_idle_s,
                        help=f"seconds before an idle conversation is sealed into the pipeline (default: {DEFAULTS.session_idle_s:g})")
    parser.add_argument("--gpus", default=None,
                        help="GPUs to use: all | 0,1,... | none (default: none pinned). One GPU: runtime and workers "
                             "share it with memory budgets; several: the runtime on the first, a worker per other GPU")
    parser.add_argument("--tool-mode", choices=["full", "deferred"], default=DEFAULTS.tool_mode,
                        help=f"how tools are shown unless a specialist's pin or a request says otherwise (default: {DEFAULTS.tool_mode})")
    parser.add_argument("--refresh", type=float, default=2.0, help="status screen refresh in seconds (default: 2)")
    parser.add_argument("--plain", action="store_true", help="log lines instead of the live screen, worker logs on stderr (default when not a TTY)")


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from tinygpt.runtime.contracts import ContractError

    from tinygpt.runtime.stack import Stack, StartError

    console = Console(stderr=True, soft_wrap=True)
    if getattr(args, "gpus", None):
        from tinygpt.runtime import device_plan

        try:
            # Before anything loads MLX: this process's runtime is pinned through its environment.
            args.device_plan = device_plan.plan_up(device_plan.parse_gpus(args.gpus, device_plan.available_gpus()))
        except ValueError as e:
            console.print(f"tinygpt up: {e}", style="red", highlight=False, markup=False)
            return 2
        os.environ.update(args.device_plan.runtime_env)
        console.print(f"GPUs: {args.device_plan.describe()}", highlight=False, markup=False)
    from tinygpt.runtime import paths
    from tinygpt.runtime.filelock import FileLock

    # One daemon per home: a second one would share the first's embedded Redis (and stop it
    # on its way out), race its workers for the train lock and double its builds. Held for
    # this process's life; the kernel drops it when the process dies, however it dies.
    home_lock = FileLock(paths.subdir("locks") / "up.lock", mode=0o600)
    if not home_lock.acquire(timeout=0):
        console.print(f"tinygpt up: another `tinygpt up` is already running on {paths.home()}; stop it, or give this one "
                      "its own TINYGPT_HOME", style="red", highlight=False, markup=False)
        return 1
    try:
        stack = Stack.from_args(args, console)
    except (ContractError, ValueError) as e:
        console.print(f"tinygpt up: {e}", style="red", highlight=False, markup=False)
        return 2
    try:
        stack.start()
    except StartError as e:
        console.print(f"tinygpt up: {e}", style="red", highlight=False, markup=False)
        stack.stop()
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    try:
        stack.watch(live=not args.plain and sys.stderr.isatty(), refresh=args.refresh)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0
