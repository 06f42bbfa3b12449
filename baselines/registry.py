"""Systems by name: the memory policy and batching rule each one plugs into the one scheduler."""

from __future__ import annotations

from dataclasses import replace

from baselines.fastertransformer import FasterTransformer, default_batch_size
from baselines.orca import OrcaMax, OrcaOracle, OrcaPow2
from paged.block_manager import BlockManager
from paged.config import CacheConfig, SchedulerConfig
from paged.memory import KVCacheManager

SYSTEMS = ("vllm", "orca_max", "orca_pow2", "orca_oracle", "fastertransformer")
_CONTIGUOUS = {"orca_max": OrcaMax, "orca_pow2": OrcaPow2, "orca_oracle": OrcaOracle}


def build_system(
    name: str, cache: CacheConfig, sched: SchedulerConfig, ft_batch_size: int | None = None
) -> tuple[KVCacheManager, SchedulerConfig]:
    """The memory policy for `name` and the scheduler settings it runs with."""
    if name == "vllm":
        return BlockManager(cache, sched.max_model_len), sched
    if name in _CONTIGUOUS:
        return _CONTIGUOUS[name](cache, sched.max_model_len), sched
    if name == "fastertransformer":
        batch = ft_batch_size or default_batch_size(cache.num_gpu_slots, sched.max_model_len)
        ft_sched = replace(
            sched,
            batching="request",
            max_num_seqs=batch,
            # A static batch's prompts run together, however long: no token budget splits it.
            max_num_batched_tokens=max(sched.max_num_batched_tokens, batch * sched.max_model_len),
        )
        return FasterTransformer(cache, sched.max_model_len), ft_sched
    raise ValueError(f"unknown system {name!r}: choose one of {', '.join(SYSTEMS)}")
