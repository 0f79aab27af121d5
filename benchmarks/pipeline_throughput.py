"""Ingest -> dataset throughput of the data pipeline, as one JSON document.

    python benchmarks/pipeline_throughput.py                     # 10k trajectories, 2 workers
    python benchmarks/pipeline_throughput.py --n 2000 --workers 1 --out result.json

Synthetic trajectories shaped like the runtime's recordings (tests/fixtures/trajectories/
synth.py: shared preamble, 1-3 steps, tool calls, 5% near and 2% exact duplicates) are
written as files, then run two ways against a fresh embedded redis-server (AOF on):

- queue: `enqueue_files` + a dataset job, drained by `--workers` `tinygpt worker --burst`
  processes: wall time from the first enqueue to the finished dataset, trajectories/s,
  the peak RSS of any worker process and Redis' peak memory;
- direct: the same stage functions called in one process without the queue, per stage,
  to show what the queue itself costs.

Timings on a shared machine vary; the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIRECT = """
import json, resource, sys, time
from pathlib import Path
from tinygpt.queue import store
from tinygpt.queue.connection import connect
from tinygpt.runtime.contracts.jobs import DatasetJob, DedupeJob, IngestJob, LabelJob, TrajectoryRef
from tinygpt.workers import dataset, dedupe, ingest, label

files, batch = sorted(Path(sys.argv[1]).iterdir()), int(sys.argv[2])
conn = connect()
times = dict.fromkeys(["store", "ingest", "dedupe", "label", "dataset"], 0.0)
t = time.perf_counter()
refs = []
for p in files:
    sha, stored = store.put_file(p, fsync=False)
    refs.append(TrajectoryRef(path=store.to_ref(stored), sha256=sha))
store.sync()
times["store"] = time.perf_counter() - t
for i in range(0, len(refs), batch):
    chunk = refs[i : i + batch]
    shas = [r.sha256 for r in chunk]
    for name, fn in (
        ("ingest", lambda: ingest.run(IngestJob(batch=chunk), conn)),
        ("dedupe", lambda: dedupe.run(DedupeJob(sha256s=shas), conn)),
        ("label", lambda: label.run(LabelJob(sha256s=shas), conn)),
    ):
        t = time.perf_counter()
        fn()
        times[name] += time.perf_counter() - t
t = time.perf_counter()
dataset.run(DatasetJob(name="bench-direct", base_model="smollm2-135m-instruct"), conn)
times["dataset"] = time.perf_counter() - t
print(json.dumps({"stage_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        pipeline_files = ["queue", *(f"workers/{m}.py" for m in ("store", "ingest", "minhash", "tokens", "dedupe", "judge", "label", "dataset"))]
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *pipeline_files], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(n: int, out: Path, seed: int) -> float:
    from tests.fixtures.trajectories.synth import Synth, encode

    t = time.perf_counter()
    for traj in Synth(seed=seed).corpus(n):
        (out / f"{traj.id}.msgpack").write_bytes(encode(traj))
    return time.perf_counter() - t


def run_queue(n: int, files: Path, workers: int, batch: int, env: dict) -> dict:
    from tinygpt.queue import pipeline, stages
    from tinygpt.queue.connection import connect
    from tinygpt.queue.worker import child_command

    conn = connect()
    t0 = time.perf_counter()
    enq = pipeline.enqueue_files([files], conn, batch_size=batch)
    ds = pipeline.enqueue_dataset("bench-queue", "smollm2-135m-instruct", conn, depends_on=enq.label_jobs)
    t1 = time.perf_counter()
    argv = ["--queues", "data", "--burst", "--count", str(workers), "--heartbeat", "2", "--maintenance", "5", "--log-level", "WARNING"]
    proc = subprocess.run(child_command(argv), env=env, cwd=ROOT)
    t2 = time.perf_counter()
    job = stages.fetch_job(conn, ds.id)
    result = job.return_value()
    failed = stages.get_queue(conn, "data").failed_job_registry.count
    redis_peak = conn.info("memory")["used_memory_peak"] / 2**20
    conn.close()
    return {
        "exit_code": proc.returncode,
        "failed_jobs": failed,
        "jobs": len(enq.jobs) + 1,
        "enqueue_s": round(t1 - t0, 3),
        "process_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "traj_per_s": round(n / (t2 - t0), 1),
        # RUSAGE_CHILDREN: the largest resident set of any child (a worker process).
        "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "redis_peak_mb": round(redis_peak, 1),
        "dataset": None
        if result is None
        else {"trajectories": result.trajectories, "rows": result.rows, "pairs": result.pairs, "dropped": result.dropped},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="trajectories (default 10000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="trajectories per job (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-direct", action="store_true", help="only the queue run")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    from tinygpt.queue.embedded import EmbeddedRedis

    tmp = Path(tempfile.mkdtemp(prefix="tinygpt-bench-"))
    files = tmp / "trajectories"
    files.mkdir()
    report: dict = {
        "benchmark": "pipeline_throughput",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "n": args.n,
        "workers": args.workers,
        "batch": args.batch,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }
    report["generate_s"] = round(generate(args.n, files, args.seed), 3)
    report["bytes_per_trajectory"] = sum(p.stat().st_size for p in files.iterdir()) // args.n

    for mode in ("queue", "direct"):
        if mode == "direct" and args.skip_direct:
            continue
        home = tmp / f"home-{mode}"
        with EmbeddedRedis(tmp / f"redis-{mode}") as server:
            env = {**os.environ, "TINYGPT_HOME": str(home), "REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
            os.environ.update(TINYGPT_HOME=str(home), REDIS_URL=server.url)
            if mode == "queue":
                report["queue"] = run_queue(args.n, files, args.workers, args.batch, env)
            else:
                t = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", DIRECT, str(files), str(args.batch)], env=env, capture_output=True, text=True, check=True)
                total = time.perf_counter() - t
                direct = json.loads(out.stdout.strip().splitlines()[-1])
                direct["stage_s"] = {k: round(v, 3) for k, v in direct["stage_s"].items()}
                report["direct"] = {"total_s": round(total, 3), "traj_per_s": round(args.n / total, 1), **direct}
    report["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
