"""A shadow KV store that checks the memory manager from the outside.

`ShadowExecutor` plays the executor's part on fake KV: the "KV" of token position p of a sequence is
the tuple of its tokens[: p + 1] (real keys and values depend on exactly that). It applies the step's
swaps and copies to its own device and host stores, writes every computed position into the slot the
block table names, and afterwards `check_contents` proves every running or swapped sequence reads
back its own history: this is what catches a missing copy-on-write, a wrong swap map or a stale
prefix-cache hit. `check_invariants` checks the allocator's books.
"""

from __future__ import annotations

from paged import BlockManager, NullExecutor, SchedulerOutput, SequenceStatus


class ShadowExecutor(NullExecutor):
    def __init__(self, manager: BlockManager, check_before_forward: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.manager = manager
        # Check the histories of the step's sequences once its block operations are applied, just
        # before the forward pass reads them (a contiguous baseline's fork copy lands only then).
        self.check_before_forward = check_before_forward
        self.device: dict[tuple[int, int], tuple] = {}  # (block, offset) -> kv
        self.host: dict[tuple[int, int], tuple] = {}
        self.num_writes_into_shared = 0

    def _move_blocks(self, mapping, src_store, dst_store):
        bs = self.manager.block_size
        for src, dst in mapping:
            for off in range(bs):
                if (src, off) in src_store:
                    dst_store[(dst, off)] = src_store[(src, off)]
                else:
                    dst_store.pop((dst, off), None)

    def execute(self, out: SchedulerOutput):
        m = self.manager
        bs = m.block_size
        self._move_blocks(out.blocks_to_swap_out, self.device, self.host)
        self._move_blocks(out.blocks_to_swap_in, self.host, self.device)
        paged = isinstance(m, BlockManager)
        holders = self._holders() if paged else {}
        batch = {s.seq_id for g in out.scheduled_groups for s in g.seqs}
        for src, dst in out.blocks_to_copy:
            # A decode copy-on-write target is private; a prompt-time copy (a shared prefix's last
            # block) may be shared by the siblings being admitted with it.
            if paged and out.is_prefill:
                assert set(holders[dst]) <= batch, "copy target already has readers"
            elif paged:
                assert m.gpu.ref_counts[dst] == 1, "copy-on-write target must be private"
            self._move_blocks([(src, dst)], self.device, self.device)
        if self.check_before_forward:
            check_contents(m, self, out.scheduled_groups)
        writers = {}
        for group in out.scheduled_groups:
            for seq in group.seqs:
                if seq.status is not SequenceStatus.RUNNING:
                    continue
                table = m.get_block_table(seq)
                assert len(table) * bs >= len(seq.token_ids), "no slot for the newest token"
                start, end = out.compute_range(seq)  # a chunk of its prompt, under chunked prefill
                assert start == seq.num_computed_tokens
                for p in range(start, end):
                    block = table[p // bs]
                    writers.setdefault(block, set()).add(seq.seq_id)
                    self.device[(block, p % bs)] = tuple(seq.token_ids[: p + 1])
        for block in writers if paged else ():
            if m.gpu.ref_counts[block] > 1:
                # Only a prompt step may fill a shared block, and only one that every holder is
                # filling in this same step (siblings admitted together, identical prompts, a shared
                # prefix computed by its first request): nobody has read it yet.
                assert out.is_prefill, f"decode wrote into block {block} with count > 1"
                assert set(holders[block]) <= batch, f"block {block} rewritten under a reader"
                self.num_writes_into_shared += 1
        return super().execute(out)

    def _holders(self):
        holders: dict[int, list[int]] = {}
        for seq_id, table in self.manager.block_tables.items():
            if seq_id in self.manager.swapped_seq_ids:
                continue
            for b in table:
                holders.setdefault(b, []).append(seq_id)
        return holders


def check_contents(manager: BlockManager, executor: ShadowExecutor, groups) -> None:
    """Every computed position of every live sequence reads back its own history."""
    bs = manager.block_size
    for group in groups:
        for seq in group.seqs:
            if seq.status not in (SequenceStatus.RUNNING, SequenceStatus.SWAPPED):
                continue
            table = manager.get_block_table(seq)
            store = executor.host if seq.status is SequenceStatus.SWAPPED else executor.device
            for p in range(seq.num_computed_tokens):
                got = store.get((table[p // bs], p % bs))
                assert got == tuple(seq.token_ids[: p + 1]), (
                    f"seq {seq.seq_id} position {p}: cache holds another sequence's KV"
                )


def check_parked_blocks(manager: BlockManager, executor: ShadowExecutor) -> None:
    """Every cached block that nobody holds (parked, evictable, findable by a hit) holds the KV of
    exactly its tokens: a hit on it must read what computing them would write."""
    cache = manager.prefix_cache
    if cache is None:
        return
    bs = manager.block_size
    for block in cache.evictable:
        tokens = cache.block_tokens[block]
        for off in range(bs):
            kv = executor.device.get((block, off))
            assert kv is not None and kv[-1] == tokens[off], (
                f"parked cached block {block} slot {off} holds another sequence's KV or none"
            )


def check_invariants(manager: BlockManager) -> None:
    """free + used = total on both pools; every count equals the table entries (and prefixes)
    holding the block; free and parked blocks are unreferenced and listed once."""
    for pool, on_host in ((manager.gpu, False), (manager.cpu, True)):
        expected = [0] * pool.num_blocks
        for seq_id, table in manager.block_tables.items():
            if (seq_id in manager.swapped_seq_ids) == on_host:
                for b in table:
                    expected[b] += 1
        if not on_host:
            for prefix in manager.prefixes:
                for b in prefix.block_ids:
                    expected[b] += 1
            for b in manager.copy_pins:  # copy sources of a step scheduled but not yet run
                expected[b] += 1
        assert pool.ref_counts == expected, "reference counts differ from the block tables"
        free = list(pool.free_ids)
        parked = list(pool.prefix_cache.evictable) if pool.prefix_cache is not None else []
        assert len(set(free + parked)) == len(free) + len(parked), "a block is free twice"
        assert all(expected[b] == 0 for b in free + parked), "a referenced block is free"
        used = sum(1 for c in expected if c > 0)
        assert used + pool.num_free == pool.num_blocks, "free + used != total"
        if pool.prefix_cache is not None:
            cache = pool.prefix_cache
            assert all(cache.hash_to_block[h] == b for b, h in cache.block_hash.items())
            assert len(cache.hash_to_block) == len(cache.block_hash)
            children: dict[int, set[int]] = {}
            for block, parent in cache.parent_hash.items():
                children.setdefault(parent, set()).add(block)
            assert children == {h: set(c) for h, c in cache.children.items()}, "the cache's tree lost a child"
            assert set(cache.parent_hash) == set(cache.block_hash)


def brute_force_usage(manager: BlockManager, groups) -> tuple[int, int, int]:
    """(token states, reservation, internal fragmentation) in slots, block by block over every table:
    an independent count to hold `BlockManager.usage` against."""
    bs = manager.block_size
    filled: dict[int, int] = {}
    future: dict[int, int] = {}

    def note(block, f, u):
        filled[block] = max(filled.get(block, 0), f)
        future[block] = max(future.get(block, 0), u)

    for group in groups:
        max_kv = min(group.max_seq_len, manager.max_model_len) - 1
        for seq in group.seqs:
            if seq.status is not SequenceStatus.RUNNING:
                continue
            for i, block in enumerate(manager.block_tables[seq.seq_id]):
                f = min(max(seq.num_computed_tokens - i * bs, 0), bs)
                note(block, f, min(max(max_kv - i * bs, f), bs))
    for prefix in manager.prefixes:
        for i, block in enumerate(prefix.block_ids):
            f = min(max(len(prefix) - i * bs, 0), bs)
            note(block, f, f)
    for block in manager.copy_pins:  # a cached (full) copy source held until its step ran
        note(block, bs, bs)
    used = [b for b, c in enumerate(manager.gpu.ref_counts) if c > 0]
    assert sorted(filled) == used, "a used block is held by no running sequence or prefix"
    token_states = sum(filled.values())
    reservation = sum(future[b] - filled[b] for b in used)
    internal = sum(bs - future[b] for b in used)
    return token_states, reservation, internal
