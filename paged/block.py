"""A pool of physical KV blocks: a free list and a reference count per block (paper section 4.2).

One `BlockAllocator` serves the device (GPU) pool and one the host (CPU swap) pool. Block ids are
plain ints; a block table is a list of them. The device pool can carry a `PrefixCache`, in which case
freed blocks that hold cached content are parked as evictable instead of returned to the free list.
"""

from __future__ import annotations

from collections import deque

from paged.prefix_cache import PrefixCache


class BlockAllocator:
    """Free list plus reference counts over `num_blocks` blocks."""

    def __init__(self, num_blocks: int, prefix_cache: PrefixCache | None = None) -> None:
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.prefix_cache = prefix_cache

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: never-used or freed blocks, plus evictable cached ones."""
        cache = self.prefix_cache
        return len(self.free_ids) + (cache.num_evictable if cache is not None else 0)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self) -> int:
        if self.free_ids:
            block = self.free_ids.popleft()
        elif self.prefix_cache is not None and self.prefix_cache.num_evictable:
            block = self.prefix_cache.evict()
        else:
            raise RuntimeError("out of KV blocks: the scheduler must check can_allocate first")
        self.ref_counts[block] = 1
        return block

    def incref(self, block: int) -> None:
        self.ref_counts[block] += 1

    def take_cached(self, block: int) -> None:
        """Add a reference to a cached block found by a prefix-cache hit, reviving it if parked."""
        cache = self.prefix_cache
        if self.ref_counts[block] == 0:
            cache.revive(block)
        if cache is not None and cache.is_cached(block):
            cache.hit(block)
        self.ref_counts[block] += 1

    def decref(self, block: int) -> None:
        count = self.ref_counts[block] - 1
        if count < 0:
            raise RuntimeError(f"block {block} freed twice")
        self.ref_counts[block] = count
        if count == 0:
            cache = self.prefix_cache
            if cache is not None and cache.is_cached(block):
                cache.park(block)
            else:
                self.free_ids.append(block)
