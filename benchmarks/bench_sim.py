"""How fast does the simulator run? Simulated requests and steps per wall second.

Default: OPT-13B on an A100-40GB, ShareGPT-like lengths, Poisson arrivals at 2 req/s over a one-hour
trace (the paper's Figure 12a setting), vLLM's memory policy. Reports wall time, simulated
requests / wall s, steps / wall s and µs per sequence-step, with and without the per-step Figure 2
memory accounting, each stepping every step and with the exact fast-forward (paged/fast_forward.py)
side by side in one run, and the speedup; the runs' metrics must be identical (checked). "wall s" is
all of simulate() (building the engine, the run, the metrics); "engine s" the engine's loop alone;
"stretch s" the time inside fast-forward's decode stretches, and "bound" the speedup the run would
have with those stretches free (stepping's wall over the fast-forwarded wall less the stretches): the
most any fast-forward of decode steps could give, the rest being per-event work.

    python benchmarks/bench_sim.py
    python benchmarks/bench_sim.py --system orca_max --rate 3.2
    python benchmarks/bench_sim.py --composition mixed   # the paper profile's step composition
    python benchmarks/bench_sim.py --rate 4 --duration 600 --json out.json
    python benchmarks/bench_sim.py --profile          # cProfile's top functions
    python benchmarks/bench_sim.py --figure           # all of Figure 12: 6 panels x 5 systems x 8 rates
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

from baselines import SYSTEMS
from harness.metrics import step_series
from harness.simulate import ServerConfig, SimConfig, add_run_arguments, simulate
from harness.workload import synthetic
from paged.config import STEP_COMPOSITIONS


class StretchTimer:
    """Wall time inside fast-forward's decode stretches (`_Batch.stretch`), the between-event work it
    advances: what is left outside them is per-event work (arrivals, prompt steps, admissions,
    finishes) and simulate()'s own, which no fast-forward removes."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self):
        from paged import fast_forward as ff

        self.cls, self.orig = ff._Batch, ff._Batch.stretch

        def timed(batch, *a, **k):
            t0 = time.perf_counter()
            try:
                return self.orig(batch, *a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        self.cls.stretch = timed
        return self

    def __exit__(self, *exc):
        self.cls.stretch = self.orig


def run(args, track_memory: bool, fast_forward: bool) -> dict:
    w = synthetic(args.dataset, rate=args.rate, duration_s=args.duration, seed=args.seed)
    cfg = SimConfig(
        system=args.system,
        model=args.model,
        hardware=args.hardware,
        tensor_parallel_size=args.tp,
        track_memory=track_memory,
        fast_forward=fast_forward,
        server=ServerConfig(step_composition=args.composition),
    )
    with StretchTimer() as stretches:
        t0 = time.perf_counter()
        r = simulate(w, cfg)
        total = time.perf_counter() - t0
    series = step_series(r.engine.steps)
    steps = len(series["start_time"])
    seq_steps = int(series["num_seqs"].sum())
    return {
        "track_memory": track_memory,
        "fast_forward": fast_forward,
        "requests": len(w),
        "steps": steps,
        "records": len(r.engine.steps),
        "seq_steps": seq_steps,
        "wall_s": total,
        "engine_wall_s": r.wall_s,
        "requests_per_wall_s": len(w) / total,
        "steps_per_wall_s": steps / total,
        "us_per_seq_step": 1e6 * r.wall_s / max(seq_steps, 1),
        "simulated_s": r.engine.clock,
        "stretch_wall_s": stretches.seconds,
        "metrics": r.metrics,
    }


# The paper's Figure 12 panels: (dataset, model, GPU, TP, trace seconds, 8 request rates spanning each
# panel from light load to past vLLM's capacity in this simulator).
PANELS = [
    ("sharegpt_synthetic", "opt-13b", "a100-40gb", 1, 3600, [0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2]),
    ("sharegpt_synthetic", "opt-66b", "a100-40gb", 4, 3600, [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6]),
    ("sharegpt_synthetic", "opt-175b", "a100-80gb", 8, 900, [0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2]),
    ("alpaca", "opt-13b", "a100-40gb", 1, 3600, [4, 8, 12, 16, 20, 24, 28, 32]),
    ("alpaca", "opt-66b", "a100-40gb", 4, 3600, [2, 4, 6, 8, 10, 12, 14, 16]),
    ("alpaca", "opt-175b", "a100-80gb", 8, 900, [4, 8, 12, 16, 20, 24, 28, 32]),
]


def machine() -> str:
    """The CPU this ran on (absolute times mean little without it)."""
    from paged.cpu_features import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs"


def _point(job) -> dict:
    system, dataset, model, gpu, tp, duration, rate = job
    t0 = time.perf_counter()
    w = synthetic(dataset, rate=rate, duration_s=duration, seed=0)
    cfg = SimConfig(system=system, model=model, hardware=gpu, tensor_parallel_size=tp, track_memory=False)
    r = simulate(w, cfg)
    return {
        "system": system,
        "dataset": dataset,
        "model": model,
        "rate": rate,
        "requests": len(w),
        "wall_s": time.perf_counter() - t0,
        "normalized_latency": r.metrics["normalized_latency"],
    }


def figure(workers: int, systems: list[str]) -> list[dict]:
    """All points of Figure 12 for the given systems on `workers` processes; prints each curve's
    normalized latency by rate, CPU seconds per curve and the total wall time."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [
        (s, d, m, g, tp, dur, rate) for d, m, g, tp, dur, rates in PANELS for s in systems for rate in rates
    ]
    jobs.sort(key=lambda j: -j[5] * j[6])  # longest first: better packing on few workers
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        rows = list(pool.map(_point, jobs))
    total = time.perf_counter() - t0
    for d, m, *_ in PANELS:
        for s in systems:
            pts = sorted(
                (r for r in rows if (r["dataset"], r["model"], r["system"]) == (d, m, s)),
                key=lambda r: r["rate"],
            )
            lat = " ".join(f"{r['rate']:g}:{r['normalized_latency']:.3f}" for r in pts)
            print(f"{d:>8} {m:>8} {s:>17}: {sum(r['wall_s'] for r in pts):6.1f} cpu-s  rate:s/token {lat}")
    print(f"{len(rows)} points ({', '.join(systems)}), {workers} processes: {total:.1f} s wall")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(ap, rate=2.0)
    ap.add_argument("--system", default="vllm", choices=SYSTEMS)
    ap.add_argument("--composition", default="separate", choices=STEP_COMPOSITIONS)
    ap.add_argument("--json")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--figure", action="store_true", help="time the six panels of Figure 12 (vLLM)")
    ap.add_argument("--workers", type=int, default=2, help="processes for --figure")
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), help="systems for --figure")
    args = ap.parse_args()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args, True, True)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return
    if args.figure:
        rows = figure(args.workers, args.systems)
    else:
        rows = []
        for track_memory in (False, True):
            pair = [run(args, track_memory, False), run(args, track_memory, True)]
            if pair[0]["metrics"].keys() != pair[1]["metrics"].keys() or any(
                a != b and a == a for a, b in zip(pair[0]["metrics"].values(), pair[1]["metrics"].values())
            ):
                raise SystemExit("fast-forward changed the metrics: a bug (tests/test_fast_forward.py)")
            pair[1]["speedup"] = pair[0]["wall_s"] / pair[1]["wall_s"]
            # The most any fast-forward could give: the same run with its decode stretches free.
            pair[1]["speedup_bound"] = pair[0]["wall_s"] / (pair[1]["wall_s"] - pair[1]["stretch_wall_s"])
            rows += pair
        print(f"{args.system} on {args.model}, {args.hardware} x{args.tp}, {args.dataset}, ", end="")
        print(f"{args.rate} req/s, {args.duration:.0f} s, {args.composition} steps; {machine()}")
        print(f"{'accounting':>10} {'fast-fwd':>8} {'requests':>9} {'steps':>8} ", end="")
        print(f"{'records':>8} {'wall s':>7} {'engine s':>8} ", end="")
        print(f"{'steps/wall s':>13} {'us/seq-step':>12} {'speedup':>8} {'stretch s':>9} {'bound':>6}")
        for r in rows:
            print(
                f"{'on' if r['track_memory'] else 'off':>10} {'on' if r['fast_forward'] else 'off':>8} "
                f"{r['requests']:>9} {r['steps']:>8} {r['records']:>8} {r['wall_s']:>7.2f} "
                f"{r['engine_wall_s']:>8.2f} "
                f"{r['steps_per_wall_s']:>13.0f} {r['us_per_seq_step']:>12.3f} "
                f"{r.get('speedup', 1.0):>7.1f}x"
                + (f" {r['stretch_wall_s']:>9.2f} {r['speedup_bound']:>5.1f}x" if r["fast_forward"] else "")
            )
        for r in rows:
            r.pop("metrics")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
