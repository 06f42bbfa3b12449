"""The LLM API's tensor-parallel worker processes: ranks 1..TP-1 load their shard and follow rank 0.

Rank 0 (the process holding `LLM`) runs the one scheduler and broadcasts each step
(paged/tensor_parallel.py); each worker builds the same model (same seed, so the same weights before
sharding), cuts its shard, allocates the cache rank 0 sizes, warms up and applies steps until told to
stop.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from paged.model_loader import DTYPES, load_hf_model
from paged.model_runner import ModelRunner
from paged.tensor_parallel import broadcast_step, init_group, worker_loop


def _worker_main(model, dtype, device, seed, block_size, rank, world, store_path) -> None:
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    init_group(rank, world, store_path, cuda)
    hf, _ = load_hf_model(model, DTYPES[dtype], device, seed)
    runner = ModelRunner(hf, 0, block_size, 0, tp_rank=rank, tp_size=world)
    box = [None]
    dist.broadcast_object_list(box, src=0)  # rank 0's cache size
    runner.allocate_cache(*box[0])
    runner.warmup()
    worker_loop(runner)
    dist.destroy_process_group()


def start_workers(model, dtype, device, seed, block_size, world) -> list:
    """Start ranks 1..world-1 as processes and join the process group as rank 0."""
    store_dir = tempfile.mkdtemp(prefix="pagelab-tp-")
    store_path = os.path.join(store_dir, "rendezvous")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(model, dtype, device, seed, block_size, r, world, store_path),
            daemon=True,
        )
        for r in range(1, world)
    ]
    for p in procs:
        p.start()
    init_group(0, world, store_path, device.startswith("cuda"))
    atexit.register(stop_workers, procs, store_dir)
    return procs


def stop_workers(procs: list, store_dir: str | None = None) -> None:
    if dist.is_initialized():
        broadcast_step(None)
        dist.destroy_process_group()
    for p in procs:
        p.join(timeout=30)
    if store_dir is not None:
        shutil.rmtree(store_dir, ignore_errors=True)
