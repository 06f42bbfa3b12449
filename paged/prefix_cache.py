"""Automatic prefix caching: full blocks found again by a chained hash of their tokens.

The hash of block i covers block i's tokens and, through the previous block's hash, every token
before it, so one dictionary lookup proves that a whole prefix is resident (vLLM, nano-vllm). Only
full blocks are cached: a full block is never written again, so sharing it needs no copy-on-write.
A cached block whose reference count drops to zero is not freed but kept, evictable, in LRU order;
it is revived on a hit and evicted only when the allocator runs out of never-cached free blocks.
"""

from __future__ import annotations

from collections import OrderedDict

ROOT_HASH = 0x9E3779B97F4A7C15  # chain seed for block 0


def chain_hash(prev_hash: int, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given the hash of the block before it (ROOT_HASH for block 0)."""
    return hash((prev_hash, token_ids))


class PrefixCache:
    """hash -> block id, with the evictable (unreferenced) cached blocks in LRU order."""

    def __init__(self) -> None:
        self.hash_to_block: dict[int, int] = {}
        self.block_hash: dict[int, int] = {}
        # The tokens of each cached block, compared on every hit: a hash collision must not return
        # another prefix's KV.
        self.block_tokens: dict[int, tuple[int, ...]] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()  # first = least recently used

    @property
    def num_evictable(self) -> int:
        return len(self.evictable)

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        block = self.hash_to_block.get(block_hash)
        if block is None or self.block_tokens[block] != token_ids:
            return None
        return block

    def insert(self, block: int, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """Publish a full block. If the same content is already cached in another block, keep the
        older entry: both blocks stay valid, only one is findable."""
        if block_hash in self.hash_to_block or block in self.block_hash:
            return
        self.hash_to_block[block_hash] = block
        self.block_hash[block] = block_hash
        self.block_tokens[block] = token_ids

    def is_cached(self, block: int) -> bool:
        return block in self.block_hash

    def park(self, block: int) -> None:
        """A cached block lost its last reference: keep it for reuse, most recently used last."""
        self.evictable[block] = None

    def revive(self, block: int) -> None:
        """A hit on an evictable block takes it out of the evictable set."""
        del self.evictable[block]

    def evict(self) -> int:
        """Drop the least recently used evictable block from the cache and return it for reuse."""
        block, _ = self.evictable.popitem(last=False)
        self.forget(block)
        return block

    def forget(self, block: int) -> None:
        """Drop a cached block's entry (it stays allocated; a later free returns it to the free list)."""
        # Removing the mapping on reuse is what keeps a recycled block from being found under its old
        # content (nano-vllm issue 163).
        block_hash = self.block_hash.pop(block)
        del self.hash_to_block[block_hash]
        del self.block_tokens[block]
