"""Contiguous-allocation baselines (the paper's Orca Max/Pow2/Oracle and FasterTransformer) as memory
policies behind `paged.memory.KVCacheManager`, and the registry that builds any system by name."""

from baselines.buddy import BuddyAllocator
from baselines.contiguous import ContiguousManager
from baselines.fastertransformer import FasterTransformer
from baselines.orca import OrcaMax, OrcaOracle, OrcaPow2
from baselines.registry import ALL_SYSTEMS, SYSTEMS, build_system

__all__ = [
    "ALL_SYSTEMS",
    "SYSTEMS",
    "BuddyAllocator",
    "ContiguousManager",
    "FasterTransformer",
    "OrcaMax",
    "OrcaOracle",
    "OrcaPow2",
    "build_system",
]
