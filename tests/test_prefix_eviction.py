"""Prefix-cache eviction policies (paged/prefix_cache.py): which parked block goes first under LRU,
LFU and radix (leaf) eviction, and the hit statistics. The shared property tests
(tests/test_properties.py) run every registered policy on random workloads against the shadow KV
store: no referenced block is evicted, and a hit maps the KV of exactly its tokens."""

from __future__ import annotations

import pytest

from paged import CacheConfig
from paged.prefix_cache import EVICTION_POLICIES, ROOT_HASH, PrefixCache, chain_hash
from tests.conftest import make_group, make_manager


def chain(cache, blocks, tokens):
    """Publish blocks as one chain (block i continues block i - 1); returns their hashes."""
    parent, hashes = ROOT_HASH, []
    for b, t in zip(blocks, tokens):
        h = chain_hash(parent, (t,))
        cache.insert(b, h, (t,), parent)
        hashes.append(h)
        parent = h
    return hashes


@pytest.mark.parametrize("name", sorted(EVICTION_POLICIES))
def test_every_policy_evicts_only_parked_blocks_and_each_once(name):
    cache = PrefixCache(name)
    chain(cache, [0, 1, 2], [5, 6, 7])
    chain(cache, [3, 4], [8, 9])
    for b in (2, 1, 0, 4, 3):  # tails first, as BlockManager.free releases a table
        cache.park(b)
    cache.revive(1)
    evicted = [cache.evict() for _ in range(4)]
    assert sorted(evicted) == [0, 2, 3, 4] and cache.num_evictable == 0 and cache.num_evictions == 4
    assert cache.is_cached(1) and not cache.is_cached(2)


def test_lru_evicts_the_least_recently_released():
    cache = PrefixCache("lru")
    chain(cache, [0], [1])
    chain(cache, [1], [2])
    cache.park(1)
    cache.park(0)
    assert cache.evict() == 1


def test_lfu_keeps_the_block_hit_most():
    cache = PrefixCache("lfu")
    chain(cache, [0], [1])
    chain(cache, [1], [2])
    cache.hit(0)
    cache.hit(0)
    cache.hit(1)
    cache.park(0)  # released first, but hit twice
    cache.park(1)
    assert cache.evict() == 1


def test_radix_never_evicts_a_prefix_before_the_blocks_that_continue_it():
    """Block 0 released before its child 1 (an order a duplicate prefix block can cause): LRU would
    evict the prefix and leave 1 cached but unreachable; radix evicts the leaf first."""
    for name, first in (("lru", 0), ("radix", 1)):
        cache = PrefixCache(name)
        chain(cache, [0, 1], [1, 2])
        cache.park(0)
        cache.park(1)
        assert cache.evict() == first, name
    cache = PrefixCache("radix")
    chain(cache, [0, 1, 2], [1, 2, 3])
    for b in (0, 1, 2):
        cache.park(b)
    assert [cache.evict() for _ in range(3)] == [2, 1, 0]  # each parent becomes a leaf in turn


def test_admissions_count_queried_and_hit_blocks():
    m = make_manager(num_gpu_blocks=16, block_size=4, caching=True)
    a = make_group("a", range(13))  # 3 full blocks a hit could serve (the 4th holds the last token)
    from tests.test_block_manager import admit, free_computed

    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group("b", list(range(8)) + [99, 98, 97])  # shares a's first 2 blocks
    admit(m, b)
    cache = m.prefix_cache
    assert (cache.num_queried_blocks, cache.num_hit_blocks) == (3 + 2, 2)


def test_an_unknown_eviction_policy_names_the_choices():
    with pytest.raises(ValueError, match="lfu, lru, radix|lru, lfu, radix"):
        CacheConfig(num_gpu_blocks=4, enable_prefix_caching=True, prefix_eviction="fifo")
