"""Contiguous-allocation baselines (Orca Max/Pow2/Oracle, FasterTransformer) as memory policies
behind `paged.memory.KVCacheManager` (the baselines issue)."""
