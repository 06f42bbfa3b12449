"""How steady is this machine? One fixed forward pass timed again and again over minutes.

    python benchmarks/bench_stability.py --duration 180 --output results/bench/stability.json

The sim-vs-real comparison (harness/sim_vs_real.py) measures operators at one time and real runs at
another; on a shared machine the same work does not take the same time twice, and that spread is
the floor under any simulator's error here. This times the model runner's forward for a small decode
batch (4 sequences, OPT-125m shapes, bf16: memory-bound, like most decode steps) in bursts of 11
runs (median kept) every `--interval` seconds, and reports the spread of those medians.
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
    from paged.llm import load_hf_model
    from paged.model_runner import ModelRunner, StepInputs

    hf, _ = load_hf_model(args.model, torch.bfloat16, "cpu", 0)
    runner = ModelRunner(hf, args.batch, 16, 0)
    runner.warmup()
    n = args.batch
    inputs = StepInputs(
        input_ids=torch.arange(n), positions=torch.zeros(n, dtype=torch.long),
        slot_mapping=torch.arange(n) * 16, block_tables=torch.arange(n, dtype=torch.int32)[:, None],
        is_prefill=False, context_lens=torch.ones(n, dtype=torch.int32), logit_rows=torch.arange(n),
    )  # fmt: skip
    samples = []
    start = time.time()
    while time.time() - start < args.duration:
        burst = []
        for _ in range(11):
            t = time.perf_counter()
            runner.forward(inputs)
            burst.append((time.perf_counter() - t) * 1e3)
        samples.append((time.time() - start, statistics.median(burst)))
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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "summary": summary, "samples": samples}, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
