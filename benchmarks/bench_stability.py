"""How steady is this machine? One fixed forward pass timed again and again over minutes.

    python benchmarks/bench_stability.py --duration 180 --output results/bench/stability.json

The sim-vs-real comparison (harness/calib/sim_vs_real.py) measures operators at one time and real runs at
another; on a shared machine the same work does not take the same time twice, and that spread is
the floor under any simulator's error here. This takes the profiler's speed probe
(harness.calib.profile.speed_probe: the runner's forward for a small decode batch, here 4 sequences,
OPT-125m shapes, bf16, memory-bound like most decode steps; the median of 11 runs) every
`--interval` seconds, and reports the spread of those medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between bursts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", help="write the samples and their summary as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from harness.calib.profile import speed_probe
    from harness.results import atomic_write
    from paged.model_loader import load_hf_model
    from paged.model_runner import ModelRunner

    hf, _ = load_hf_model(args.model, torch.bfloat16, "cpu", 0)
    runner = ModelRunner(hf, args.batch, 16, 0)
    runner.warmup()
    samples = []
    start = time.time()
    while time.time() - start < args.duration:
        samples.append((time.time() - start, speed_probe(runner, reps=11, n=args.batch)))
        print(f"{samples[-1][0]:6.1f} s  {samples[-1][1]:6.2f} ms", flush=True)
        time.sleep(args.interval)
    ms = sorted(m for _, m in samples)
    q = statistics.quantiles(ms, n=10)
    summary = {
        "bursts": len(ms), "p10_ms": q[0], "median_ms": statistics.median(ms), "p90_ms": q[-1],
        "min_ms": ms[0], "max_ms": ms[-1], "p90_over_p10": q[-1] / q[0], "max_over_min": ms[-1] / ms[0],
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: getattr(args, k) for k in ("model", "batch", "duration", "interval", "threads")}
        atomic_write(path, json.dumps({"meta": meta, "summary": summary, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
