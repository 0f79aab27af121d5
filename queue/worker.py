"""Pipeline workers: RQ SimpleWorkers in their own processes, never forked after MLX.

A worker runs jobs in its own process (SimpleWorker: no fork per job), so a stage that
loads MLX keeps it loaded and nothing forks a process whose MLX is initialised. More
workers are more processes started fresh (`subprocess`, i.e. spawned), on this host or
any other that reaches the same Redis (REDIS_URL).

Before RQ imports anything for a job, the worker checks it against the stage graph's
entry points (`admission`): a job calling anything else fails at once with the reason.

Each worker also runs a housekeeping thread that
- heartbeats the running job with a short lease (`grace_s`): when a worker is killed,
  its job is seen as abandoned within the lease, and the next registry cleanup by any
  other worker retries it (or, out of retries, moves it to the failed registry); a
  supervisor that reaped the dead process hands the job back at once (`release_worker`);
- moves due retries (RQ's backoff parks them in the scheduled registry) back onto their
  queue, claiming each one in a transaction, so no scheduler lock of a dead worker can
  hold retries back.

`burst` here means "until the pipeline is drained": the worker also waits out jobs
running elsewhere and retries waiting for their backoff, since either may still bring
work to its queues.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid

import redis
from rq import SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq import utils
from rq.utils import current_timestamp

from tinygpt.runtime import paths
from tinygpt.runtime.device_plan import lock_scope
from tinygpt.runtime.filelock import FileLock

from . import stages
from .admission import Admission, JobRefused
from .serializer import MsgpackSerializer

log = logging.getLogger("tinygpt.worker")

CHILD_ENTRY = "import sys; from tinygpt.queue.worker import main; sys.exit(main(sys.argv[1:]))"


def move_due_retries(conn: redis.Redis, queue: Queue) -> int:
    """Enqueue `queue`'s scheduled jobs that are due; returns how many this call moved.

    Each move is a WATCH/MULTI transaction (remove from the scheduled registry + push on
    the queue), so two workers never move one job twice and a crash never drops one.
    """
    registry = queue.scheduled_job_registry
    moved = 0
    for job_id in registry.get_jobs_to_schedule(current_timestamp()):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(registry.key)
                if pipe.zscore(registry.key, job_id) is None:
                    continue  # another worker moved it
                try:
                    job = Job.fetch(job_id, connection=conn, serializer=queue.serializer)
                except NoSuchJobError:
                    pipe.multi()
                    pipe.zrem(registry.key, job_id)
                    pipe.execute()
                    continue
                pipe.multi()
                pipe.zrem(registry.key, job_id)
                # RQ's own scheduler moves jobs with this same call.
                queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                pipe.execute()
                moved += 1
            except redis.WatchError:
                continue
    return moved


class PipelineWorker(SimpleWorker):
    """A SimpleWorker with short job leases, in-process retry scheduling and drain mode."""

    # RQ waits up to 60 s between reconnection attempts while Redis is away; a restarted
    # embedded server is back in a second, and the pipeline should notice within seconds.
    max_connection_wait_time = 5.0

    def __init__(self, queues, *args, heartbeat_s: float = 10.0, grace_s: float | None = None, drain: bool = False,
                 allow_jobs: tuple[str, ...] = (), **kwargs):
        kwargs.setdefault("serializer", MsgpackSerializer)
        kwargs.setdefault("job_monitoring_interval", max(1, int(heartbeat_s)))
        kwargs.setdefault("maintenance_interval", 30)
        kwargs.setdefault("worker_ttl", 120)
        kwargs.setdefault("default_result_ttl", stages.RESULT_TTL_S)
        kwargs.setdefault("name", f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        super().__init__(queues, *args, **kwargs)
        self.heartbeat_s = heartbeat_s
        # The lease must outlast a few missed beats (a long C call holding the GIL).
        self.grace_s = grace_s if grace_s is not None else max(3 * heartbeat_s, heartbeat_s + 5)
        self.drain = drain
        # Stage entry points, plus functions the operator named (`--allow-job`).
        self.admission = Admission(allow_jobs)
        self._running: tuple[Job, object] | None = None
        self._house_stop = threading.Event()
        self._house: threading.Thread | None = None

    # --- job leases ----------------------------------------------------------------------
    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # The job's own timeout is enforced by the death penalty (SIGALRM); the lease only
        # says "this worker is alive", so it stays short and is renewed by the housekeeper.
        return int(self.grace_s)

    def prepare_execution(self, job: Job):
        execution = super().prepare_execution(job)
        self._running = (job, execution)
        return execution

    def execute_job(self, job: Job, queue: Queue):
        try:
            return super().execute_job(job, queue)
        finally:
            self._running = None

    # --- admission -----------------------------------------------------------------------
    def perform_job(self, job: Job, queue: Queue, execution) -> bool:
        try:
            self.admission.check(job)
        except Exception as e:  # JobRefused, or job data our serializer cannot decode
            reason = e if isinstance(e, JobRefused) else JobRefused(f"job {job.id}: unreadable job data ({e.__cause__ or e})")
            return self._refuse(job, queue, execution, reason)
        return super().perform_job(job, queue, execution)

    def _refuse(self, job: Job, queue: Queue, execution, reason: JobRefused) -> bool:
        """Fail `job` with `reason` through RQ's own failure path, importing nothing it names."""
        log.warning("worker %s: %s", self.name, reason)
        # RQ imports and calls a job's callbacks on failure: drop them, and never retry.
        job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
        job._success_callback = job._failure_callback = job._stopped_callback = None
        job.retries_left = 0
        try:
            self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
            job.started_at = utils.now()
            raise reason
        except JobRefused:
            self._finalize_failure(job, queue, execution, sys.exc_info())
        return False

    def _housekeep(self) -> None:
        while not self._house_stop.wait(self.heartbeat_s):
            try:
                running = self._running
                if running is not None:
                    # Entries are updated only if present (XX), so a beat racing the end
                    # of the job never resurrects it.
                    self.maintain_heartbeats(*running)
                for q in self.queues:
                    move_due_retries(self.connection, q)
            except redis.RedisError as e:
                log.warning("worker %s: housekeeping failed (%s); retrying", self.name, e)
            except Exception:  # a bug here must not silently stop the leases
                log.exception("worker %s: housekeeping error", self.name)

    def bootstrap(self, *args, **kwargs):
        super().bootstrap(*args, **kwargs)
        self._house = threading.Thread(target=self._housekeep, name="tinygpt-housekeeper", daemon=True)
        self._house.start()

    def teardown(self):
        self._house_stop.set()
        if self._house is not None:
            self._house.join(timeout=5)
        try:
            super().teardown()
        except redis.RedisError as e:
            # Stopping while Redis is away: the registration expires by itself (worker_ttl).
            log.warning("worker %s: stopped without deregistering (Redis: %s)", self.name, e)

    # --- drain mode ----------------------------------------------------------------------
    def work_pending(self) -> bool:
        """Whether anything may still arrive on this worker's queues.

        Counts without RQ's cleanup-on-count: a cleanup can move an abandoned job from
        started to scheduled between two counts and make both look empty.
        """
        for q in self.queues:
            registries = (q.started_job_registry, q.scheduled_job_registry)
            if q.count or any(r.get_job_count(cleanup=False) for r in registries):
                return True
        return False

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        if not self.drain:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        idle_checks = 0
        while True:
            result = super().dequeue_job_and_maintain_ttl(None, max_idle_time)
            if result is not None or self._stop_requested:
                return result
            # RQ moves a finished job's dependents onto the queue just after the
            # transaction that retires the job, so one empty look can fall between the
            # two while another worker finishes; only two in a row mean drained.
            idle_checks = 0 if self.work_pending() else idle_checks + 1
            if idle_checks >= 2:
                return result
            time.sleep(min(1.0, self.heartbeat_s))
            for q in self.queues:
                move_due_retries(self.connection, q)
            if self.should_run_maintenance_tasks:
                # Finds jobs of killed workers once their lease ran out.
                self.run_maintenance_tasks()


def release_worker(conn: redis.Redis, name: str, queues: list[str]) -> list[str]:
    """Hand back the jobs of worker `name`, known dead (its process was reaped).

    Its lease is expired on the spot and the registry cleaned, so RQ's abandoned-job
    handling retries each job now (with the stage's backoff, one retry used) instead of
    after the lease runs out. The dead worker's registration is removed. Returns the ids
    of the jobs handed back.
    """
    from rq import Worker

    handed: list[str] = []
    for short in queues:
        queue = stages.get_queue(conn, short)
        registry = queue.started_job_registry
        for entry in conn.zrange(registry.key, 0, -1):
            job_id = registry.parse_job_id(entry)
            try:
                job = Job.fetch(job_id, connection=conn, serializer=queue.serializer)
            except NoSuchJobError:
                continue
            if job.worker_name == name:
                conn.zadd(registry.key, {entry: 1}, xx=True)  # expired long ago
                handed.append(job_id)
        if handed:
            registry.cleanup()
    dead = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=conn)
    if dead is not None:
        dead.register_death()
    return handed


def run_worker(
    queues: list[str],
    *,
    url: str | None = None,
    burst: bool = False,
    heartbeat_s: float = 10.0,
    grace_s: float | None = None,
    maintenance_s: int = 30,
    log_level: str = "INFO",
    allow_jobs: tuple[str, ...] = (),
    name: str | None = None,
) -> int:
    """Run one worker in this process until stopped (or drained, with `burst`)."""
    from .connection import connect

    names = [stages.queue_name(q) for q in queues]
    locks = []
    for short in queues:
        if short in stages.EXCLUSIVE:
            # One process per machine (per GPU when pinned) serves an exclusive queue; held until this process exits.
            lock = FileLock(paths.subdir("locks") / f"queue-{short}{lock_scope()}.lock", mode=0o600)
            if not lock.acquire(timeout=0):
                raise RuntimeError(
                    f"another worker on this machine already serves the {short!r} queue "
                    f"(one per machine: {short} jobs use the whole machine); stop it or leave {short!r} out"
                )
            locks.append(lock)
    conn = connect(url)
    _stop_with_parent(os.environ.get(PARENT_ENV))
    worker = PipelineWorker(
        [Queue(n, connection=conn, serializer=MsgpackSerializer) for n in names],
        connection=conn,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        drain=burst,
        maintenance_interval=maintenance_s,
        allow_jobs=allow_jobs,
        **({"name": name} if name else {}),
    )
    worker.work(burst=burst, logging_level=log_level)
    return 0


# Set by whoever supervises this worker (`up`, `tinygpt worker N`): the pid it must not outlive.
PARENT_ENV = "TINYGPT_PARENT_PID"


def _stop_with_parent(parent: str | None, poll_s: float = 1.0) -> None:
    """Stop this worker once the process that started it is gone.

    A SIGKILLed `up` (the OOM killer's choice when a build grows) leaves its workers
    running: one holds the machine's train lock, so the next `up` cannot start its own, and
    its Redis (embedded, gone with `up`) is unreachable anyway. A dead parent reparents us;
    then a stop as from Ctrl-C twice (RQ's cold shutdown: the job is abandoned, and the next
    daemon finds and re-runs it), and a hard exit if even that does not end the process.
    """
    if not parent or not parent.isdigit():
        return
    expected = int(parent)

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(poll_s)
        logging.getLogger(__name__).warning("the process that started this worker (pid %d) is gone; stopping", expected)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2.0)  # RQ ignores a second signal within a second of the first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30.0)
        os._exit(1)

    if os.getppid() != expected:  # already orphaned before we got here
        raise RuntimeError(f"the process that started this worker (pid {expected}) is gone")
    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def child_command(argv: list[str]) -> list[str]:
    """The command line of a worker process (spawned, never forked).

    The Redis URL never goes on it (`ps` shows command lines to every user): children
    read REDIS_URL from their environment.
    """
    return [sys.executable, "-c", CHILD_ENTRY, *argv]


def supervise(queues: list[str], count: int, argv: list[str], *, url: str | None, burst: bool,
              gpus: str | None = None) -> int:
    """Keep `count` worker processes running (restarting dead ones) until SIGINT / SIGTERM,
    or, with `burst`, until every one has drained its queues.

    With `gpus` (``all`` or ``0,1,...``) each worker is pinned to a card (runtime/device_plan.py).
    """
    from .connection import connect
    from .supervisor import WorkerPool

    layout = None
    if gpus:
        from tinygpt.runtime import device_plan

        cards = device_plan.parse_gpus(gpus, device_plan.available_gpus())
        layout = [(s.queues, s.env) for s in device_plan.plan_workers(
            cards, count, queues, os.environ.get(device_plan.RUNTIME_GPU_ENV))]
    env = {**os.environ, **({"REDIS_URL": url} if url else {})}
    pool = WorkerPool(queues, count, argv=argv, env=env, burst=burst, layout=layout)
    stopping: list[int] = []

    def forward(signum, _frame):
        stopping.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pool.start()
        while not stopping and not (burst and pool.finished):
            pool.tick(lambda: connect(url, socket_timeout=5))
            time.sleep(0.5)
        codes = pool.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return max(codes, default=0)


def parser(prog: str = "tinygpt worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run pipeline workers.")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queues", default="data", help=f"comma-separated queues to serve, in priority order ({', '.join(stages.QUEUES)}); default: data")
    p.add_argument("--count", type=int, default=1, help="worker processes to start (default 1), each restarted when it dies; only the first serves an exclusive queue (train)")
    p.add_argument("--burst", action="store_true", help="exit once the queues are drained (retries and jobs running elsewhere included)")
    p.add_argument("--url", help="Redis URL (default: $REDIS_URL, else the embedded redis-server)")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between job lease renewals (default 10)")
    p.add_argument("--grace", type=float, default=None, help="lease length in seconds: a killed worker's job is retried after this (default 3x heartbeat)")
    p.add_argument("--maintenance", type=int, default=30, help="seconds between registry cleanups that find abandoned jobs (default 30)")
    p.add_argument("--log-level", default="INFO", help="worker log level (default INFO)")
    p.add_argument("--allow-job", action="append", default=[], metavar="MODULE.FUNCTION",
                   help="also run jobs calling this function (repeatable); by default a worker runs only the pipeline's "
                        "stage entry points and fails any other job unrun")
    p.add_argument("--name", help="worker name (default: HOST-PID-RANDOM); unique among live workers")
    p.add_argument("--gpus", help="pin one worker per GPU: all | 0,1,... (default: no pinning; see runtime/device_plan.py)")


def run_args(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    for q in queues:
        stages.queue_name(q)  # a clear error for a typo, before anything starts
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    common = dict(burst=args.burst, heartbeat_s=args.heartbeat, grace_s=args.grace, maintenance_s=args.maintenance,
                  log_level=args.log_level, allow_jobs=tuple(args.allow_job))
    if args.count == 1 and not args.gpus:
        return run_worker(queues, url=args.url, name=args.name, **common)
    if args.name:
        raise ValueError("--name names one worker: leave it out with --count above 1 or --gpus")
    argv = ["--heartbeat", str(args.heartbeat), "--maintenance", str(args.maintenance), "--log-level", args.log_level]
    if args.grace is not None:
        argv += ["--grace", str(args.grace)]
    if args.burst:
        argv.append("--burst")
    for job_name in args.allow_job:
        argv += ["--allow-job", job_name]
    return supervise(queues, args.count, argv, url=args.url, burst=args.burst, gpus=args.gpus)


def cli_run(args: argparse.Namespace) -> int:
    """`run_args` with the errors a user can fix printed plainly (exit code 2)."""
    from .connection import RedisUnavailable

    try:
        return run_args(args)
    except (RedisUnavailable, RuntimeError, ValueError) as e:
        print(f"tinygpt worker: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (`tinygpt worker` and its children)."""
    return cli_run(parser().parse_args(argv))

