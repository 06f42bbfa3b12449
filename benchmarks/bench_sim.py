"""How fast does the simulator run? Simulated requests and steps per wall second.

Default: OPT-13B on an A100-40GB, ShareGPT-like lengths, Poisson arrivals at 2 req/s over a one-hour
trace (the paper's Figure 12a setting), vLLM's memory policy. Reports wall time, simulated
requests / wall s, steps / wall s and µs per sequence-step, with and without the per-step Figure 2
memory accounting.

    python benchmarks/bench_sim.py
    python benchmarks/bench_sim.py --rate 4 --duration 600 --json out.json
    python benchmarks/bench_sim.py --profile          # cProfile's top functions
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

from harness.simulate import SimConfig, simulate
from harness.workload import synthetic


def run(args, track_memory: bool) -> dict:
    w = synthetic(args.dataset, rate=args.rate, duration_s=args.duration, seed=args.seed)
    cfg = SimConfig(
        model=args.model, hardware=args.hardware, tensor_parallel_size=args.tp, track_memory=track_memory
    )
    t0 = time.perf_counter()
    r = simulate(w, cfg)
    total = time.perf_counter() - t0
    seq_steps = sum(s.num_seqs for s in r.engine.steps)
    return {
        "track_memory": track_memory,
        "requests": len(w),
        "steps": len(r.engine.steps),
        "seq_steps": seq_steps,
        "wall_s": total,
        "engine_wall_s": r.wall_s,
        "requests_per_wall_s": len(w) / total,
        "steps_per_wall_s": len(r.engine.steps) / total,
        "us_per_seq_step": 1e6 * r.wall_s / max(seq_steps, 1),
        "simulated_s": r.engine.clock,
        "normalized_latency": r.metrics["normalized_latency"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="opt-13b")
    ap.add_argument("--hardware", default="a100-40gb")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--dataset", default="sharegpt")
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args, True)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return
    rows = [run(args, False), run(args, True)]
    print(
        f"{args.model} on {args.hardware} x{args.tp}, {args.dataset} at {args.rate} req/s for {args.duration:.0f} s"
    )
    print(
        f"{'accounting':>10} {'requests':>9} {'steps':>8} {'wall s':>7} {'req/wall s':>11} {'steps/wall s':>13} {'us/seq-step':>12}"
    )
    for r in rows:
        print(
            f"{'on' if r['track_memory'] else 'off':>10} {r['requests']:>9} {r['steps']:>8} {r['wall_s']:>7.2f} "
            f"{r['requests_per_wall_s']:>11.0f} {r['steps_per_wall_s']:>13.0f} {r['us_per_seq_step']:>12.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
