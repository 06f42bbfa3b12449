"""How fast is one scheduling iteration? Scheduler + block manager, no model.

Drives the real Scheduler and BlockManager with a synthetic request stream (ShareGPT-like lengths:
prompts 16-512 tokens, outputs 64-512, all arrived, always more waiting than can run) and reports the
wall time of schedule() + postprocess() per step and per running sequence, at 8 / 32 / 128 / 256
running sequences (max_num_seqs), block size 16. The executor is the NullExecutor (no tensors); its
time is excluded. This cost bounds how fast the simulator can run.

    python benchmarks/bench_scheduler.py                # the table
    python benchmarks/bench_scheduler.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time

from paged import (
    BlockManager,
    CacheConfig,
    NullExecutor,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SequenceGroup,
)


def make_requests(num: int, seed: int) -> list[SequenceGroup]:
    rng = random.Random(seed)
    groups = []
    for i in range(num):
        prompt = [rng.randrange(50_000) for _ in range(rng.randint(16, 512))]
        params = SamplingParams(max_tokens=rng.randint(64, 512), ignore_eos=True)
        groups.append(SequenceGroup(str(i), prompt, params, arrival_time=0.0))
    return groups


def measure(num_running: int, steps: int, seed: int, track_memory: bool, block_tables: bool = False) -> dict:
    """Time `steps` iterations with `num_running` sequences in the batch."""
    sched_cfg = SchedulerConfig(max_num_seqs=num_running, max_num_batched_tokens=4096, max_model_len=2048)
    # Memory for every running sequence at full length: the batch size is set by max_num_seqs.
    cache = CacheConfig(num_gpu_blocks=num_running * 1040 // 16 + 64, block_size=16)
    manager = BlockManager(cache, sched_cfg.max_model_len)
    sched = Scheduler(sched_cfg, manager)
    executor = NullExecutor()
    # As in the simulator (Engine does this): a cost-model executor needs no block tables in the
    # scheduler's output. --block-tables measures the real engine's setting.
    sched.emit_block_tables = block_tables
    for g in make_requests(num_running * 6 + steps // 8, seed):
        sched.add(g)
    # Warm up until the batch is full.
    while len(sched.running) < num_running:
        out = sched.schedule(0.0)
        sched.postprocess(out, executor.execute(out).outputs, 0.0)
    clock = time.perf_counter
    total = 0.0
    num_seq_steps = 0
    per_step = []
    for _ in range(steps):
        t0 = clock()
        out = sched.schedule(0.0)
        t1 = clock()
        outputs = executor.execute(out).outputs
        t2 = clock()
        sched.postprocess(out, outputs, 0.0)
        if track_memory:
            manager.usage(sched.running)
        t3 = clock()
        dt = (t1 - t0) + (t3 - t2)
        total += dt
        per_step.append(dt)
        num_seq_steps += out.num_seqs
    return {
        "num_running": num_running,
        "steps": steps,
        "mean_running": num_seq_steps / steps,
        "us_per_step": 1e6 * total / steps,
        "median_us_per_step": 1e6 * statistics.median(per_step),
        "us_per_seq_step": 1e6 * total / max(num_seq_steps, 1),
        "track_memory": track_memory,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 256])
    ap.add_argument("--steps", type=int, default=2000, help="timed iterations per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--block-tables", action="store_true", help="the scheduler also emits block tables (real engine)"
    )
    args = ap.parse_args(argv)
    rows = []
    print(f"{'running':>8} {'us/step':>9} {'median':>9} {'us/seq/step':>12} {'+memory acct':>13}")
    for n in args.sizes:
        base = measure(n, args.steps, args.seed, track_memory=False, block_tables=args.block_tables)
        acct = measure(n, args.steps, args.seed, track_memory=True, block_tables=args.block_tables)
        rows += [base, acct]
        print(
            f"{n:>8} {base['us_per_step']:>9.1f} {base['median_us_per_step']:>9.1f} "
            f"{base['us_per_seq_step']:>12.2f} {acct['us_per_seq_step']:>13.2f}"
        )
    if args.json:
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "cpu": platform.processor()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "block_size": 16, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
