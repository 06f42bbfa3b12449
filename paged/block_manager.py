"""The paged KV-cache manager of the paper (section 4.2-4.5): block tables over two block pools.

Each sequence has a block table: logical block i -> physical block id; a block's filled slots follow
from the sequence's length (every block but the last is full). Blocks are shared by reference count:
the n sequences of a request share the prompt's blocks, forked beams share their history, requests
share an explicit prefix or automatically cached full blocks. A write into a block whose count is
above one first copies it (copy-on-write, section 4.4).
"""

from __future__ import annotations

from dataclasses import dataclass

from paged.block import BlockAllocator
from paged.config import CacheConfig
from paged.memory import AllocPlan, AllocStatus, MemoryUsage
from paged.prefix_cache import ROOT_HASH, PrefixCache, chain_hash
from paged.sequence import Sequence, SequenceGroup, SequenceStatus, SharedPrefix


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _Placement:
    """Where each block of each waiting sequence comes from, decided by `can_allocate`.

    A table entry e >= 0 is an existing physical block (a cache hit or a shared-prefix block); e < 0
    is the (~e)-th block to allocate. Equal entries within the group are one shared block.
    """

    tables: list[list[int]]
    num_computed: list[int]
    full_hashes: list[list[int]]  # chained hash of each full block of each sequence
    num_new_blocks: int
    copies: list[tuple[int, int]]  # (source block, index of the new block it is copied into)


class BlockManager:
    """Block tables, reference counts, copy-on-write, swapping and prefix sharing.

    Implements `paged.memory.KVCacheManager`. Block ids in swap maps are device ids on one side and
    host ids on the other.
    """

    def __init__(self, cache_config: CacheConfig, max_model_len: int | None = None) -> None:
        self.config = cache_config
        self.block_size = cache_config.block_size
        self.num_gpu_blocks = cache_config.num_gpu_blocks
        self.num_total_slots = cache_config.num_gpu_slots
        self.watermark_blocks = cache_config.watermark_blocks
        self.max_model_len = max_model_len
        self.prefix_cache = PrefixCache() if cache_config.enable_prefix_caching else None
        self.gpu = BlockAllocator(cache_config.num_gpu_blocks, self.prefix_cache)
        self.cpu = BlockAllocator(cache_config.num_cpu_blocks)
        self.block_tables: dict[int, list[int]] = {}
        self.swapped_seq_ids: set[int] = set()  # sequences whose table holds host blocks
        # Chained hashes of each sequence's full blocks, kept to extend the chain as it decodes.
        self.seq_block_hashes: dict[int, list[int]] = {}
        self.prefixes: list[SharedPrefix] = []  # resident shared prefixes

    # ------------------------------------------------------------------ admission (prompt phase)
    def _lifetime_blocks(self, group: SequenceGroup) -> int:
        """Device blocks the group holds at its longest: shared full prompt blocks plus each
        sequence's own blocks up to prompt + max_tokens - 1 tokens of KV (the last sampled token
        finishes the sequence before it is stored), capped at max_model_len."""
        max_len = group.max_seq_len
        if self.max_model_len is not None:
            max_len = min(max_len, self.max_model_len)
        max_kv = max(group.num_prompt_tokens, max_len - 1)
        shared = group.num_prompt_tokens // self.block_size
        n = group.sampling_params.n
        return shared + n * (_cdiv(max_kv, self.block_size) - shared)

    def _num_pinned_blocks(self, group: SequenceGroup) -> int:
        """Device blocks shared prefixes hold that this group cannot use as its own: every block of
        the other prefixes, and the partial last block of its own (which it copies)."""
        pinned = 0
        for prefix in self.prefixes:
            if prefix is not group.prefix:
                pinned += len(prefix.block_ids)
            elif len(prefix) % self.block_size:
                pinned += 1
        return pinned

    def can_allocate(self, group: SequenceGroup) -> AllocPlan:
        """OK, LATER (wait for memory, FCFS) or NEVER (reject), with the prompt phase's token cost."""
        usable = self.num_gpu_blocks - self.watermark_blocks
        pinned = self._num_pinned_blocks(group) if self.prefixes else 0
        usable -= pinned
        lifetime = self._lifetime_blocks(group)
        if lifetime > usable:
            held = f" ({pinned} more are held by shared prefixes)" if pinned else ""
            return AllocPlan(
                AllocStatus.NEVER,
                reason=(
                    f"needs {lifetime} KV blocks at its longest (prompt {group.num_prompt_tokens} + "
                    f"max_tokens {group.sampling_params.max_tokens}, n={group.sampling_params.n}, "
                    f"block size {self.block_size}) but the cache has {usable} usable blocks{held}; "
                    "give the KV cache more memory or lower max_tokens / n"
                ),
            )
        prefix = group.prefix
        if prefix is not None and group.prompt_token_ids[: len(prefix)] != prefix.token_ids:
            return AllocPlan(
                AllocStatus.NEVER,
                reason=f"prompt does not start with its shared prefix {prefix.prefix_id!r}",
            )
        seqs = group.get_seqs(SequenceStatus.WAITING)
        if len(seqs) == 1 and prefix is None and self.prefix_cache is None:
            # The common case, kept cheap: one sequence, every block new.
            num_tokens = len(seqs[0].token_ids)
            needed = _cdiv(num_tokens, self.block_size)
            placement = None
        else:
            placement = self._place(group, seqs)
            num_tokens = sum(len(s.token_ids) - c for s, c in zip(seqs, placement.num_computed))
            needed = placement.num_new_blocks + self._num_parked_hits(placement)
        if self.gpu.num_free - needed < self.watermark_blocks:
            return AllocPlan(AllocStatus.LATER, num_new_tokens=num_tokens, detail=placement)
        return AllocPlan(AllocStatus.OK, num_new_tokens=num_tokens, detail=placement)

    def _num_parked_hits(self, placement: _Placement) -> int:
        """Cache hits on blocks nobody references use up a free (evictable) block each."""
        hits = {e for table in placement.tables for e in table if e >= 0}
        return sum(1 for b in hits if self.gpu.ref_counts[b] == 0)

    def _place(self, group: SequenceGroup, seqs: list[Sequence]) -> _Placement:
        """Decide, block by block, what each waiting sequence shares and what it computes.

        A block is shared, in this order of preference: with a sibling of the same group holding the
        same tokens up to and including it (parallel samples share the whole prompt; sequences
        re-admitted after a recompute share their common history); with the group's shared prefix;
        with the prefix cache. Cached and prefix blocks are taken only while they leave at least the
        last token to compute, whose logits the prompt phase must produce (nano-vllm issue 144).
        """
        bs = self.block_size
        cache = self.prefix_cache
        prefix = group.prefix
        prefix_blocks = prefix.block_ids if prefix is not None else None
        prefix_len = len(prefix) if prefix is not None else 0
        by_key: dict[int, int] = {}
        tables, computed, all_hashes, copies = [], [], [], []
        num_new = 0
        for seq in seqs:
            tokens = seq.token_ids
            num_tokens = len(tokens)
            table: list[int] = []
            hashes: list[int] = []
            prev = ROOT_HASH
            num_computed = 0
            leading = True  # every block so far is shared, so this sequence computes nothing yet
            for i in range(_cdiv(num_tokens, bs)):
                start = i * bs
                end = min(start + bs, num_tokens)
                block_tokens = tuple(tokens[start:end])
                full = end - start == bs
                key = chain_hash(prev, block_tokens) if full else hash((prev, block_tokens, -1))
                prev = key
                if full:
                    hashes.append(key)
                entry = by_key.get(key)
                if entry is not None:  # a sibling already placed this very block
                    table.append(entry)
                    if leading:
                        num_computed = end
                    continue
                if leading and prefix_blocks is not None and i < len(prefix_blocks):
                    if end <= prefix_len:
                        if full and end < num_tokens:  # a full block of the prefix
                            entry = prefix_blocks[i]
                            num_computed = end
                    elif prefix.computed and start < prefix_len:
                        # The prefix's partial last block: copy it, then write our own tokens after
                        # the prefix's (copy-on-write, section 4.4).
                        entry = ~num_new
                        copies.append((prefix_blocks[i], num_new))
                        num_new += 1
                        num_computed = prefix_len
                        leading = False
                if entry is None and leading and cache is not None and full and end < num_tokens:
                    hit = cache.lookup(key, block_tokens)
                    if hit is not None:
                        entry = hit
                        num_computed = end
                if entry is None:
                    entry = ~num_new
                    num_new += 1
                    leading = False
                by_key[key] = entry
                table.append(entry)
            tables.append(table)
            computed.append(num_computed)
            all_hashes.append(hashes)
        return _Placement(tables, computed, all_hashes, num_new, copies)

    def allocate(self, group: SequenceGroup, plan: AllocPlan) -> list[tuple[int, int]]:
        """Give the group's waiting sequences their blocks; returns block copies to perform."""
        seqs = group.get_seqs(SequenceStatus.WAITING)
        placement: _Placement | None = plan.detail
        if placement is None:
            allocate = self.gpu.allocate
            seq = seqs[0]
            self.block_tables[seq.seq_id] = [
                allocate() for _ in range(_cdiv(len(seq.token_ids), self.block_size))
            ]
            seq.num_computed_tokens = 0
            return []
        gpu = self.gpu
        # Take the hits first, so allocating new blocks cannot evict a block we are about to use.
        for table in placement.tables:
            for e in table:
                if e >= 0:
                    gpu.take_cached(e)
        new_ids = [gpu.allocate() for _ in range(placement.num_new_blocks)]
        referenced = [False] * placement.num_new_blocks
        for seq, table, num_computed, hashes in zip(
            seqs, placement.tables, placement.num_computed, placement.full_hashes
        ):
            block_table = []
            for e in table:
                if e >= 0:
                    block_table.append(e)
                    continue
                k = ~e
                if referenced[k]:
                    gpu.incref(new_ids[k])
                referenced[k] = True
                block_table.append(new_ids[k])
            self.block_tables[seq.seq_id] = block_table
            seq.num_computed_tokens = num_computed
            if self.prefix_cache is not None:
                # Published now, before the prompt phase writes them, so that an identical prompt
                # admitted in this same step shares them: the executor writes every token's KV of a
                # layer before any attention of that layer reads the cache (ARCHITECTURE.md).
                self.seq_block_hashes[seq.seq_id] = list(hashes)
                bs = self.block_size
                for i, h in enumerate(hashes):
                    self.prefix_cache.insert(block_table[i], h, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
        prefix = group.prefix
        if prefix is not None and prefix.block_ids is None:
            # The first request with this prefix computes it; the prefix keeps its blocks from now on.
            first = self.block_tables[seqs[0].seq_id]
            prefix.block_ids = first[: _cdiv(len(prefix), self.block_size)]
            for b in prefix.block_ids:
                gpu.incref(b)
            prefix.computed = False
            self.prefixes.append(prefix)
        return [(src, new_ids[k]) for src, k in placement.copies]

    def mark_computed(self, group: SequenceGroup) -> None:
        if group.prefix is not None and group.prefix.block_ids is not None:
            group.prefix.computed = True

    def release_prefix(self, prefix: SharedPrefix) -> None:
        """Drop a shared prefix's own references; its blocks live on while requests use them."""
        if prefix.block_ids is None:
            return
        for b in reversed(prefix.block_ids):
            self.gpu.decref(b)
        prefix.block_ids = None
        prefix.computed = False
        self.prefixes.remove(prefix)

    # ------------------------------------------------------------------ decoding
    def _num_slot_blocks(self, seqs: list[Sequence]) -> int:
        """Blocks that appending one token to each sequence takes: a new block where the last one is
        full, a copy where it is shared."""
        bs = self.block_size
        ref_counts = self.gpu.ref_counts
        needed = 0
        for seq in seqs:
            table = self.block_tables[seq.seq_id]
            if len(table) * bs < len(seq.token_ids) or ref_counts[table[-1]] > 1:
                needed += 1
        return needed

    def can_append_slots(self, group: SequenceGroup) -> bool:
        # The exact count. vLLM v0.1 asked for one free block per running sequence whatever it
        # needed; that rule can starve a group that fits the cache exactly (docs/scheduler.md).
        seqs = group.seqs
        if len(seqs) == 1:
            seq = seqs[0]
            table = self.block_tables[seq.seq_id]
            if len(table) * self.block_size >= len(seq.token_ids) and (self.gpu.ref_counts[table[-1]] == 1):
                return True
            return self.gpu.num_free >= 1
        running = [s for s in seqs if s.status is SequenceStatus.RUNNING]
        return self.gpu.num_free >= self._num_slot_blocks(running)

    def append_slot(self, seq: Sequence) -> tuple[int, int] | None:
        """Make room for the newest token (position len(seq) - 1).

        A new block only when the last one is full; copy-on-write when the last block is shared.
        """
        table = self.block_tables[seq.seq_id]
        num_tokens = len(seq.token_ids)
        bs = self.block_size
        copy = None
        if len(table) * bs < num_tokens:
            table.append(self.gpu.allocate())
        else:
            last = table[-1]
            if self.gpu.ref_counts[last] > 1:
                new = self.gpu.allocate()
                self.gpu.decref(last)
                table[-1] = new
                copy = (last, new)
        if self.prefix_cache is not None and num_tokens % bs == 0:
            self._publish_last_block(seq, table)
        return copy

    def _publish_last_block(self, seq: Sequence, table: list[int]) -> None:
        """The newest token fills its block: publish the block to the prefix cache."""
        hashes = self.seq_block_hashes[seq.seq_id]
        i = len(seq.token_ids) // self.block_size - 1
        if len(hashes) != i:
            return
        bs = self.block_size
        block_tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        h = chain_hash(hashes[-1] if hashes else ROOT_HASH, block_tokens)
        hashes.append(h)
        self.prefix_cache.insert(table[i], h, block_tokens)

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """The child shares every block of the parent (beam search, section 4.4): nothing to copy."""
        table = self.block_tables[parent.seq_id]
        self.block_tables[child.seq_id] = list(table)
        for b in table:
            self.gpu.incref(b)
        if parent.seq_id in self.seq_block_hashes:
            self.seq_block_hashes[child.seq_id] = list(self.seq_block_hashes[parent.seq_id])
        return []

    def free(self, seq: Sequence) -> None:
        table = self.block_tables.pop(seq.seq_id, None)
        self.seq_block_hashes.pop(seq.seq_id, None)
        if table is None:
            return
        pool = self.cpu if seq.seq_id in self.swapped_seq_ids else self.gpu
        self.swapped_seq_ids.discard(seq.seq_id)
        # Tail first: its blocks become the least recently used cached ones, so a cached prefix
        # outlives the tails that extended it.
        for b in reversed(table):
            pool.decref(b)

    # ------------------------------------------------------------------ swapping (section 4.5)
    def _unique_blocks(self, group: SequenceGroup, status: SequenceStatus) -> set[int]:
        return {b for s in group.get_seqs(status) for b in self.block_tables[s.seq_id]}

    def can_swap_out(self, group: SequenceGroup) -> bool:
        return len(self._unique_blocks(group, SequenceStatus.RUNNING)) <= self.cpu.num_free

    def _restorable_prefix_blocks(self, group: SequenceGroup) -> list[int]:
        """The full blocks of the group's resident shared prefix: swapping in maps them back instead
        of copying them, so the group shares them again."""
        prefix = group.prefix
        if prefix is None or prefix.block_ids is None or not prefix.computed:
            return []
        return prefix.block_ids[: len(prefix) // self.block_size]

    def can_swap_in(self, group: SequenceGroup) -> bool:
        seqs = group.get_seqs(SequenceStatus.SWAPPED)
        num_restored = len(self._restorable_prefix_blocks(group))
        host_blocks = {b for s in seqs for b in self.block_tables[s.seq_id][num_restored:]}
        # Plus the blocks appending the next token takes right after (vLLM v0 adds one per sequence;
        # this counts exactly, so that a group that fits the cache alone always comes back).
        bs = self.block_size
        last_blocks = [self.block_tables[s.seq_id][-1] for s in seqs]
        needed = len(host_blocks)
        for seq, last in zip(seqs, last_blocks):
            if len(self.block_tables[seq.seq_id]) * bs < len(seq.token_ids):
                needed += 1
            elif self.cpu.ref_counts[last] > 1:
                needed += 1
        return self.gpu.num_free - needed >= self.watermark_blocks

    def _move(
        self,
        group: SequenceGroup,
        status: SequenceStatus,
        src: BlockAllocator,
        dst: BlockAllocator,
        skip: int = 0,
    ) -> dict[int, int]:
        """Copy the group's blocks (but the first `skip` of each table) to the other pool."""
        mapping: dict[int, int] = {}
        for seq in group.get_seqs(status):
            table = self.block_tables[seq.seq_id]
            moved = table[:skip]
            for b in table[skip:]:
                if b in mapping:  # shared inside the group: one copy, one more reference
                    dst.incref(mapping[b])
                else:
                    mapping[b] = dst.allocate()
                moved.append(mapping[b])
                src.decref(b)
            self.block_tables[seq.seq_id] = moved
        return mapping

    def swap_out(self, group: SequenceGroup) -> dict[int, int]:
        """Move the group's blocks to host memory; returns {device block: host block}."""
        mapping = self._move(group, SequenceStatus.RUNNING, self.gpu, self.cpu)
        self.swapped_seq_ids.update(s.seq_id for s in group.get_seqs(SequenceStatus.RUNNING))
        return mapping

    def swap_in(self, group: SequenceGroup) -> dict[int, int]:
        """Bring a swapped group's blocks back; returns {host block: device block}."""
        restored = self._restorable_prefix_blocks(group)
        seqs = group.get_seqs(SequenceStatus.SWAPPED)
        for seq in seqs:
            table = self.block_tables[seq.seq_id]
            for i, b in enumerate(restored):
                self.cpu.decref(table[i])
                self.gpu.incref(b)
        mapping = self._move(group, SequenceStatus.SWAPPED, self.cpu, self.gpu, len(restored))
        for seq in seqs:
            self.block_tables[seq.seq_id][: len(restored)] = restored
        self.swapped_seq_ids.difference_update(s.seq_id for s in seqs)
        return mapping

    # ------------------------------------------------------------------ accounting (Figure 2)
    def get_block_table(self, seq: Sequence) -> list[int]:
        """Logical block i -> physical block id (device ids, or host ids while swapped out)."""
        return self.block_tables[seq.seq_id]

    def get_block_fills(self, seq: Sequence) -> list[int]:
        """Filled slots (tokens whose KV is stored) of each logical block of the sequence."""
        bs = self.block_size
        computed = seq.num_computed_tokens
        return [min(max(computed - i * bs, 0), bs) for i in range(len(self.block_tables[seq.seq_id]))]

    def usage(self, running: list[SequenceGroup]) -> MemoryUsage:
        """The device KV space in Figure 2's classes, in O(running sequences).

        Every block of a table but the last is full, so only last blocks have empty slots. An empty
        slot is reservation if the sequence will still fill it (prompt + max_tokens, the trace's true
        output length when EOS is ignored), internal fragmentation otherwise. Paging leaves no
        external fragmentation: any free block serves any request.
        """
        bs = self.block_size
        ref_counts = self.gpu.ref_counts
        tables = self.block_tables
        max_model_len = self.max_model_len or 1 << 62
        running_status = SequenceStatus.RUNNING
        # Last blocks held by one sequence are summed directly; shared ones (forked siblings) are
        # deduplicated through the dict, keeping the largest fill.
        last_blocks: dict[int, tuple[int, int]] = {}
        num_private = filled_private = future_private = 0
        logical = 0
        for group in running:
            max_kv = min(group.max_seq_len, max_model_len) - 1
            for seq in group.seqs:
                if seq.status is not running_status:
                    continue
                table = tables.get(seq.seq_id)
                if not table:
                    continue
                n = len(table)
                logical += n
                base = (n - 1) * bs
                filled = seq.num_computed_tokens - base
                filled = 0 if filled < 0 else bs if filled > bs else filled
                future = max_kv - base
                future = filled if future < filled else bs if future > bs else future
                last = table[-1]
                if ref_counts[last] == 1:
                    num_private += 1
                    filled_private += filled
                    future_private += future
                    continue
                old = last_blocks.get(last)
                if old is None or old < (filled, future):
                    last_blocks[last] = (filled, future)
        for prefix in self.prefixes:
            tail = len(prefix) % bs
            block = prefix.block_ids[-1]
            # Held by the prefix alone, its partial last block holds the prefix's tail; a running
            # sequence that holds it too (the request that computed the prefix) holds it either
            # as its last block (counted above) or as a full one.
            if tail and block not in last_blocks and self.gpu.ref_counts[block] == 1:
                last_blocks[block] = (tail, tail)
        used = self.gpu.num_used
        num_last = len(last_blocks) + num_private
        filled = sum(f for f, _ in last_blocks.values()) + filled_private
        future = sum(u for _, u in last_blocks.values()) + future_private
        return MemoryUsage(
            total=self.num_total_slots,
            token_states=(used - num_last) * bs + filled,
            reservation=future - filled,
            internal_fragmentation=num_last * bs - future,
            external_fragmentation=0,
            free=self.gpu.num_free * bs,
            logical_blocks=logical,
            physical_blocks=used,
        )
