"""Automatic prefix caching: full blocks found again by a chained hash of their tokens.

The hash of block i covers block i's tokens and, through the previous block's hash, every token
before it, so one dictionary lookup proves that a whole prefix is resident (vLLM, nano-vllm). The
chain makes the cached blocks a tree: a block's parent holds the tokens before it (a radix tree over
blocks). Only full blocks are cached: a full block is never written again, so sharing it needs no
copy-on-write. A cached block whose reference count drops to zero is not freed but parked, evictable;
it is revived on a hit and evicted only when the allocator runs out of never-cached free blocks.

Which parked block goes first is an `EvictionPolicy` (the paper leaves it as future work, section 4.5):

- `lru`: the least recently released (vLLM's automatic prefix caching);
- `lfu`: the fewest hits since it was cached, ties least recently released;
- `radix`: the least recently released among the leaves, blocks no other cached block continues
  (SGLang's RadixAttention evicts leaves of its token radix tree): a prefix is never evicted while a
  longer cached prefix still depends on it, where LRU and LFU can leave a cached tail unreachable
  behind an evicted middle. It also matches at token level, as SGLang's radix tree does: where a
  prompt's next block is not cached whole, the cached child of its prefix that shares the most
  leading tokens with it is copied into a new block (copy-on-write, section 4.4) and the prompt
  computes only the tokens after the common part (`EvictionPolicy.partial_match`).

`register_eviction` adds a policy; docs/extending.md says what it must do and which tests check it.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

ROOT_HASH = 0x9E3779B97F4A7C15  # chain seed for block 0


def chain_hash(prev_hash: int, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given the hash of the block before it (ROOT_HASH for block 0)."""
    return hash((prev_hash, token_ids))


class EvictionPolicy:
    """The parked (unreferenced, cached) blocks and which of them is evicted first. The cache calls
    `park` when a block loses its last reference, `remove` when a hit takes a parked block back,
    `hit` on every hit, `pop` to evict, and `leaf` when a parked block's last cached child is dropped
    (only a policy that evicts leaves needs it)."""

    name = ""
    # Whether a prompt may also copy a cached block that shares only its first tokens with the
    # prompt's next block (token-level matching; BlockManager._place). Off: block-level matching.
    partial_match = False

    def __len__(self) -> int:
        raise NotImplementedError

    def park(self, block: int, cache: PrefixCache) -> None:
        raise NotImplementedError

    def remove(self, block: int) -> None:
        raise NotImplementedError

    def pop(self, cache: PrefixCache) -> int:
        raise NotImplementedError

    def hit(self, block: int) -> None:
        pass

    def leaf(self, block: int, cache: PrefixCache) -> None:
        pass

    def drop(self, block: int) -> None:
        """The block left the cache (evicted, or unpublished while in use): forget what is kept on it."""

    def parked(self):
        """The parked blocks (the allocator's books check them)."""
        raise NotImplementedError


class LRU(EvictionPolicy):
    """Least recently released first (vLLM). The block manager frees a table tail first, so a prefix
    outlives the tails that extended it, which makes this close to leaf eviction in most runs."""

    name = "lru"

    def __init__(self) -> None:
        self.order: OrderedDict[int, None] = OrderedDict()  # first = least recently released

    def __len__(self) -> int:
        return len(self.order)

    def park(self, block: int, cache: PrefixCache) -> None:
        self.order[block] = None

    def remove(self, block: int) -> None:
        del self.order[block]

    def pop(self, cache: PrefixCache) -> int:
        return self.order.popitem(last=False)[0]

    def parked(self):
        return self.order.keys()


class _Heap(EvictionPolicy):
    """Parked blocks in a heap by `_rank`, with entries made stale by a revival skipped lazily."""

    def __init__(self) -> None:
        self.tick = 0
        self.since: dict[int, int] = {}  # parked block -> tick it was parked at
        self.heap: list[tuple] = []

    def __len__(self) -> int:
        return len(self.since)

    def _push(self, block: int, cache: PrefixCache) -> None:
        heapq.heappush(self.heap, (*self._rank(block, cache), self.since[block], block))

    def _rank(self, block: int, cache: PrefixCache) -> tuple:
        raise NotImplementedError

    def park(self, block: int, cache: PrefixCache) -> None:
        self.tick += 1
        self.since[block] = self.tick
        self._push(block, cache)

    def remove(self, block: int) -> None:
        del self.since[block]

    def pop(self, cache: PrefixCache) -> int:
        while self.heap:
            *_, tick, block = heapq.heappop(self.heap)
            if self.since.get(block) == tick:  # still parked since this entry was pushed
                del self.since[block]
                return block
        # Only Radix gets here: every parked block has a cached child that a running sequence holds
        # under a duplicate of the parent (a prompt computed its own copy of a cached block). Then the
        # least recently released goes.
        block = min(self.since, key=self.since.__getitem__)
        del self.since[block]
        return block

    def parked(self):
        return self.since.keys()


class LFU(_Heap):
    """Fewest hits first (counted since the block was cached), ties least recently released."""

    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self.hits: dict[int, int] = {}

    def hit(self, block: int) -> None:
        self.hits[block] = self.hits.get(block, 0) + 1

    def _rank(self, block: int, cache: PrefixCache) -> tuple:
        return (self.hits.get(block, 0),)

    def drop(self, block: int) -> None:
        self.hits.pop(block, None)


class Radix(_Heap):
    """Least recently released leaf first: a parked block with a cached child waits in `since` until
    its last child is dropped (`leaf`). A parked block's children are all parked too (a sequence that
    holds a block holds every block before it), so some parked block is always a leaf. Matching is
    token-level (`partial_match`)."""

    name = "radix"
    partial_match = True

    def _rank(self, block: int, cache: PrefixCache) -> tuple:
        return ()

    def _push(self, block: int, cache: PrefixCache) -> None:
        if not cache.children.get(cache.block_hash[block]):
            super()._push(block, cache)

    def leaf(self, block: int, cache: PrefixCache) -> None:
        if block in self.since:
            heapq.heappush(self.heap, (self.since[block], block))

    def pop(self, cache: PrefixCache) -> int:
        # A block pushed as a leaf may have gained a cached child since (a sequence holding its own
        # copy of it published the next block): skip it; `leaf` pushes it again when that child goes.
        while self.heap:
            tick, block = self.heap[0]
            if self.since.get(block) == tick and cache.children.get(cache.block_hash[block]):
                heapq.heappop(self.heap)
                continue
            break
        return super().pop(cache)


EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {}


def register_eviction(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
    """Make an eviction policy selectable by its name (CacheConfig.prefix_eviction)."""
    EVICTION_POLICIES[cls.name] = cls
    return cls


for _cls in (LRU, LFU, Radix):
    register_eviction(_cls)


class PrefixCache:
    """hash -> block id, the tree the chained hashes make, the parked blocks and the hit counts."""

    def __init__(self, eviction: str = "lru") -> None:
        self.hash_to_block: dict[int, int] = {}
        self.block_hash: dict[int, int] = {}
        # The tokens of each cached block, compared on every hit: a hash collision must not return
        # another prefix's KV.
        self.block_tokens: dict[int, tuple[int, ...]] = {}
        self.parent_hash: dict[int, int] = {}  # cached block -> hash of the block before it
        # hash -> the cached blocks continuing it, in insertion order (token-level matching reads them)
        self.children: dict[int, dict[int, None]] = {}
        self.policy = EVICTION_POLICIES[eviction]()
        # Called with (block, hash, tokens) just before an evicted block is forgotten (the host tier).
        self.on_evict = None
        # Counted at admission (BlockManager.allocate): full prompt blocks that could have been hits,
        # those that were, the prompt tokens the hits (whole or partial blocks) saved, and the
        # evictions.
        self.num_queried_blocks = 0
        self.num_hit_blocks = 0
        self.num_hit_tokens = 0
        self.num_evictions = 0

    @property
    def num_evictable(self) -> int:
        return len(self.policy)

    @property
    def evictable(self):
        return self.policy.parked()

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        block = self.hash_to_block.get(block_hash)
        if block is None or self.block_tokens[block] != token_ids:
            return None
        return block

    def insert(self, block: int, block_hash: int, token_ids: tuple[int, ...], parent_hash: int) -> bool:
        """Publish a full block; False if the same content is already cached in another block (the
        older entry is kept: both blocks stay valid, only one is findable)."""
        if block_hash in self.hash_to_block or block in self.block_hash:
            return False
        self.hash_to_block[block_hash] = block
        self.block_hash[block] = block_hash
        self.block_tokens[block] = token_ids
        self.parent_hash[block] = parent_hash
        self.children.setdefault(parent_hash, {})[block] = None
        return True

    def longest_partial(self, parent_hash: int, token_ids: tuple[int, ...], usable) -> tuple[int, int]:
        """(block, n): the cached child of `parent_hash` whose first n tokens equal token_ids' first n,
        n largest (the earliest cached among equals), among those `usable(block)` accepts; n = 0 if
        none shares a token (token-level matching, SGLang's radix tree)."""
        best, best_n = -1, 0
        for block in self.children.get(parent_hash, ()):
            tokens = self.block_tokens[block]
            n = 0
            for a, b in zip(tokens, token_ids):
                if a != b:
                    break
                n += 1
            if n > best_n and usable(block):
                best, best_n = block, n
        return best, best_n

    def is_cached(self, block: int) -> bool:
        return block in self.block_hash

    def park(self, block: int) -> None:
        """A cached block lost its last reference: keep it for reuse."""
        self.policy.park(block, self)

    def revive(self, block: int) -> None:
        """A hit on an evictable block takes it out of the evictable set."""
        self.policy.remove(block)

    def hit(self, block: int) -> None:
        self.policy.hit(block)

    def evict(self) -> int:
        """Drop the policy's choice of evictable block from the cache and return it for reuse."""
        block = self.policy.pop(self)
        if self.on_evict is not None:
            self.on_evict(block, self.block_hash[block], self.block_tokens[block])
        self.forget(block)
        self.num_evictions += 1
        return block

    def forget(self, block: int) -> None:
        """Drop a cached block's entry (it stays allocated; a later free returns it to the free list)."""
        # Removing the mapping on reuse is what keeps a recycled block from being found under its old
        # content (nano-vllm issue 163).
        block_hash = self.block_hash.pop(block)
        del self.hash_to_block[block_hash]
        del self.block_tokens[block]
        self.policy.drop(block)
        parent = self.parent_hash.pop(block)
        siblings = self.children[parent]
        del siblings[block]
        if not siblings:
            del self.children[parent]
            parent_block = self.hash_to_block.get(parent)
            if parent_block is not None:
                self.policy.leaf(parent_block, self)
