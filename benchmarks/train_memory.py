"""Peak memory of LoRA vs QLoRA training on the same model, data and settings.

    python benchmarks/train_memory.py [--model smollm2-135m-instruct] [--steps 5] [--batch-size 4] [--grad-checkpoint]

Each method trains in a fresh `tinygpt train` subprocess (batch 4 by default, LoRA rank 8
on every block). With long rows activations dominate the peak; `--batch-size 1
--grad-checkpoint` shows the regime where the base weights do. Reported: MLX's peak allocation (the record's peak_memory_gb) and the process's
peak resident set size from the kernel (ru_maxrss, which also counts Python, the tokenizer
and the quantization pass the first QLoRA run makes). The 4-bit base is built once and
cached before timing, so the QLoRA row measures training, not quantization.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_tool_specialist import TRAIN_CITIES, TRAIN_CURRENCIES, make_records  # noqa: E402


def train(model: str, data: Path, out: Path, method: str, steps: int, batch: int = 4, checkpoint: bool = False) -> tuple[dict, float]:
    """(training record, peak RSS in GB) of one run."""
    cmd = [sys.executable, "-m", "tinygpt.runtime.cli", "train", "--model", model, "--data", str(data),
           "--out", str(out), "--method", method, "--steps", str(steps), "--batch-size", str(batch), "--eval-every", "0",
           "--checkpoint-every", "0", "--report-every", "1", "--no-progress",
           "--grad-checkpoint" if checkpoint else "--no-grad-checkpoint"]
    log = out.with_suffix(".log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        # wait4, not wait: the child's own rusage, with its peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{method} failed: {log.read_text()}")
    return json.loads((out / "training_record.json").read_text()), usage.ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-checkpoint", action="store_true")
    args = parser.parse_args()

    from tinygpt.runtime.models import resolve_model

    model = str(resolve_model(args.model))
    work = Path(tempfile.mkdtemp(prefix="tinygpt-train-mem-"))
    src = work / "src"
    src.mkdir()
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records(64, TRAIN_CITIES, TRAIN_CURRENCIES, 0)))
    data = work / "dataset"
    subprocess.run([sys.executable, "-m", "tinygpt.runtime.cli", "dataset", "import", str(src), "--model", model,
                    "--out", str(data)], check=True, capture_output=True)
    train(model, data, work / "warm-qlora", "qlora", 1)  # quantize + cache the 4-bit base

    rows = []
    for method in ("lora", "qlora"):
        record, rss = train(model, data, work / method, method, args.steps, args.batch_size, args.grad_checkpoint)
        rows.append((method, record["metrics"]["peak_memory_gb"], rss, record["metrics"]["input_tokens_per_second"]))
    print("| method | MLX peak (GB) | process peak RSS (GB) | input tok/s |\n|---|---:|---:|---:|")
    for method, peak, rss, tps in rows:
        print(f"| {method} | {peak:.2f} | {rss:.2f} | {tps:.0f} |")
    print(f"\nQLoRA / LoRA: {rows[1][1] / rows[0][1]:.2f} (MLX peak), {rows[1][2] / rows[0][2]:.2f} (RSS)")
    print(json.dumps({"benchmark": "train_memory", "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                      "grad_checkpoint": args.grad_checkpoint,
                      "methods": {m: {"mlx_peak_gb": p, "rss_gb": r, "input_tok_s": t} for m, p, r, t in rows},
                      "ratio_mlx_peak": rows[1][1] / rows[0][1], "ratio_rss": rows[1][2] / rows[0][2]}))


if __name__ == "__main__":
    main()
