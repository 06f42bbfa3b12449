"""Hand-worked cases of the paged block manager (paper sections 4.2-4.4)."""

from __future__ import annotations

from paged import AllocStatus, SequenceStatus, SharedPrefix
from paged.prefix_cache import ROOT_HASH, chain_hash
from tests.conftest import make_group, make_manager

manager = make_manager


def admit(m, group):
    plan = m.can_allocate(group)
    assert plan.status is AllocStatus.OK, plan
    copies = m.allocate(group, plan)
    for s in group.seqs:
        s.status = SequenceStatus.RUNNING
    return plan, copies


def free_computed(m, seq):
    """Free a sequence whose prompt step ran (its KV written): a prompt stopped before it has
    nothing in its blocks, and they are not kept in the prefix cache (chunked prefill)."""
    seq.num_computed_tokens = len(seq.token_ids)
    m.free(seq)


def finish_step(group, token=7):
    """What post-processing does: the scheduled tokens are computed, one token is appended."""
    for s in group.seqs:
        s.num_computed_tokens = len(s.token_ids)
        s.token_ids.append(token + s.seq_id)


def test_new_block_only_when_the_last_is_full():
    m = manager(block_size=4)
    g = make_group(0, range(6))  # blocks: 4 + 2 filled
    admit(m, g)
    seq = g.seqs[0]
    assert len(m.get_block_table(seq)) == 2
    finish_step(g)  # 7 tokens: fits the second block
    assert m.append_slot(seq) is None and len(m.get_block_table(seq)) == 2
    finish_step(g)  # 8 tokens
    m.append_slot(seq)
    assert len(m.get_block_table(seq)) == 2
    finish_step(g)  # 9 tokens: needs a third block
    m.append_slot(seq)
    assert len(m.get_block_table(seq)) == 3
    assert m.get_block_fills(seq) == [4, 4, 0]  # the 9th token's KV is computed in the next step
    m.free(seq)
    assert m.gpu.num_free == 16


def test_parallel_samples_share_the_prompt_and_copy_on_write_the_last_block():
    # Paper Figure 8: two samples share the prompt; the first write into the shared, partially
    # filled last block copies it, the second finds the count back at 1 and writes in place.
    m = manager(block_size=4)
    g = make_group(0, range(7), n=2)
    plan, copies = admit(m, g)
    assert plan.num_new_tokens == 7  # the prompt is computed once for both samples
    a, b = g.seqs
    assert m.get_block_table(a) == m.get_block_table(b)
    assert [m.gpu.ref_counts[x] for x in m.get_block_table(a)] == [2, 2]
    assert a.num_computed_tokens == 0 and b.num_computed_tokens == 7  # b reads a's prompt
    finish_step(g)
    last = m.get_block_table(a)[-1]
    copy = m.append_slot(a)
    assert copy is not None and copy[0] == last
    assert m.gpu.ref_counts[last] == 1 and m.gpu.ref_counts[copy[1]] == 1
    assert m.append_slot(b) is None  # b is the sole owner now
    assert m.get_block_table(a)[0] == m.get_block_table(b)[0]  # the full block stays shared
    assert m.gpu.num_used == 3


def test_prompt_ending_on_a_block_boundary_needs_no_copy():
    m = manager(block_size=4)
    g = make_group(0, range(8), n=3)
    admit(m, g)
    finish_step(g)
    assert [m.append_slot(s) for s in g.seqs] == [None, None, None]
    assert m.gpu.num_used == 2 + 3


def test_fork_shares_every_block():
    m = manager()
    g = make_group(0, range(6))
    admit(m, g)
    parent = g.seqs[0]
    child = parent.fork(999)
    m.fork(parent, child)
    assert m.get_block_table(child) == m.get_block_table(parent)
    assert all(m.gpu.ref_counts[b] == 2 for b in m.get_block_table(parent))
    m.free(parent)
    assert all(m.gpu.ref_counts[b] == 1 for b in m.get_block_table(child))


def test_swap_out_and_in_restore_tables_and_sharing():
    m = manager(block_size=4)
    g = make_group(0, range(10), n=2)
    admit(m, g)
    finish_step(g)
    for s in g.seqs:
        m.append_slot(s)
    before = {s.seq_id: list(m.get_block_table(s)) for s in g.seqs}
    assert m.can_swap_out(g)
    out_map = m.swap_out(g)
    assert len(out_map) == 4  # 2 shared + 2 own last blocks, each copied once
    assert m.gpu.num_free == 16 and m.cpu.num_used == 4
    for s in g.seqs:
        s.status = SequenceStatus.SWAPPED
        assert m.get_block_table(s) == [out_map[b] for b in before[s.seq_id]]
    in_map = m.swap_in(g)
    for s in g.seqs:
        table = m.get_block_table(s)
        assert table == [in_map[out_map[b]] for b in before[s.seq_id]]
    shared = m.get_block_table(g.seqs[0])[0]
    assert m.gpu.ref_counts[shared] == 2  # still shared after the round trip
    assert m.cpu.num_free == 16


def test_can_allocate_ok_later_never_with_watermark():
    m = manager(num_gpu_blocks=10, block_size=4, watermark=0.2)  # 2 watermark blocks
    assert m.can_allocate(make_group(0, range(12), max_tokens=20)).status is AllocStatus.OK
    never = m.can_allocate(make_group(1, range(20), max_tokens=20))  # 10 blocks > 8 usable
    assert never.status is AllocStatus.NEVER and "usable blocks" in never.reason
    admit(m, make_group(2, range(24), max_tokens=4))  # 6 blocks, 4 free
    # 3 more blocks would leave 1 < 2 watermark blocks: wait.
    assert m.can_allocate(make_group(3, range(12), max_tokens=4)).status is AllocStatus.LATER
    assert m.can_allocate(make_group(4, range(8), max_tokens=4)).status is AllocStatus.OK


def test_lifetime_counts_each_samples_own_blocks():
    m = manager(num_gpu_blocks=10, block_size=4)
    # prompt 8 (2 shared blocks); each of 3 samples stores KV for up to 8+12-1=19 tokens: 3 own blocks.
    assert m._lifetime_blocks(make_group(0, range(8), max_tokens=12, n=3)) == 2 + 3 * 3
    assert m.can_allocate(make_group(0, range(8), max_tokens=12, n=3)).status is AllocStatus.NEVER


# ---------------------------------------------------------------- automatic prefix caching
def test_prefix_cache_hit_reuses_full_blocks_of_a_finished_request():
    m = manager(block_size=4, caching=True)
    first = make_group(0, range(10))
    admit(m, first)
    first_table = list(m.get_block_table(first.seqs[0]))
    free_computed(m, first.seqs[0])
    assert m.gpu.num_free == 16  # cached blocks are free (evictable)
    second = make_group(1, list(range(8)) + [50, 51, 52])
    plan, _ = admit(m, second)
    assert second.seqs[0].num_computed_tokens == 8
    assert plan.num_new_tokens == 3
    assert m.get_block_table(second.seqs[0])[:2] == first_table[:2]


def test_full_hit_still_computes_the_last_token():
    # A prompt entirely in the cache must still produce logits: the last block is recomputed
    # (nano-vllm issue 144).
    m = manager(block_size=4, caching=True)
    a = make_group(0, range(8))
    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group(1, range(8))
    plan, _ = admit(m, b)
    assert b.seqs[0].num_computed_tokens == 4 and plan.num_new_tokens == 4
    table_a_first = m.prefix_cache.lookup(chain_hash(ROOT_HASH, (0, 1, 2, 3)), (0, 1, 2, 3))
    assert m.get_block_table(b.seqs[0])[0] == table_a_first


def test_identical_prompts_admitted_in_one_step_share_blocks():
    # nano-vllm issue 219: both missed and duplicated. Blocks are published at allocation, so the
    # second prompt of the same step finds the first's.
    m = manager(block_size=4, caching=True)
    a, b = make_group(0, range(13)), make_group(1, range(13))
    admit(m, a)
    plan, _ = admit(m, b)
    assert m.get_block_table(b.seqs[0])[:3] == m.get_block_table(a.seqs[0])[:3]
    assert plan.num_new_tokens == 1
    assert m.gpu.num_used == 4 + 1


def test_reused_block_is_not_found_under_its_old_content():
    # nano-vllm issue 163: evicting a cached block must drop its hash entry.
    m = manager(num_gpu_blocks=4, block_size=4, caching=True)
    a = make_group(0, range(16), max_tokens=1)
    admit(m, a)
    free_computed(m, a.seqs[0])
    assert m.prefix_cache.num_evictable == 4
    b = make_group(1, [9] * 16, max_tokens=1)  # evicts all of a's blocks
    admit(m, b)
    assert m.prefix_cache.lookup(chain_hash(ROOT_HASH, (0, 1, 2, 3)), (0, 1, 2, 3)) is None
    free_computed(m, b.seqs[0])
    c = make_group(2, range(16), max_tokens=1)
    plan, _ = admit(m, c)
    assert c.seqs[0].num_computed_tokens == 0 and plan.num_new_tokens == 16


def test_eviction_is_lru_and_tails_go_first():
    m = manager(num_gpu_blocks=6, block_size=4, caching=True)
    a = make_group(0, range(12), max_tokens=1)  # 3 blocks
    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group(1, [7] * 4 + [8], max_tokens=1)  # 2 new blocks: from the free list
    admit(m, b)
    assert m.prefix_cache.num_evictable == 3
    c = make_group(2, [5] * 5, max_tokens=1)  # 2 blocks: 1 free + evicts a's tail block
    admit(m, c)
    hit = m.prefix_cache.lookup
    h0 = chain_hash(ROOT_HASH, (0, 1, 2, 3))
    h1 = chain_hash(h0, (4, 5, 6, 7))
    h2 = chain_hash(h1, (8, 9, 10, 11))
    assert hit(h0, (0, 1, 2, 3)) is not None and hit(h1, (4, 5, 6, 7)) is not None
    assert hit(h2, (8, 9, 10, 11)) is None


def test_hash_collision_is_not_a_hit():
    m = manager(block_size=4, caching=True)
    a = make_group(0, range(8))
    admit(m, a)
    h0 = chain_hash(ROOT_HASH, (0, 1, 2, 3))
    assert m.prefix_cache.lookup(h0, (0, 1, 2, 99)) is None


# ---------------------------------------------------------------- explicit shared prefixes
def test_shared_prefix_computed_once_and_last_block_copied():
    m = manager(block_size=4)
    prefix = SharedPrefix("sys", list(range(10)))  # 2 full blocks + 2 tokens
    a = make_group(0, list(range(10)) + [20, 21], prefix=prefix)
    plan_a, copies_a = admit(m, a)
    assert plan_a.num_new_tokens == 12 and copies_a == []  # the first request computes it
    assert prefix.block_ids == m.get_block_table(a.seqs[0])[:3]
    m.mark_computed(a)
    b = make_group(1, list(range(10)) + [30, 31, 32], prefix=prefix)
    plan_b, copies_b = admit(m, b)
    table_b = m.get_block_table(b.seqs[0])
    assert table_b[:2] == prefix.block_ids[:2]  # full blocks mapped
    assert copies_b == [(prefix.block_ids[2], table_b[2])]  # partial block copied
    assert b.seqs[0].num_computed_tokens == 10 and plan_b.num_new_tokens == 3
    m.free(a.seqs[0])
    m.free(b.seqs[0])
    assert m.gpu.num_used == 3  # the prefix keeps its blocks
    m.release_prefix(prefix)
    assert m.gpu.num_used == 0


def test_prompt_not_starting_with_its_prefix_is_rejected():
    m = manager()
    prefix = SharedPrefix("sys", [1, 2, 3])
    plan = m.can_allocate(make_group(0, [1, 2, 4, 5], prefix=prefix))
    assert plan.status is AllocStatus.NEVER and "shared prefix" in plan.reason


# ---------------------------------------------------------------- accounting
def test_usage_counts_shared_slots_once_and_sums_to_total():
    m = manager(block_size=4)
    g = make_group(0, range(6), n=2, max_tokens=3)  # grows to 9 tokens, 8 with KV
    admit(m, g)
    finish_step(g)  # 6 tokens computed, shared
    u = m.usage([g])
    u.check()
    assert u.token_states == 6
    # The shared last block has 2 empty slots; the sequences will fill both of them.
    assert u.reservation == 2 and u.internal_fragmentation == 0
    assert u.logical_blocks == 4 and u.physical_blocks == 2 and u.sharing_saving == 0.5
    assert u.free == 14 * 4


# ---------------------------------------------------------------- placements (admission decisions)
def test_placement_of_parallel_samples_names_new_blocks_once():
    from paged.block_manager import NewBlock

    m = manager(block_size=4)
    g = make_group(0, range(7), n=2)
    placement = m.can_allocate(g).detail
    # Both samples hold the same two new blocks; the second reads the first's prompt.
    assert placement.tables == [[NewBlock(0), NewBlock(1)], [NewBlock(0), NewBlock(1)]]
    assert placement.num_new_blocks == 2 and placement.copies == []
    assert placement.num_computed == [0, 7]
    assert placement.existing_blocks() == []


def test_a_single_sequence_sharing_nothing_gets_new_blocks_in_order():
    m = manager(block_size=4)
    g = make_group(0, range(9))
    plan = m.can_allocate(g)
    assert plan.detail is None and plan.num_new_tokens == 9  # no placement to compute
    assert m.allocate(g, plan) == []
    assert m.get_block_table(g.seqs[0]) == [0, 1, 2] and g.seqs[0].num_computed_tokens == 0


def test_placement_maps_prefix_blocks_and_copies_its_partial_block():
    from paged.block_manager import NewBlock

    m = manager(block_size=4)
    prefix = SharedPrefix("sys", list(range(10)))
    a = make_group(0, list(range(10)) + [20], prefix=prefix)
    admit(m, a)
    m.mark_computed(a)
    b = make_group(1, list(range(10)) + [30, 31, 32, 33, 34], prefix=prefix)
    placement = m.can_allocate(b).detail
    p0, p1, p2 = prefix.block_ids
    assert placement.tables == [[p0, p1, NewBlock(0), NewBlock(1)]]
    assert placement.copies == [(p2, NewBlock(0))]
    assert placement.num_computed == [10]
    assert placement.existing_blocks() == [p0, p1]


def test_placement_takes_cache_hits_as_existing_blocks():
    from paged.block_manager import NewBlock

    m = manager(block_size=4, caching=True)
    a = make_group(0, range(10))
    admit(m, a)
    table_a = list(m.get_block_table(a.seqs[0]))
    free_computed(m, a.seqs[0])
    placement = m.can_allocate(make_group(1, list(range(8)) + [50])).detail
    assert placement.tables == [[table_a[0], table_a[1], NewBlock(0)]]
    assert placement.num_computed == [8]


# ---------------------------------------------------------------- shared-prefix rules in one place
def test_shared_prefixes_answer_admission_swap_accounting_and_release():
    m = manager(block_size=4)
    sp = m.shared_prefixes
    prefix = SharedPrefix("sys", list(range(10)))  # 2 full blocks + a 2-token tail
    other = SharedPrefix("other", list(range(8)))  # 2 full blocks
    a = make_group(0, list(range(10)) + [20], prefix=prefix)
    assert sp.offer(a) is None  # not resident: the first request computes it
    assert sp.reject_reason(make_group(9, [1, 2], prefix=prefix)) is not None
    admit(m, a)
    assert m.prefixes == [prefix] and sp.resident is m.prefixes
    offer = sp.offer(a)
    assert offer.full_blocks == prefix.block_ids[:2] and offer.length == 10
    assert offer.partial_block is None  # not computed yet: nothing to copy from
    assert sp.restorable_blocks(a) == []
    m.mark_computed(a)
    assert sp.offer(a).partial_block == prefix.block_ids[2]
    assert sp.restorable_blocks(a) == prefix.block_ids[:2]
    # Its own prefix pins only the partial block the group copies; another prefix pins every block.
    assert sp.num_pinned_blocks(a) == 1
    c = make_group(2, list(range(8)) + [5], prefix=other)
    admit(m, c)
    assert sp.num_pinned_blocks(a) == 1 + 2 and sp.num_pinned_blocks(c) == 3
    # The partial last block counts in accounting once no sequence holds it.
    assert sp.unshared_tails() == []
    m.free(a.seqs[0])
    assert sp.unshared_tails() == [(prefix.block_ids[2], 2)]
    used = m.gpu.num_used
    m.release_prefix(prefix)
    assert m.prefixes == [other] and prefix.block_ids is None and not prefix.computed
    assert m.gpu.num_used == used - 3
    m.release_prefix(prefix)  # releasing twice is harmless
    assert m.prefixes == [other]


def test_swap_in_maps_the_prefix_full_blocks_back_instead_of_copying():
    m = manager(block_size=4)
    prefix = SharedPrefix("sys", list(range(10)))
    a = make_group(0, list(range(10)) + [20], prefix=prefix)
    admit(m, a)
    m.mark_computed(a)
    b = make_group(1, list(range(10)) + [30, 31], prefix=prefix)
    admit(m, b)
    finish_step(b)
    m.append_slot(b.seqs[0])
    before = list(m.get_block_table(b.seqs[0]))
    out_map = m.swap_out(b)
    assert len(out_map) == 4  # the prefix's two full blocks and the request's own two
    b.seqs[0].status = SequenceStatus.SWAPPED
    assert m.can_swap_in(b)
    in_map = m.swap_in(b)
    assert len(in_map) == 2  # only the request's own blocks come back by copy
    table = m.get_block_table(b.seqs[0])
    assert table[:2] == prefix.block_ids[:2] == before[:2]
    assert table[2:] == [in_map[out_map[x]] for x in before[2:]]
    assert m.cpu.num_used == 0


def test_memory_usage_is_importable_from_every_old_place():
    import paged
    import paged.accounting
    import paged.memory

    assert paged.MemoryUsage is paged.memory.MemoryUsage is paged.accounting.MemoryUsage
