"""The pieces `tinygpt up` starts, in order, and stops in reverse order."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


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
    workers: subprocess.Popen | None = None
    # The pin file whose specialists the runtime serves and follows (None: no project).
    project_file: Path | None = None
    swapper: object | None = None
    watchers: object | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def from_args(cls, args: argparse.Namespace, console) -> Stack:
        """Read the project (if any) before starting anything: a bad pin file stops here."""
        from tinygpt.runtime.project import find_project, load_project

        project_file = Path(args.project) if args.project else find_project()
        model, name = "smollm2-135m-instruct", "default"
        if project_file is not None:
            pins = load_project(project_file)
            model, name = pins.base_model, pins.name
        return cls(args=args, console=console, model=args.model or model, project_name=name,
                   project_file=project_file.resolve() if project_file else None)  # fmt: skip

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        # SIGTERM takes the same orderly path as Ctrl-C.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        self._start_redis()
        model_dir = self._pull_model()
        if self.args.start_workers:
            self._start_workers()
        self._start_runtime(model_dir)

    def _start_redis(self) -> None:
        from tinygpt.queue.connection import RedisUnavailable, connect
        from tinygpt.queue.embedded import EmbeddedRedis, EmbeddedRedisError, find_running
        from tinygpt.runtime import paths

        url = os.environ.get("REDIS_URL")
        try:
            if url:
                connect(url).close()
                self.redis_url = url
                self._say(f"Redis: {url} (from REDIS_URL)")
                return
            running = find_running(paths.redis_dir())
            if running is not None:
                self.redis_url = running.url
                self._say(f"Redis: reusing the embedded server at {running.url}")
                return
            self.embedded = EmbeddedRedis(paths.redis_dir()).start()
        except (RedisUnavailable, EmbeddedRedisError) as e:
            raise StartError(f"Redis: {e}") from None
        self.redis_url = self.embedded.url
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
        return path

    def _start_workers(self) -> None:
        from tinygpt.queue.worker import child_command

        argv = ["--queues", "data,train,eval", "--count", str(max(1, self.args.workers)), "--url", self.redis_url]
        gpus = getattr(self.args, "device_plan", None)  # runtime/device_plan.py: a worker per GPU
        if gpus is not None and gpus.worker_gpus:
            argv += ["--gpus", ",".join(gpus.worker_gpus)]
        # Spawned, never forked: workers import MLX in their own fresh interpreter.
        self.workers = subprocess.Popen(child_command(argv), env={**os.environ, "REDIS_URL": self.redis_url,
                                                                   **(gpus.worker_env if gpus is not None else {})})
        self._say(f"Workers: {self.args.workers} process(es) on queues data, train, eval (pid {self.workers.pid})")

    def _start_runtime(self, model_dir: Path) -> None:
        from tinygpt.runtime.commands.serve import flush_hook
        from tinygpt.runtime.serving.app import Runtime, ServerConfig

        os.environ["REDIS_URL"] = self.redis_url
        config = ServerConfig(
            model=str(model_dir),
            name=self.model if not Path(self.model).exists() else None,
            host=self.args.host,
            port=self.args.port,
            api_key=self.args.api_key,
            project=self.project_name,
        )
        try:
            self.runtime = Runtime(config, on_trajectory_flushed=flush_hook(True)).start()
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
        from tinygpt.runtime.registry.swap import Swapper
        from tinygpt.runtime.registry.watch import Watchers

        self.swapper = Swapper(self.runtime, self.project_file, say=self._say)
        try:
            report = self.swapper.sync("start")
        except Exception as e:  # a bug here must not keep the base model from serving
            logging.getLogger("tinygpt.up").exception("loading the pinned specialists failed")
            self._say(f"Specialists: loading the pins failed ({type(e).__name__}: {e}); serving the base model only")
            report = None
        served = ", ".join(f"{n}@{v}" for n, (v, _) in sorted(self.swapper.serving().items())) or "none"
        problems = f"; {len(report.errors)} pin(s) failed (see above)" if report and report.errors else ""
        self._say(f"Specialists: serving {served}{problems}")
        self.watchers = Watchers(self.swapper, redis_url=self.redis_url).start()
        self._say(f"Specialists: watching {self.project_file} and Redis for new versions")

    # ------------------------------------------------------------------ watch

    def watch(self, *, live: bool, refresh: float) -> None:
        """Block, showing status, until interrupted or a component dies."""
        from rich.live import Live

        if not live:
            while self._healthy():
                time.sleep(refresh)
            return
        with Live(self._screen(), console=self.console, refresh_per_second=4, transient=False) as screen:
            while self._healthy():
                time.sleep(refresh)
                screen.update(self._screen())

    def _healthy(self) -> bool:
        if self.runtime is not None and not self.runtime.engine.healthy:
            self._say("runtime: the model thread stopped; shutting down")
            return False
        if self.workers is not None and self.workers.poll() is not None:
            self._say(f"workers exited with code {self.workers.returncode}; shutting down")
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
        head.add_row("redis", self.redis_url)
        head.add_row("uptime", f"{time.time() - self.started:.0f}s")
        if self.swapper is not None:
            served = self.swapper.serving()
            head.add_row("specialists", ", ".join(f"{n}@{v}" for n, (v, _) in sorted(served.items())) or "none")
            last = self.swapper.last
            if last is not None and (last.rejected or last.errors):
                problem = last.rejected or "; ".join(f"{n}: {e}" for n, e in last.errors.items())
                head.add_row(Text("pins", style="yellow"), Text(problem))
        parts = [head]
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
        if self.watchers is not None:
            # First, so no swap starts while the runtime is going down.
            self.watchers.stop()
            self.watchers = None
        if self.runtime is not None:
            self._say("stopping the runtime (sealing trajectories into the queue)")
            self.runtime.stop()
            self.runtime = None
        if self.workers is not None and self.workers.poll() is None:
            self._say("stopping workers (current jobs finish; queued jobs stay in Redis)")
            self.workers.send_signal(signal.SIGTERM)
            try:
                self.workers.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.workers.kill()
                self.workers.wait()
        self.workers = None
        if self.embedded is not None:
            self._say("stopping the embedded Redis (AOF flushed)")
            self.embedded.stop()
            self.embedded = None

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
