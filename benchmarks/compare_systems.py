"""The five systems on one saved workload: batching and the paper's Figure 2 memory breakdown.

    python benchmarks/compare_systems.py                       # OPT-13B, ShareGPT, 1 req/s, one hour
    python benchmarks/compare_systems.py --rate 2 --duration 600 --workload-out /tmp/w.jsonl

The workload is generated once with a fixed seed, saved, and every system replays the saved file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from baselines import SYSTEMS
from harness.simulate import SimConfig, add_run_arguments, simulate
from harness.workload import Workload, synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(ap, rate=1.0)
    ap.add_argument("--workload-out", help="where to save the workload (default: a temporary file)")
    args = ap.parse_args()
    path = Path(args.workload_out or tempfile.mkdtemp())
    if path.is_dir():
        path = path / "workload.jsonl"
    synthetic(args.dataset, args.rate, args.duration, args.seed).save(path)
    print(
        f"{args.model} on {args.tp} x {args.hardware}, {args.dataset} at {args.rate} req/s for "
        f"{args.duration:g} s; workload saved to {path}"
    )
    print(
        f"{'system':<18} {'norm. lat s/tok':>15} {'batched req':>11} {'token st. %':>11} {'reserv. %':>9} "
        f"{'internal %':>10} {'ext.+oth %':>10} {'free %':>7} {'wall s':>7}"
    )
    for system in SYSTEMS:
        workload = Workload.load(path)
        t0 = time.perf_counter()
        m = simulate(
            workload,
            SimConfig(system=system, model=args.model, hardware=args.hardware, tensor_parallel_size=args.tp),
        ).metrics
        print(
            f"{system:<18} {m['normalized_latency']:>15.3f} {m['avg_batched_requests']:>11.2f} "
            f"{m['kv_token_states_pct']:>11.1f} {m['kv_reservation_pct']:>9.1f} "
            f"{m['kv_internal_frag_pct']:>10.1f} {m['kv_external_frag_pct']:>10.1f} {m['kv_free_pct']:>7.1f} "
            f"{time.perf_counter() - t0:>7.1f}"
        )


if __name__ == "__main__":
    main()
