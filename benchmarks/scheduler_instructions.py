"""Instructions per scheduling iteration, counted by valgrind (callgrind): a repeatable cost.

Wall-clock timings of the scheduler move by 30% between identical runs on a shared machine;
instruction counts do not (the same binary, inputs and environment give the same count). This runs
benchmarks/bench_scheduler.py's workload (ShareGPT-like lengths, block size 16, the batch full at
`n` running sequences, NullExecutor tokens) for 0 and for `--steps` iterations under callgrind and
reports the difference per step: scheduler, block manager and the NullExecutor's tokens (which the
wall-clock benchmark leaves out; identical between two versions of the scheduler). Give several
checkouts to compare them side by side:

    python benchmarks/scheduler_instructions.py --repo /path/to/old/checkout . --sizes 8 32 128 256

Needs valgrind (Debian: apt-get install valgrind); slow (about 50x): a few minutes for the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def child(repo: str, n: int, steps: int, track_memory: bool, block_tables: bool) -> None:
    """The workload itself (runs under valgrind)."""
    sys.path[:0] = [repo, str(Path(repo) / "benchmarks")]
    from bench_scheduler import make_requests

    from paged import BlockManager, CacheConfig, NullExecutor, Scheduler, SchedulerConfig

    cfg = SchedulerConfig(max_num_seqs=n, max_num_batched_tokens=4096, max_model_len=2048)
    manager = BlockManager(CacheConfig(num_gpu_blocks=n * 1040 // 16 + 64, block_size=16), 2048)
    sched = Scheduler(cfg, manager)
    if hasattr(sched, "emit_block_tables"):  # checkouts from before the flag had no tables at all
        sched.emit_block_tables = block_tables
    executor = NullExecutor()
    for g in make_requests(n * 6 + 250, 0):
        sched.add(g)
    while len(sched.running) < n:
        out = sched.schedule(0.0)
        sched.postprocess(out, executor.execute(out).outputs, 0.0)
    for _ in range(steps):
        out = sched.schedule(0.0)
        sched.postprocess(out, executor.execute(out).outputs, 0.0)
        if track_memory:
            manager.usage(sched.running)


def count(repo: str, n: int, steps: int, track_memory: bool, block_tables: bool) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    cmd += ["--child", repo, str(n), str(steps), str(int(track_memory)), str(int(block_tables))]
    # A fixed hash seed: the same work in every run (dict and set orders of str keys).
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"valgrind run failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", nargs="+", default=["."], help="checkouts to compare (the first is the base)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 256])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--block-tables", action="store_true", help="the scheduler emits block tables")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("error: valgrind is not installed; apt-get install valgrind")
    repos = [str(Path(r).resolve()) for r in args.repo]
    print(f"instructions per step (millions), {args.steps} steps; base {repos[0]}")
    head = "".join(f" {Path(r).name[:14]:>14}" for r in repos)
    print(f"{'running':>8} {'acct':>5}{head}  ratios to the base")
    for n in args.sizes:
        for acct in (False, True):
            jobs = [(r, n, s, acct, args.block_tables) for r in repos for s in (0, args.steps)]
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # valgrind runs are independent
                counts = list(pool.map(lambda job: count(*job), jobs))
            per_step = [(total - base) / args.steps / 1e6 for base, total in zip(counts[::2], counts[1::2])]
            ratios = " ".join(f"{p / per_step[0]:.3f}" for p in per_step[1:])
            cells = "".join(f" {p:>14.3f}" for p in per_step)
            print(f"{n:>8} {str(acct):>5}{cells}  {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        r, n, s, m, b = sys.argv[2:7]
        child(r, int(n), int(s), m == "1", b == "1")
    else:
        raise SystemExit(main())
