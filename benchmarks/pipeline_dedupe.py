"""Dedupe time for 100k trajectories (exact and near), as one JSON document.

    python benchmarks/pipeline_dedupe.py                 # 100k, in memory and through Redis
    python benchmarks/pipeline_dedupe.py --n 20000 --skip-stage --out result.json

Synthetic trajectories (tests/fixtures/trajectories/synth.py: shared preamble, 1-3
steps, 5% near and 2% exact duplicates; ~350 tokens each) measured two ways:

- algorithm: the token streams in memory, then exact digests, MinHash signatures, LSH
  band keys and the keep-first decisions (`dedupe.IndexState`, what the stage runs
  under its lock), each timed; recall / precision against the planted duplicates;
- stage: the real `dedupe.run` in batches against an embedded redis-server, after the
  files were ingested (ingest time reported separately), plus Redis' memory for the index.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def algorithm(corpus, threshold: float) -> dict:
    import numpy as np

    from tinygpt.workers import minhash
    from tinygpt.workers.dedupe import SIG_DTYPE, IndexState, exact_digest
    from tinygpt.workers.tokens import token_stream

    streams, t_streams = timed(lambda: [np.asarray(token_stream(t), dtype=np.int64) for t in corpus])
    digests, t_exact = timed(lambda: [exact_digest(s) for s in streams])
    sigs, t_sigs = timed(lambda: minhash.signatures(streams))
    bands, rows = minhash.lsh_params(threshold)
    keys, t_bands = timed(lambda: minhash.band_keys(sigs, bands, rows))
    small = sigs.astype(SIG_DTYPE)

    by_id = {t.id: s for t, s in zip(corpus, streams)}

    def decide():
        # Members are keyed by trajectory id here (the stage keys them by file sha256).
        state = IndexState(bands, rows, by_id.get)
        return [state.decide(t.id, t.id, digests[i], small[i], keys[i], threshold, i, streams[i])[0] for i, t in enumerate(corpus)]

    verdicts, t_decide = timed(decide)
    total_tokens = int(sum(len(s) for s in streams))
    return {
        "tokens": total_tokens,
        "token_streams_s": t_streams,
        "exact_digests_s": t_exact,
        "minhash_signatures_s": t_sigs,
        "lsh_band_keys_s": t_bands,
        "decide_s": t_decide,
        "exact_total_s": round(t_exact, 3),
        "near_total_s": round(t_sigs + t_bands + t_decide, 3),
        "bands_x_rows": [bands, rows],
        "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
        "_verdicts": verdicts,
    }


def stage(corpus, tmp: Path, batch: int, threshold: float) -> dict:
    import msgspec

    from tinygpt.queue import store
    from tinygpt.queue.embedded import EmbeddedRedis
    from tinygpt.runtime.contracts.jobs import DedupeJob, IngestJob, TrajectoryRef
    from tinygpt.workers import dedupe, ingest

    os.environ["TINYGPT_HOME"] = str(tmp / "home")
    refs = []
    t = time.perf_counter()
    for traj in corpus:
        sha, path = store.put_bytes(msgspec.msgpack.encode(traj), fsync=False)
        refs.append(TrajectoryRef(path=store.to_ref(path), sha256=sha))
    store.sync()
    t_store = time.perf_counter() - t
    with EmbeddedRedis(tmp / "redis") as server:
        conn = server.client()
        t = time.perf_counter()
        for i in range(0, len(refs), batch):
            ingest.run(IngestJob(batch=refs[i : i + batch]), conn)
        t_ingest = time.perf_counter() - t
        before = conn.info("memory")["used_memory"]
        counts = {"kept": 0, "exact": 0, "near": 0, "superseded": 0}
        t = time.perf_counter()
        for i in range(0, len(refs), batch):
            r = dedupe.run(DedupeJob(sha256s=[x.sha256 for x in refs[i : i + batch]], near_threshold=threshold), conn)
            for k in counts:
                counts[k] += getattr(r, k)
        t_dedupe = time.perf_counter() - t
        index_mb = (conn.info("memory")["used_memory"] - before) / 2**20
        conn.close()
    return {
        "store_s": round(t_store, 3),
        "ingest_s": round(t_ingest, 3),
        "dedupe_s": round(t_dedupe, 3),
        "trajectories_per_s": round(len(corpus) / t_dedupe, 1),
        "batch": batch,
        "verdicts": counts,
        "redis_index_mb": round(index_mb, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=1000, help="trajectories per dedupe job in the stage run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-stage", action="store_true", help="only the in-memory algorithm")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from benchmarks.pipeline_throughput import git_commit
    from tests.fixtures.trajectories.synth import Synth

    report: dict = {
        "benchmark": "pipeline_dedupe",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "n": args.n,
        "threshold": args.threshold,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }
    synth = Synth(seed=args.seed)
    corpus, report["generate_s"] = timed(lambda: synth.corpus(args.n))
    algo = algorithm(corpus, args.threshold)
    verdicts = dict(zip((t.id for t in corpus), algo.pop("_verdicts")))
    # Planted copies: a near copy of a copy can be exact or near of either; count a
    # planted copy as found when it is dropped at all, and any other drop as a false one.
    planted_near = [tid for tid, (kind, _) in synth.planted.items() if kind == "near"]
    planted_exact = [tid for tid, (kind, _) in synth.planted.items() if kind == "exact"]
    dropped = {tid for tid, v in verdicts.items() if v in ("exact", "near")}
    algo["planted"] = {"exact": len(planted_exact), "near": len(planted_near)}
    algo["recall_exact"] = round(sum(t in dropped for t in planted_exact) / max(1, len(planted_exact)), 4)
    algo["recall_near"] = round(sum(t in dropped for t in planted_near) / max(1, len(planted_near)), 4)
    algo["false_drops"] = len(dropped - set(synth.planted))
    # A copy of a copy that was itself dropped is compared with the kept original, not its
    # direct source (keep-first), and may rightly stay. A miss is a copy kept although its
    # source was kept and their exact Jaccard reaches the threshold.
    from tinygpt.workers.minhash import jaccard
    from tinygpt.workers.tokens import token_stream

    by_id = {t.id: t for t in corpus}
    misses = [
        tid
        for tid in planted_near
        if verdicts[tid] == "kept"
        and verdicts[synth.planted[tid][1]] == "kept"
        and jaccard(token_stream(by_id[tid]), token_stream(by_id[synth.planted[tid][1]])) >= args.threshold
    ]
    algo["missed_near"] = len(misses)
    algo["kept_copies_of_dropped_sources"] = sum(1 for t in planted_near if verdicts[t] == "kept") - len(misses)
    report["algorithm"] = algo
    report["peak_rss_mb_after_algorithm"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if not args.skip_stage:
        report["stage"] = stage(corpus, Path(tempfile.mkdtemp(prefix="tinygpt-dedupe-bench-")), args.batch, args.threshold)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
