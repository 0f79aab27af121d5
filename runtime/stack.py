"""One place assembles the system: the runtime with its recorder, queue hook and pin
watchers (`start_runtime`, `follow_pins`), and the whole stack `tinygpt up` starts in
order and stops in reverse order (`Stack`: Redis, model, workers, runtime, autopilot).

Commands parse arguments and call these; anything else that needs a runtime (the eval
gate, an environment's rounds) builds it here too, from a `ServerConfig` (serving/config.py, where the
defaults are written once).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .models import DEFAULT_MODEL
from .serving.config import DEFAULTS, ServerConfig

# ---------------------------------------------------------------- the runtime


def queue_hook(enabled: bool, *, on_deferred=None):
    """The queue hand-off for sealed trajectory files (ingest ▶ dedupe ▶ label), or None.

    Runs on the recorder's thread, never on a request. With Redis unreachable the file
    stays sealed on disk (one warning line, no traceback) and `on_deferred(path)` is told,
    so a daemon can enqueue it once Redis is back; `tinygpt ingest --reconcile` (and the
    next `tinygpt up`) finds it anyway. After a failure, hand-offs in the next few seconds
    are deferred without trying: a shutdown sealing many files with Redis gone stays quick.
    """
    if not enabled:
        return None
    import logging
    import time

    log = logging.getLogger("tinygpt.serving.queue")
    # One warning per outage, not one per file: a shutdown may seal hundreds.
    outage = {"retry_at": 0.0, "deferred": 0}

    def defer(path, reason: str) -> None:
        outage["retry_at"] = time.monotonic() + 5.0
        outage["deferred"] += 1
        if outage["deferred"] == 1:
            log.warning("sealed trajectories wait on disk (first: %s): %s; they are enqueued when Redis is back", path.name, reason)
        if on_deferred is not None:
            on_deferred(path)

    def on_trajectory_flushed(path) -> None:
        import redis

        from tinygpt.queue.connection import RedisUnavailable
        from tinygpt.runtime.redact import redact
        from tinygpt.queue.pipeline import enqueue_trajectory

        if time.monotonic() < outage["retry_at"]:
            return defer(path, "Redis was unreachable moments ago")
        try:
            enqueue_trajectory(path)
        except RedisUnavailable as e:
            return defer(path, f"Redis at {e.url} is unreachable ({e.reason})")
        except redis.RedisError as e:
            return defer(path, f"Redis failed ({type(e).__name__}: {redact(str(e))})")
        if outage["deferred"]:
            log.warning("Redis is back: trajectories are enqueued again (%d waited on disk)", outage["deferred"])
            outage["deferred"] = 0

    return on_trajectory_flushed

def start_runtime(config: ServerConfig, *, queue: bool = False, on_deferred: Callable[[Path], None] | None = None):
    """A started `Runtime`: model thread, HTTP server and (with `config.record`) the recorder.

    With `queue`, sealed trajectories go to the Redis pipeline (`queue_hook`); a file
    Redis could not take is handed to `on_deferred`. Raises what the runtime raises on a
    bad config (ValueError, OSError, the serving layer's ApiError).
    """
    import tinygpt.runtime  # noqa: F401  (fast BLAS before mlx loads)
    from tinygpt.runtime.serving.app import Runtime

    return Runtime(config, on_trajectory_flushed=queue_hook(config.record and queue, on_deferred=on_deferred)).start()


def registry_dirs(project_file: Path | None) -> list[str]:
    """The project's directory registries: the admin API may load adapters from them."""
    if project_file is None:
        return []
    from tinygpt.runtime.project import load_project

    specs = load_project(project_file).registries
    return [str(project_file.parent / s) for s in specs if "://" not in s]


@dataclass
class Pins:
    """A runtime following a pin file: the swapper, its first sync and the watchers."""

    swapper: object
    report: object | None
    watchers: object | None


def follow_pins(runtime, project_file: Path, *, say: Callable[[str], None], redis_url: str | None = None) -> Pins:
    """Pull and load every pinned specialist now, then follow the pin file (and, with
    `redis_url`, published notices). A pin that cannot be pulled is reported and skipped;
    a failed first sync leaves the base model serving."""
    from tinygpt.runtime.registry.swap import Swapper
    from tinygpt.runtime.registry.watch import Watchers

    swapper = Swapper(runtime, project_file, say=say)
    try:
        report = swapper.sync("start")
    except Exception as e:  # a bug here must not keep the base model from serving
        logging.getLogger("tinygpt.up").exception("loading the pinned specialists failed")
        say(f"Specialists: loading the pins failed ({type(e).__name__}: {e}); serving the base model only")
        report = None
    served = ", ".join(f"{n}@{v}" for n, (v, _) in sorted(swapper.serving().items())) or "none"
    problems = f"; {len(report.errors)} pin(s) failed (see above)" if report and report.errors else ""
    say(f"Specialists: serving {served}{problems}")
    return Pins(swapper, report, Watchers(swapper, redis_url=redis_url).start())


# ---------------------------------------------------------------- the stack (tinygpt up)


class StartError(RuntimeError):
    """A component could not start; the message says which and why."""


@dataclass
class Stack:
    args: argparse.Namespace
    console: object
    model: str
    project_name: str
    redis_url: str = ""
    embedded: object | None = None
    runtime: object | None = None
    # Keeps workers and Redis alive, reconciles sealed files (tinygpt.queue.daemon).
    daemon: object | None = None
    # The embedded server the daemon guards: ours, or one another process started.
    guarded_redis: object | None = None
    # The pin file whose specialists the runtime serves and follows (None: no project).
    project_file: Path | None = None
    swapper: object | None = None
    watchers: object | None = None
    autopilot: object | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def from_args(cls, args: argparse.Namespace, console) -> Stack:
        """Read the project (if any) before starting anything: a bad pin file stops here."""
        from tinygpt.runtime.project import find_project, load_project

        from tinygpt.runtime.serving.guard import check_bind

        # Before Redis, workers or the model start: a server open to the network needs a key.
        check_bind(args.host, args.api_key, args.insecure)
        project_file = Path(args.project) if args.project else find_project()
        model, name = DEFAULT_MODEL, "default"
        if project_file is not None:
            pins = load_project(project_file)
            model, name = pins.base_model, pins.name
        return cls(args=args, console=console, model=args.model or model, project_name=name,
                   project_file=project_file.resolve() if project_file else None)

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        # SIGTERM takes the same orderly path as Ctrl-C.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        self._start_redis()
        model_dir = self._pull_model()
        self._start_daemon()
        self._start_runtime(model_dir)
        self._start_autopilot()

    def _start_redis(self) -> None:
        from tinygpt.queue.connection import RedisUnavailable, connect
        from tinygpt.runtime.redact import redact
        from tinygpt.queue.embedded import EmbeddedRedis, EmbeddedRedisError, find_running
        from tinygpt.runtime import paths

        url = os.environ.get("REDIS_URL")
        try:
            if url:
                connect(url).close()
                self.redis_url = url
                self._say(f"Redis: {redact(url)} (from REDIS_URL)")
                return
            running = find_running(paths.redis_dir())
            if running is not None:
                self.redis_url, self.guarded_redis = running.url, running
                self._say(f"Redis: reusing the embedded server at {running.url}")
                return
            self.embedded = EmbeddedRedis(paths.redis_dir()).start()
        except (RedisUnavailable, EmbeddedRedisError) as e:
            raise StartError(f"Redis: {e}") from None
        self.redis_url, self.guarded_redis = self.embedded.url, self.embedded
        # Children (workers, the runtime's queue hook) find it through REDIS_URL.
        self._say(f"Redis: embedded redis-server at {self.redis_url} (AOF on, data in {paths.redis_dir()})")

    def _pull_model(self) -> Path:
        from tinygpt.runtime.models.resolve import resolve_model
        from tinygpt.runtime.progress_bar import progress_bar

        self._say(f"Model: resolving {self.model} (first start pulls and converts it)")
        try:
            with progress_bar(self.console, f"converting {self.model}", show=self.console.is_terminal and not self.args.plain) as progress:
                path = resolve_model(self.model, say=self._say, progress=progress)
        except (ValueError, OSError) as e:
            raise StartError(f"model {self.model!r}: {e}") from None
        self._say(f"Model: {path}")
        from tinygpt.runtime.blas import reference_blas_warning

        if warning := reference_blas_warning():
            self._say(f"BLAS: {warning}")
        return path

    def _start_daemon(self) -> None:
        """Workers (restarted when they die), the Redis guard, and sealed files put back."""
        from tinygpt.queue.daemon import Daemon
        from tinygpt.queue.pipeline import load_settings
        from tinygpt.queue.supervisor import WorkerPool
        from tinygpt.runtime import paths

        # With the live screen on, logs go to files: anything printed would scroll over it.
        log_dir = paths.subdir("logs") if self.logs_to_files else None
        if log_dir is not None:
            _log_to(log_dir / "up.log")
        pool = None
        if self.args.start_workers:
            # The URL (and any password in it) reaches workers through the environment only.
            queues = ["data", "train", "eval"]
            plan = getattr(self.args, "device_plan", None)  # runtime/device_plan.py: a worker per GPU
            layout = None
            if plan is not None and plan.worker_gpus:
                from tinygpt.runtime.device_plan import plan_workers

                layout = [(s.queues, s.env) for s in plan_workers(plan.worker_gpus, self.args.workers, queues, plan.gpus[0])]
            pool = WorkerPool(queues, max(1, self.args.workers), say=self._say, layout=layout,
                              env={**os.environ, "REDIS_URL": self.redis_url, **(plan.worker_env if plan else {})},
                              log_path=log_dir / "workers.log" if log_dir else None)
        settings = (lambda: load_settings(self.project_file)) if self.project_file else None
        self.daemon = Daemon(self.redis_url, trajectory_dirs=[paths.subdir("trajectories")], embedded=self.guarded_redis,
                             pool=pool, settings_loader=settings, say=self._say, log_dir=log_dir)
        self.daemon.start()  # assigned first: a Ctrl-C in here still stops the workers it started
        if pool is not None:
            pids = ", ".join(str(pid) for _, _, pid, *_ in pool.rows())
            self._say(f"Workers: {self.args.workers} process(es) on queues data, train, eval (pid {pids}); "
                      f"restarted when they die" + (f"; logs in {log_dir}" if log_dir else ""))

    @property
    def logs_to_files(self) -> bool:
        return not getattr(self.args, "plain", True) and sys.stderr.isatty()

    def _tool_modes(self) -> dict[str, str]:
        """Specialist name -> the tool mode its pin asks for (pins without one: the server's)."""
        if self.project_file is None:
            return {}
        from tinygpt.runtime.project import load_project

        return {p.name: p.tool_mode for p in load_project(self.project_file).specialists if p.tool_mode}

    def _start_runtime(self, model_dir: Path) -> None:
        os.environ["REDIS_URL"] = self.redis_url
        config = ServerConfig(
            model=str(model_dir),
            name=self.model if not Path(self.model).exists() else None,
            host=self.args.host,
            port=self.args.port,
            api_key=self.args.api_key,
            admin_key=self.args.admin_key,
            allow_origins=list(self.args.allow_origin),
            adapter_dirs=[*self.args.adapter_dir, *registry_dirs(self.project_file)],
            insecure=self.args.insecure,
            project=self.project_name,
            session_idle_s=self.args.session_idle,
            tool_mode=getattr(self.args, "tool_mode", DEFAULTS.tool_mode),
            tool_modes=self._tool_modes(),
        )
        try:
            deferred = self.daemon.defer if self.daemon is not None else None
            self.runtime = start_runtime(config, queue=True, on_deferred=deferred)
        except (OSError, ValueError) as e:
            raise StartError(f"runtime: {e}") from None
        self._start_specialists()
        self._say(f"Runtime: {self.runtime.url}/v1 (OpenAI-compatible; Ctrl-C to stop)")

    def _start_specialists(self) -> None:
        """Pull and load every pinned specialist, then follow the pin file and Redis notices.

        A pin that cannot be pulled is reported and skipped: the runtime still starts,
        and the watchers keep trying on every change and notification.
        """
        if self.project_file is None:
            self._say("Specialists: no tinygpt.project.json, no pins to follow")
            return
        pins = follow_pins(self.runtime, self.project_file, say=self._say, redis_url=self.redis_url)
        self.swapper, self.watchers = pins.swapper, pins.watchers
        self._say(f"Specialists: watching {self.project_file} and Redis for new versions")

    def _start_autopilot(self) -> None:
        """Build policies in the pin file (read again every round, so edits apply): build,
        gate and publish specialists by themselves."""
        if self.project_file is None:
            return
        from tinygpt.queue.autopilot import Autopilot

        self.autopilot = Autopilot(self.project_file, self.redis_url, say=self._say).start()
        policies = self.swapper.pins.policies() if self.swapper is not None and self.swapper.pins else {}
        self._say(f"Autopilot: build policies for {', '.join(sorted(policies)) or 'no specialist yet'}")

    # ------------------------------------------------------------------ watch

    def watch(self, *, live: bool, refresh: float) -> None:
        """Block, keeping the parts alive and showing status, until interrupted or the runtime dies."""
        from rich.live import Live

        if not live:
            while self._tick(refresh):
                pass
            return
        with Live(self._screen(), console=self.console, refresh_per_second=4, transient=False) as screen:
            while self._tick(refresh):
                screen.update(self._screen())

    def _tick(self, seconds: float) -> bool:
        """Supervise for `seconds` (a tick every half second); False once the runtime died."""
        end = time.monotonic() + seconds
        while True:
            if self.daemon is not None:
                self.daemon.tick()
            if not self._healthy():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(0.5, left))

    def _healthy(self) -> bool:
        # Workers and Redis are the daemon's to restart; only a dead model thread is fatal.
        if self.runtime is not None and not self.runtime.engine.healthy:
            self._say("runtime: the model thread stopped; shutting down")
            return False
        return True

    def _screen(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from tinygpt.queue.overview import collect

        head = Table.grid(padding=(0, 2))
        head.add_row("runtime", f"{self.runtime.url}/v1" if self.runtime else "-")
        head.add_row("model", self.model)
        for name, value, warn in self._daemon_rows():
            head.add_row(Text(name, style="yellow" if warn else ""), Text(value, style="yellow" if warn else ""))
        head.add_row("uptime", f"{time.time() - self.started:.0f}s")
        if self.swapper is not None:
            served = self.swapper.serving()
            head.add_row("specialists", ", ".join(f"{n}@{v}" for n, (v, _) in sorted(served.items())) or "none")
            last = self.swapper.last
            if last is not None and (last.rejected or last.errors):
                problem = last.rejected or "; ".join(f"{n}: {e}" for n, e in last.errors.items())
                head.add_row(Text("pins", style="yellow"), Text(problem))
        parts = [head]
        if self.autopilot is not None:
            from tinygpt.runtime.policy_view import policy_table

            try:
                serving = {n: v for n, (v, _) in self.swapper.serving().items()}
                rows = self.autopilot.status(serving)
                if rows:
                    parts.append(policy_table(rows))
            except Exception as e:  # the screen must never take the daemon down
                parts.append(f"[yellow]build policies unavailable: {e}[/]")
        try:
            ov = collect(limit=5)
        except Exception as e:  # the screen must never take the daemon down
            parts.append(f"[yellow]queue state unavailable: {e}[/]")
            return Group(*parts)
        t = Table(title="queues")
        for col in ("queue", "queued", "running", "failed", "finished"):
            t.add_column(col)
        for q in ov.queues:
            t.add_row(q.name, str(q.queued), str(q.running), str(q.failed), str(q.finished))
        parts.append(t)
        if ov.running:
            from tinygpt.runtime.progress_bar import job_progress

            work = Table(title="running")
            for col in ("stage", "what", "progress"):
                work.add_column(col)
            for j in ov.running:
                what = j.progress.label if j.progress and j.progress.label else j.job_id
                work.add_row(j.stage, what, job_progress(j.progress))
            parts.append(work)
        return Group(*parts)

    # ------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop in reverse order; each step runs even if an earlier one failed."""
        # A second Ctrl-C / SIGTERM (or one forwarded twice, by a wrapper) must not
        # interrupt the orderly stop: exiting while the model thread is inside MLX
        # aborts the process and leaves open trajectories unsealed.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if self.autopilot is not None:
            self.autopilot.stop()  # no new builds while going down; queued ones wait in Redis
            self.autopilot = None
        if self.watchers is not None:
            # First, so no swap starts while the runtime is going down.
            self.watchers.stop()
            self.watchers = None
        if self.runtime is not None:
            self._say("stopping the runtime (sealing trajectories into the queue)")
            self.runtime.stop()
            self.runtime = None
        if self.daemon is not None:
            if self.daemon.pool is not None:
                self._say("stopping workers (current jobs finish; queued jobs stay in Redis)")
            self.daemon.stop()
            self.daemon = None
        if self.embedded is not None:
            self._say("stopping the embedded Redis (AOF flushed)")
            self.embedded.stop()
            self.embedded = None

    def _daemon_rows(self) -> list[tuple[str, str, bool]]:
        """Redis, workers, logs and BLAS rows of the screen: (name, value, is a warning)."""
        from tinygpt.runtime.redact import redact
        from tinygpt.runtime.blas import reference_blas_warning

        rows = self.daemon.screen_rows() if self.daemon is not None else [("redis", redact(self.redis_url), False)]
        warning = reference_blas_warning()
        return rows + ([("blas", warning, True)] if warning else [])

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)


def _log_to(path: Path) -> None:
    """Send this process's log records to `path` (instead of stderr, under the live screen)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
