"""Systems by name: the memory policy and batching rule each one plugs into the one scheduler."""

from __future__ import annotations

from dataclasses import replace

from baselines.fastertransformer import FasterTransformer, default_batch_size
from baselines.orca import OrcaMax, OrcaOracle, OrcaPow2
from baselines.vattention import PAGE_KIB, VAttention
from paged.block_manager import BlockManager
from paged.config import CacheConfig, SchedulerConfig
from paged.memory import KVCacheManager

SYSTEMS = ("vllm", "orca_max", "orca_pow2", "orca_oracle", "fastertransformer")  # the paper's
# Beyond the paper, run only when named (experiments default to the paper's five): vAttention with
# 64 KiB and 2 MiB pages (baselines/vattention.py).
ALL_SYSTEMS = SYSTEMS + tuple(PAGE_KIB)
_CONTIGUOUS = {"orca_max": OrcaMax, "orca_pow2": OrcaPow2, "orca_oracle": OrcaOracle}


def build_system(
    name: str,
    cache: CacheConfig,
    sched: SchedulerConfig,
    ft_batch_size: int | None = None,
    ft_max_total_len: int | None = None,
    ft_pad_batch: bool = False,
) -> tuple[KVCacheManager, SchedulerConfig]:
    """The memory policy for `name` and the scheduler settings it runs with.

    FasterTransformer only: `ft_batch_size` (B; None: as many max-length requests as the cache holds),
    `ft_max_total_len` (a batch's longest prompt + longest output stays within it: the artifact's
    2040; None: no such rule) and `ft_pad_batch` (the batch runs padded and every member finishes when
    it ends, as in the artifact); docs/baselines.md."""
    if name == "vllm":
        return BlockManager(cache, sched.max_model_len), sched
    if name in PAGE_KIB:  # cache.block_size is already the page's tokens (harness/simulate.py)
        return VAttention(cache, sched.max_model_len), sched
    if name in _CONTIGUOUS:
        return _CONTIGUOUS[name](cache, sched.max_model_len), sched
    if name == "fastertransformer":
        batch = ft_batch_size or default_batch_size(cache.num_gpu_slots, sched.max_model_len)
        ft_sched = replace(
            sched,
            batching="request",
            enable_chunked_prefill=False,  # a static batch's prompt step is the whole batch's
            policy="fcfs",  # and it is never preempted for another
            max_num_seqs=batch,
            # A static batch's prompts run together, however long: no token budget splits it.
            max_num_batched_tokens=max(sched.max_num_batched_tokens, batch * sched.max_model_len),
            max_batch_total_len=ft_max_total_len,
            pad_batch=ft_pad_batch,
        )
        return FasterTransformer(cache, sched.max_model_len), ft_sched
    raise ValueError(f"unknown system {name!r}: choose one of {', '.join(ALL_SYSTEMS)}")
