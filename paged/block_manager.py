"""The paged KV-cache manager of the paper (section 4.2-4.5): block tables over two block pools.

Each sequence has a block table: logical block i -> physical block id; a block's filled slots follow
from the sequence's length (every block but the last is full). Blocks are shared by reference count:
the n sequences of a request share the prompt's blocks, forked beams share their history, requests
share an explicit prefix or automatically cached full blocks. A write into a block whose count is
above one first copies it (copy-on-write, section 4.4).

Structure:

- `BlockManager` implements `paged.memory.KVCacheManager` in four parts: admission (`can_allocate`
  decides a `Placement`, `allocate` carries it out), decoding (`can_append_slots`, `append_slot`,
  `fork`, `free`), swapping (section 4.5) and Figure 2 accounting.
- `Placement` says where each block of each admitted sequence comes from: an existing block it
  shares (`int`) or the k-th block to allocate (`NewBlock(k)`).
- The pools are `paged.block.BlockAllocator`s (free list + reference counts); the device pool carries
  the automatic prefix cache (`paged.prefix_cache`).
- Explicit shared prefixes are `paged.shared_prefix.SharedPrefixes`: what a group takes from its
  prefix, what prefixes pin, what swap-in restores, what accounting counts, release.
- The Figure 2 classification is `paged.accounting.paged_usage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paged.accounting import MemoryUsage, paged_usage
from paged.block import BlockAllocator
from paged.config import CacheConfig
from paged.host_tier import HostTier
from paged.memory import AllocPlan, AllocStatus
from paged.prefix_cache import ROOT_HASH, PrefixCache, chain_hash
from paged.sequence import Sequence, SequenceGroup, SequenceStatus, SharedPrefix
from paged.shared_prefix import SharedPrefixes


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class NewBlock:
    """The `index`-th block `allocate` takes from the free list for the placement."""

    index: int


# A table entry of a placement: an existing device block (a sibling's, the shared prefix's or a prefix
# cache hit), or a block to allocate. Equal entries within the group are one shared block.
PlacedBlock = int | NewBlock


@dataclass
class Placement:
    """Where each block of each waiting sequence of a group comes from, decided by `can_allocate`."""

    tables: list[list[PlacedBlock]]  # one per waiting sequence, in order
    num_computed: list[int]  # tokens of each sequence found in shared blocks: its prefill skips them
    full_hashes: list[list[int]]  # chained hash of each full block of each sequence
    num_new_blocks: int
    copies: list[tuple[int, NewBlock]]  # (existing block, new block it is copied into)
    restores: list[tuple[int, NewBlock]] | None = None  # (block hash in the host tier, new block)
    # Cached blocks that copies read for a token-level match: held until the step ran (`end_step`).
    pins: list[int] | None = None

    def existing_blocks(self) -> list[int]:
        """Every entry that is an existing block, once per table entry."""
        return [e for table in self.tables for e in table if not isinstance(e, NewBlock)]


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
        self.prefix_cache = (
            PrefixCache(cache_config.prefix_eviction) if cache_config.enable_prefix_caching else None
        )
        self.gpu = BlockAllocator(cache_config.num_gpu_blocks, self.prefix_cache)
        self.cpu = BlockAllocator(cache_config.num_cpu_blocks)
        self.block_tables: dict[int, list[int]] = {}
        self.swapped_seq_ids: set[int] = set()  # sequences whose table holds host blocks
        # Chained hashes of each sequence's full blocks, kept to extend the chain as it decodes.
        self.seq_block_hashes: dict[int, list[int]] = {}
        self.shared_prefixes = SharedPrefixes(self.gpu, self.block_size)
        # The host tier of the prefix cache (paged/host_tier.py), and the copies it asks for in the
        # step being scheduled: (device, host) offloads and (host, device) restores.
        self.host_tier = None
        self.offloads: list[tuple[int, int]] = []
        self.restores: list[tuple[int, int]] = []
        # Token-level matching (PrefixCache's policy.partial_match): the sequence that publishes a
        # block and the token count by which it has written it, so that a copy never reads a block
        # whose KV a prompt writes only in this step's (or a later chunk's) forward pass; and the
        # copy sources referenced until the step that copies them ran.
        self.partial_match = self.prefix_cache is not None and self.prefix_cache.policy.partial_match
        self._writers: dict[int, tuple[Sequence, int]] = {}
        self.copy_pins: list[int] = []
        if cache_config.num_host_cache_blocks:
            self.host_tier = HostTier(cache_config.num_host_cache_blocks, cache_config.num_cpu_blocks)
            self.prefix_cache.on_evict = self._offload

    def _offload(self, block: int, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """The prefix cache evicts `block`: copy it into the host tier (PrefixCache.on_evict)."""
        host_block = self.host_tier.offload(block_hash, token_ids)
        if host_block is not None:
            self.offloads.append((block, host_block))

    def take_host_transfers(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The host tier's copies of the step just scheduled: (device, host) offloads, to run with the
        step's swap-outs, and (host, device) restores, with its swap-ins."""
        transfers = self.offloads, self.restores
        self.offloads, self.restores = [], []
        self.host_tier.end_step()
        return transfers

    @property
    def prefixes(self) -> list[SharedPrefix]:
        """The resident shared prefixes."""
        return self.shared_prefixes.resident

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

    def can_allocate(self, group: SequenceGroup) -> AllocPlan:
        """OK, LATER (wait for memory, FCFS) or NEVER (reject), with the prompt phase's token cost.

        An OK or LATER plan carries the group's `Placement` for `allocate`, or None when the group is
        one sequence and nothing can be shared (every block new).
        """
        pinned = self.shared_prefixes.num_pinned_blocks(group)
        usable = self.num_gpu_blocks - self.watermark_blocks - pinned
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
        reason = self.shared_prefixes.reject_reason(group)
        if reason is not None:
            return AllocPlan(AllocStatus.NEVER, reason=reason)
        seqs = group.get_seqs(SequenceStatus.WAITING)
        placement: Placement | None
        if len(seqs) == 1 and group.prefix is None and self.prefix_cache is None:
            # Nothing can be shared: skip `_place`, which hashes every block. The scheduler asks this
            # of the waiting head every step, admitted or not; without this path
            # benchmarks/bench_scheduler.py's steps take 3.0x as long at 8 running, 1.7x at 32,
            # 1.3x at 128, 1.2x at 256.
            num_tokens = len(seqs[0].token_ids)
            needed = _cdiv(num_tokens, self.block_size)
            placement = None
        else:
            placement = self._place(group, seqs)
            needed = placement.num_new_blocks + self._num_parked_hits(placement)
            if placement.pins and self.gpu.num_free - needed < self.watermark_blocks:
                # A parked copy source takes a block of its own for the step: where that is the block
                # missing, copy only from referenced blocks, or compute the tokens instead.
                placement = self._place(group, seqs, parked_sources=False)
                needed = placement.num_new_blocks + self._num_parked_hits(placement)
            num_tokens = sum(len(s.token_ids) - c for s, c in zip(seqs, placement.num_computed))
        status = AllocStatus.LATER if self.gpu.num_free - needed < self.watermark_blocks else AllocStatus.OK
        return AllocPlan(status, num_new_tokens=num_tokens, detail=placement)

    def num_cached_prefix_blocks(self, group: SequenceGroup) -> int:
        """Leading full blocks of the group's prompt found in the prefix cache now (a hit needs at
        least the last token left to compute, as in `_place`); 0 without a cache."""
        cache = self.prefix_cache
        if cache is None:
            return 0
        tokens, bs = group.prompt_token_ids, self.block_size
        prev, n = ROOT_HASH, 0
        while (n + 1) * bs < len(tokens):
            block = tuple(tokens[n * bs : (n + 1) * bs])
            prev = chain_hash(prev, block)
            if cache.lookup(prev, block) is None:
                break
            n += 1
        return n

    def _num_parked_hits(self, placement: Placement) -> int:
        """Cache hits and copy sources on blocks nobody references use up a free (evictable) block
        each."""
        ref_counts = self.gpu.ref_counts
        blocks = set(placement.existing_blocks()).union(placement.pins or ())
        return sum(1 for b in blocks if ref_counts[b] == 0)

    def _written(self, block: int) -> bool:
        """Whether a cached block's KV is all written now, before this step's copies run: parked
        blocks are (an unwritten one is unpublished when freed: `_forget_unwritten`); a referenced
        one once the sequence that published it has computed past it (num_computed_tokens grows
        only after a step ran, so blocks published while scheduling this step are not)."""
        if self.gpu.ref_counts[block] == 0:
            return True
        writer = self._writers.get(block)
        if writer is None:
            return True
        if writer[0].num_computed_tokens >= writer[1]:
            del self._writers[block]  # written for good: a missing entry says so
            return True
        return False

    def _referenced_and_written(self, block: int) -> bool:
        return self.gpu.ref_counts[block] > 0 and self._written(block)

    def _place(self, group: SequenceGroup, seqs: list[Sequence], parked_sources: bool = True) -> Placement:
        """Decide, block by block, what each waiting sequence shares and what it computes.

        A block is shared, in this order of preference: with a sibling of the same group holding the
        same tokens up to and including it (parallel samples share the whole prompt; sequences
        re-admitted after a recompute share their common history); with the group's shared prefix;
        with the prefix cache; from the host tier, by a copy back. Cached and prefix blocks are taken
        only while they leave at least the last token to compute, whose logits the prompt phase must
        produce (nano-vllm issue 144). Under token-level matching (`partial_match`), the first block
        not shared whole may be copied from a cached block that starts with the same tokens
        (parked_sources=False: only from one that is referenced, so that the copy takes no extra
        block).
        """
        bs = self.block_size
        cache = self.prefix_cache
        offer = self.shared_prefixes.offer(group)
        by_key: dict[int, PlacedBlock] = {}  # chained hash of a block's tokens -> its entry
        tables: list[list[PlacedBlock]] = []
        computed: list[int] = []
        all_hashes: list[list[int]] = []
        copies: list[tuple[int, NewBlock]] = []
        restores: list[tuple[int, NewBlock]] = []
        pins: list[int] = []
        num_new = 0
        for seq in seqs:
            tokens = seq.token_ids
            num_tokens = len(tokens)
            table: list[PlacedBlock] = []
            hashes: list[int] = []
            prev = ROOT_HASH
            num_computed = 0
            leading = True  # every block so far is shared, so this sequence computes nothing yet
            for i in range(_cdiv(num_tokens, bs)):
                start = i * bs
                end = min(start + bs, num_tokens)
                block_tokens = tuple(tokens[start:end])
                full = end - start == bs
                parent = prev
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
                if leading and offer is not None:
                    # The prompt starts with the prefix (can_allocate checked it), so logical blocks
                    # below num_full are the prefix's full blocks and block num_full holds its tail.
                    num_full = len(offer.full_blocks)
                    if i < num_full:
                        if end < num_tokens:
                            entry = offer.full_blocks[i]
                            num_computed = end
                    elif i == num_full and offer.partial_block is not None and end > offer.length:
                        # The prefix's partial last block: copy it, then write our own tokens after
                        # the prefix's (copy-on-write, section 4.4).
                        entry = NewBlock(num_new)
                        copies.append((offer.partial_block, entry))
                        num_new += 1
                        num_computed = offer.length
                        leading = False
                if entry is None and leading and cache is not None and full and end < num_tokens:
                    hit = cache.lookup(key, block_tokens)
                    if hit is not None:
                        entry = hit
                        num_computed = end
                    elif self.host_tier is not None:
                        if self.host_tier.lookup(key, block_tokens) is not None:
                            # back from host memory instead of recomputed
                            entry = NewBlock(num_new)
                            num_new += 1
                            restores.append((key, entry))
                            num_computed = end
                if entry is None and leading and self.partial_match:
                    # Token-level match (radix): copy the cached block that starts like this one
                    # and compute from where they differ, leaving at least the last token.
                    usable = self._written if parked_sources else self._referenced_and_written
                    src, n = cache.longest_partial(parent, block_tokens, usable)
                    n = min(n, num_tokens - 1 - start)
                    if n > 0:
                        entry = NewBlock(num_new)
                        num_new += 1
                        copies.append((src, entry))
                        pins.append(src)
                        num_computed = start + n
                        leading = False
                if entry is None:
                    entry = NewBlock(num_new)
                    num_new += 1
                    leading = False
                by_key[key] = entry
                table.append(entry)
            tables.append(table)
            computed.append(num_computed)
            all_hashes.append(hashes)
        return Placement(tables, computed, all_hashes, num_new, copies, restores, pins)

    def allocate(self, group: SequenceGroup, plan: AllocPlan) -> list[tuple[int, int]]:
        """Give the group's waiting sequences their blocks; returns block copies to perform."""
        seqs = group.get_seqs(SequenceStatus.WAITING)
        placement: Placement | None = plan.detail
        if placement is None:
            # One sequence that shares nothing (can_allocate): every block new, taken directly. Making
            # its Placement and walking it costs about 20 us per admission, 3-5% of
            # benchmarks/bench_scheduler.py's step at 32-256 running.
            seq = seqs[0]
            allocate = self.gpu.allocate
            num_blocks = _cdiv(len(seq.token_ids), self.block_size)
            self.block_tables[seq.seq_id] = [allocate() for _ in range(num_blocks)]
            seq.num_computed_tokens = 0
            return []
        gpu = self.gpu
        # Take the existing blocks first, so allocating new blocks cannot evict a cached one we are
        # about to use; pin the host-tier entries to restore, so that their offloads cannot either.
        for b in placement.existing_blocks():
            gpu.take_cached(b)
        for b in placement.pins or ():  # read by this step's copies: not evicted or reused before
            gpu.take_cached(b)
            self.copy_pins.append(b)
        restored = [(self.host_tier.restore(key), dst) for key, dst in placement.restores or ()]
        new_ids = [gpu.allocate() for _ in range(placement.num_new_blocks)]
        # allocate() gave each new block one reference, for its first table entry; every further
        # entry (a sibling sharing it) adds one.
        referenced = [False] * placement.num_new_blocks
        for seq, table, num_computed, hashes in zip(
            seqs, placement.tables, placement.num_computed, placement.full_hashes
        ):
            block_table = []
            for entry in table:
                if not isinstance(entry, NewBlock):
                    block_table.append(entry)
                    continue
                block = new_ids[entry.index]
                if referenced[entry.index]:
                    gpu.incref(block)
                referenced[entry.index] = True
                block_table.append(block)
            self.block_tables[seq.seq_id] = block_table
            seq.num_computed_tokens = num_computed
            if self.prefix_cache is not None:
                # Published now, before the prompt phase writes them, so that an identical prompt
                # admitted in this same step shares them: the executor writes every token's KV of a
                # layer before any attention of that layer reads the cache (ARCHITECTURE.md).
                self.seq_block_hashes[seq.seq_id] = list(hashes)
                bs = self.block_size
                parent = ROOT_HASH
                for i, h in enumerate(hashes):
                    block = block_table[i]
                    block_tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                    if self.prefix_cache.insert(block, h, block_tokens, parent) and self.partial_match:
                        self._writers[block] = (seq, (i + 1) * bs)
                    parent = h
        if self.prefix_cache is not None and group.prefix is None:
            # Hit statistics (points.csv): the first sequence's full prompt blocks that a hit could
            # serve (all but one holding the last token, which is always computed), and those it did.
            cache = self.prefix_cache
            cache.num_queried_blocks += (len(seqs[0].token_ids) - 1) // self.block_size
            cache.num_hit_blocks += placement.num_computed[0] // self.block_size
            cache.num_hit_tokens += placement.num_computed[0]
        self.shared_prefixes.adopt(group, self.block_tables[seqs[0].seq_id])
        for host_block, dst in restored:
            self.restores.append((host_block, new_ids[dst.index]))
        return [(src, new_ids[dst.index]) for src, dst in placement.copies]

    def mark_computed(self, group: SequenceGroup) -> None:
        self.shared_prefixes.mark_computed(group)

    def end_step(self) -> None:
        """The step ran (its copies are done): drop the references that kept copy sources."""
        for b in self.copy_pins:
            self.gpu.decref(b)
        self.copy_pins.clear()

    def release_prefix(self, prefix: SharedPrefix) -> None:
        """Drop a shared prefix's own references; its blocks live on while requests use them."""
        self.shared_prefixes.release(prefix)

    # ------------------------------------------------------------------ decoding
    def _needs_block(self, seq: Sequence, ref_counts: list[int]) -> bool:
        """Whether appending a token takes a block: a new one where the last is full, a copy where
        it is shared (ref_counts: of the pool the table is in)."""
        table = self.block_tables[seq.seq_id]
        return len(table) * self.block_size < len(seq.token_ids) or ref_counts[table[-1]] > 1

    def can_append_slots(self, group: SequenceGroup) -> bool:
        # The exact count. vLLM v0.1 asked for one free block per running sequence whatever it
        # needed; that rule can starve a group that fits the cache exactly (docs/scheduler.md).
        seqs = group.seqs
        if len(seqs) == 1:
            # One sequence, checked without the loop: the scheduler asks this of every running group
            # every step, and the loop costs 0.1-0.25 us more per group, 6-13% of
            # benchmarks/bench_scheduler.py's step at 128-256 running.
            seq = seqs[0]
            table = self.block_tables[seq.seq_id]
            if len(table) * self.block_size >= len(seq.token_ids) and self.gpu.ref_counts[table[-1]] == 1:
                return True
            return self.gpu.num_free >= 1
        ref_counts = self.gpu.ref_counts
        needed = 0
        for seq in seqs:
            if seq.status is SequenceStatus.RUNNING and self._needs_block(seq, ref_counts):
                needed += 1
        return self.gpu.num_free >= needed

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
        parent = hashes[-1] if hashes else ROOT_HASH
        h = chain_hash(parent, block_tokens)
        hashes.append(h)
        if self.prefix_cache.insert(table[i], h, block_tokens, parent) and self.partial_match:
            self._writers[table[i]] = (seq, (i + 1) * bs)

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """The child shares every block of the parent (beam search, section 4.4): nothing to copy."""
        table = self.block_tables[parent.seq_id]
        self.block_tables[child.seq_id] = list(table)
        for b in table:
            self.gpu.incref(b)
        if parent.seq_id in self.seq_block_hashes:
            self.seq_block_hashes[child.seq_id] = list(self.seq_block_hashes[parent.seq_id])
        return []

    def _forget_unwritten(self, seq: Sequence) -> None:
        """Unpublish the cached blocks of a sequence stopped in the middle of a chunked prefill.

        A prompt's full blocks are published at allocation, for a prompt admitted in the same step to
        share (`allocate`). A chunked prompt writes them over several steps; preempted or aborted
        before its last chunk, its blocks past the tokens computed hold no KV yet and must not be
        found. Only the sequence holds them then: a prompt is chunked only when it takes the rest of
        the step's budget, so nothing is admitted after it until its last chunk runs."""
        hashes = self.seq_block_hashes.get(seq.seq_id)
        written = seq.num_computed_tokens // self.block_size
        if not hashes or len(hashes) <= written:
            return
        table = self.block_tables[seq.seq_id]
        cache = self.prefix_cache
        for i in range(written, len(hashes)):
            block = table[i]
            if self.gpu.ref_counts[block] == 1 and cache.block_hash.get(block) == hashes[i]:
                cache.forget(block)
        del hashes[written:]

    def free(self, seq: Sequence) -> None:
        if self.prefix_cache is not None and seq.seq_id not in self.swapped_seq_ids:
            self._forget_unwritten(seq)
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

    # ------------------------------------------------------------------ fast-forward (paged/fast_forward.py)
    def decode_run(self, seqs: list[Sequence], base: np.ndarray) -> PagedDecodeRun | None:
        """What runs of plain decode steps do to this cache (paged/fast_forward.py), or None when a
        running sequence's last block is shared: its next append copies it (an event), or when a
        host tier may turn an eviction into a copy (every step is then stepped)."""
        if self.host_tier is not None:
            return None
        view = PagedDecodeRun(self)
        return view if view.join(seqs, base) else None

    # ------------------------------------------------------------------ swapping (section 4.5)
    def can_swap_out(self, group: SequenceGroup) -> bool:
        unique = {b for s in group.get_seqs(SequenceStatus.RUNNING) for b in self.block_tables[s.seq_id]}
        return len(unique) <= self.cpu.num_free

    def can_swap_in(self, group: SequenceGroup) -> bool:
        seqs = group.get_seqs(SequenceStatus.SWAPPED)
        num_restored = len(self.shared_prefixes.restorable_blocks(group))
        host_blocks = {b for s in seqs for b in self.block_tables[s.seq_id][num_restored:]}
        # Plus the blocks appending the next token takes right after (vLLM v0 adds one per sequence;
        # this counts exactly, so that a group that fits the cache alone always comes back).
        cpu_ref_counts = self.cpu.ref_counts
        needed = len(host_blocks) + sum(1 for s in seqs if self._needs_block(s, cpu_ref_counts))
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
        if self.prefix_cache is not None:
            for seq in group.get_seqs(SequenceStatus.RUNNING):
                self._forget_unwritten(seq)
        mapping = self._move(group, SequenceStatus.RUNNING, self.gpu, self.cpu)
        self.swapped_seq_ids.update(s.seq_id for s in group.get_seqs(SequenceStatus.RUNNING))
        return mapping

    def swap_in(self, group: SequenceGroup) -> dict[int, int]:
        """Bring a swapped group's blocks back; returns {host block: device block}.

        The full blocks of a resident shared prefix are mapped back rather than copied: the host
        copies of them are dropped and the device originals referenced again.
        """
        restored = self.shared_prefixes.restorable_blocks(group)
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
        """The device KV space in Figure 2's classes (paged/accounting.py)."""
        return paged_usage(self, running)


class PagedDecodeRun:
    """The paged cache's side of a fast-forward (paged/fast_forward.py) over `seqs`, whose lengths
    were `lengths` when it began: which steps take blocks, how many blocks there are to take, and
    the Figure 2 counts after each step. Steps t count from the fast-forward's start: at step t a
    sequence holds length + t - 1 tokens, and `append_slot` makes room for the newest."""

    def __init__(self, manager: BlockManager) -> None:
        self.manager = manager
        self.cached = manager.prefix_cache is not None
        # Per sequence: the step at which it first takes a block (when its tokens first exceed its
        # table: one token into a new block; then every block_size steps), its table's length when
        # it joined, and its base length (tokens after step t: base + t).
        self.first_alloc = np.zeros(0, dtype=np.int64)
        self.num_blocks = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int64)

    def join(self, seqs: list[Sequence], base: np.ndarray) -> bool:
        """Add sequences (base: their lengths minus the steps advanced so far); False if one's last
        block is shared."""
        ref_counts = self.manager.gpu.ref_counts
        tables = self.manager.block_tables
        num_blocks = []
        for s in seqs:
            table = tables[s.seq_id]
            if ref_counts[table[-1]] > 1:
                return False
            num_blocks.append(len(table))
        num_blocks = np.array(num_blocks, dtype=np.int64)
        self.first_alloc = np.concatenate((self.first_alloc, num_blocks * self.manager.block_size + 2 - base))
        self.num_blocks = np.concatenate((self.num_blocks, num_blocks))
        self.lengths = np.concatenate((self.lengths, base))
        return True

    @property
    def needs_tokens(self) -> bool:
        """Whether `take` must see the sequence's tokens up to the step (the prefix cache hashes the
        blocks it publishes); without it, only the count matters."""
        return self.cached

    def take(self, seq: Sequence) -> None:
        """What `append_slot` does for the sequence at a step `appends` names: with the prefix cache,
        append_slot itself (the tokens are there); without, it takes a block onto the table, which
        is all append_slot does at such a step."""
        if self.cached:
            if self.manager.append_slot(seq) is not None:
                raise AssertionError(f"a fast-forwarded append of {seq} copied a block")
        else:
            self.manager.block_tables[seq.seq_id].append(self.manager.gpu.allocate())

    def limits(self) -> np.ndarray:
        """Steps each sequence can take with nothing but fresh blocks: no limit (last blocks are
        private, and a taken block is private)."""
        return np.full(len(self.lengths), 1 << 62, dtype=np.int64)

    def budget(self) -> int:
        """Blocks the appends may take before a decode step would have to preempt."""
        return self.manager.gpu.num_free

    def appends(self, alive: np.ndarray, t0: int, t1: int) -> list[tuple[int, int, bool]]:
        """(t, i, takes a block) for each step t0 < t <= t1 at which `append_slot` does something for
        sequence i (alive: the indices still running), sorted as stepping calls it (step, then
        running order). A block is taken at the steps above; with the prefix cache, one is also
        published when the newest token fills it. At every other step append_slot changes nothing."""
        bs = self.manager.block_size
        steps = []
        first = self.first_alloc[alive]
        # The first block step after t0 of each sequence, then one every block_size steps.
        nxt = np.where(first > t0, first, first + -(-(t0 + 1 - first) // bs) * bs)
        while True:
            due = nxt <= t1
            if not due.any():
                break
            for t, i in zip(nxt[due].tolist(), alive[due].tolist()):
                steps.append((t, i, True))
            nxt = nxt + bs
        if self.cached:
            taken = {(t, i) for t, i, _ in steps}
            fill = self.lengths[alive] - 1  # tokens at step t: length + t - 1, a block's end when % bs == 0
            nxt = t0 + 1 + (-(fill + t0 + 1) % bs)
            while True:
                due = nxt <= t1
                if not due.any():
                    break
                for t, i in zip(nxt[due].tolist(), alive[due].tolist()):
                    if (t, i) not in taken:
                        steps.append((t, i, False))
                nxt = nxt + bs
        steps.sort()
        return steps

    def usage_rows(
        self,
        u0: MemoryUsage,
        alive: np.ndarray,
        t0: int,
        k: int,
        max_kv: np.ndarray,
        allocs: list[tuple[int, int]],
    ) -> np.ndarray:
        """[k, 7]: `usage(running)` after each step t0 + 1 .. t0 + k, in MEMORY_FIELDS order, from
        u0 (the count after step t0) plus what each step changes: every sequence's computed tokens
        grow by one, and a taken block (allocs: (step, i)) moves the sequence's last block, its
        filled and future slots (paged/accounting.py). max_kv: each sequence's final KV length."""
        bs = self.manager.block_size
        taken = np.zeros(k + 1, dtype=np.int64)
        future_delta = np.zeros(k + 1, dtype=np.int64)
        blocks: dict[int, int] = {}  # per sequence taking blocks: its table's length so far
        future: dict[int, int] = {}  # ... and its last block's future slots
        first = self.first_alloc
        for t, i in allocs:
            n = blocks.get(i)
            if n is None:  # its last block as usage() counts it after step t0
                n = int(self.num_blocks[i]) + (int(t0 - first[i]) // bs + 1 if t0 >= first[i] else 0)
                base = (n - 1) * bs
                filled = min(max(self.lengths[i] + t0 - 1 - base, 0), bs)
                future[i] = min(max(max_kv[i] - base, filled), bs)
            n += 1
            blocks[i] = n
            # The new last block holds one computed token (the one that spilled into it).
            new = min(max(max_kv[i] - (n - 1) * bs, 1), bs)
            taken[t - t0] += 1
            future_delta[t - t0] += new - future[i]
            future[i] = new
        a = np.cumsum(taken)[1:]
        df = np.cumsum(future_delta)[1:]
        nj = len(alive) * np.arange(1, k + 1, dtype=np.int64)
        rows = np.empty((k, 7), dtype=np.int64)
        rows[:, 0] = u0.token_states + nj
        rows[:, 1] = u0.reservation + df - (nj - bs * a)
        rows[:, 2] = u0.internal_fragmentation - df
        rows[:, 3] = u0.external_fragmentation
        rows[:, 4] = u0.free - bs * a
        rows[:, 5] = u0.logical_blocks + a
        rows[:, 6] = u0.physical_blocks + a
        return rows
