"""Contiguous KV allocation, the way the paper's baselines manage memory (section 3, Figure 3).

Each sequence gets, at admission, one contiguous chunk big enough for its prompt and the output it
may produce (how much is the reservation rule: `reserved_output`, one small subclass per system). The
chunk is the next power of two of token slots (a buddy allocator, capped at the model's maximum length),
so nothing is shared: a request's n sequences each hold a chunk and compute their prompt into it; a
forked beam gets a chunk of its own and a copy of its parent's keys and values.

The arena is the paged cache's memory viewed as consecutive blocks: a chunk is 2^k blocks at an
aligned block address, so the same kernels read it through an ordinary block table.
"""

from __future__ import annotations

import abc

import numpy as np

from baselines.buddy import BuddyAllocator, order_for
from paged.config import CacheConfig
from paged.memory import AllocPlan, AllocStatus, MemoryUsage
from paged.sequence import Sequence, SequenceGroup, SequenceStatus

_RUNNING, _WAITING = SequenceStatus.RUNNING, SequenceStatus.WAITING


def next_pow2(n: int) -> int:
    return 1 << order_for(max(n, 1))


class ContiguousManager(abc.ABC):
    """A KVCacheManager with one buddy-allocated chunk per sequence. Subclasses set the reservation."""

    name = "contiguous"

    def __init__(self, cache_config: CacheConfig, max_model_len: int) -> None:
        bs = cache_config.block_size
        if bs & (bs - 1):
            raise ValueError(f"contiguous baselines need a power-of-two block_size, got {bs}")
        self.block_size = bs
        self.max_model_len = max_model_len
        self.num_total_slots = cache_config.num_gpu_slots
        self.max_chunk_tokens = next_pow2(max_model_len)
        self.arena = BuddyAllocator(cache_config.num_gpu_blocks, self._order(self.max_chunk_tokens))
        # How many chunks of each order an empty arena holds: the NEVER test.
        self._capacity = [
            sum(len(self.arena.free_lists[k]) << (k - o) for k in range(o, self.arena.max_order + 1))
            for o in range(self.arena.max_order + 1)
        ]
        self.chunks: dict[int, tuple[int, int]] = {}  # seq_id -> (block address, order)
        self.reserved: dict[int, int] = {}  # seq_id -> token slots its reservation asked for
        self._blocked_order = -1  # order of the chunk the head of the queue waits for, if any

    # ------------------------------------------------------------------ reservation rule
    @abc.abstractmethod
    def reserved_output(self, group: SequenceGroup) -> int:
        """Output tokens to reserve for each sequence of the group (each baseline's own rule)."""

    def _reservation(self, group: SequenceGroup, seq: Sequence) -> int:
        """Token slots a sequence asks for: its current tokens plus the reserved output, capped."""
        return min(seq.num_prompt_tokens + self.reserved_output(group), self.max_model_len)

    def _order(self, tokens: int) -> int:
        chunk_tokens = min(next_pow2(tokens), self.max_chunk_tokens)
        return order_for(max(1, chunk_tokens // self.block_size))

    # ------------------------------------------------------------------ admission
    def can_allocate(self, group: SequenceGroup) -> AllocPlan:
        seqs = group.get_seqs(_WAITING)
        need = max(self._reservation(group, s) for s in seqs)
        need = max(need, max(len(s.token_ids) for s in seqs))
        order = self._order(need)
        if len(seqs) > self._capacity[order]:
            return AllocPlan(
                AllocStatus.NEVER,
                reason=(
                    f"{len(seqs)} chunks of {(1 << order) * self.block_size} slots cannot fit in the "
                    f"{self.num_total_slots}-slot arena; give the KV cache more memory or lower n"
                ),
            )
        num_tokens = sum(len(s.token_ids) for s in seqs)  # no sharing: each computes its prompt
        placed = []
        for _ in seqs:
            address = self.arena.allocate(order)
            if address is None:
                break
            placed.append(address)
        for address in placed:  # a dry run: give them back
            self.arena.free(address)
        if len(placed) < len(seqs):
            # Free chunks smaller than this one are of no use to the head of the queue: external
            # fragmentation until something is admitted.
            self._blocked_order = order
            return AllocPlan(AllocStatus.LATER, num_new_tokens=num_tokens, detail=order)
        return AllocPlan(AllocStatus.OK, num_new_tokens=num_tokens, detail=order)

    def allocate(self, group: SequenceGroup, plan: AllocPlan) -> list[tuple[int, int]]:
        order = plan.detail
        for seq in group.get_seqs(_WAITING):
            self.chunks[seq.seq_id] = (self.arena.allocate(order), order)
            self.reserved[seq.seq_id] = min(
                max(self._reservation(group, seq), len(seq.token_ids)), (1 << order) * self.block_size
            )
            seq.num_computed_tokens = 0
        self._blocked_order = -1
        return []

    def mark_computed(self, group: SequenceGroup) -> None:
        return None

    def end_step(self) -> None:
        return None  # no copies to hold sources for

    # ------------------------------------------------------------------ decoding
    def _capacity_of(self, seq: Sequence) -> int:
        return (1 << self.chunks[seq.seq_id][1]) * self.block_size

    def can_append_slots(self, group: SequenceGroup) -> bool:
        # The chunk was reserved up front; a sequence outgrows it only if its reservation was short.
        return all(len(s.token_ids) <= self._capacity_of(s) for s in group.seqs if s.status is _RUNNING)

    def append_slot(self, seq: Sequence) -> tuple[int, int] | None:
        return None

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """A new beam gets a chunk like its parent's and a copy of the blocks its parent filled."""
        address, order = self.chunks[parent.seq_id]
        new = self.arena.allocate(order)
        if new is None:
            raise RuntimeError(
                "no room to fork a beam; the scheduler frees losing beams before forking, so a "
                "chunk of this size should be free"
            )
        self.chunks[child.seq_id] = (new, order)
        self.reserved[child.seq_id] = self.reserved[parent.seq_id]
        filled = -(-parent.num_computed_tokens // self.block_size)
        return [(address + i, new + i) for i in range(filled)]

    def free(self, seq: Sequence) -> None:
        chunk = self.chunks.pop(seq.seq_id, None)
        self.reserved.pop(seq.seq_id, None)
        if chunk is not None:
            self.arena.free(chunk[0])

    # ------------------------------------------------------------------ fast-forward (paged/fast_forward.py)
    def decode_run(self, seqs: list[Sequence], base: np.ndarray) -> ContiguousDecodeRun:
        """What runs of plain decode steps do to the arena (paged/fast_forward.py): nothing but fill
        the chunks reserved at admission."""
        view = ContiguousDecodeRun(self)
        view.join(seqs, base)
        return view

    # ------------------------------------------------------------------ no swapping (Orca, FT)
    def can_swap_out(self, group: SequenceGroup) -> bool:
        return False

    def swap_out(self, group: SequenceGroup) -> dict[int, int]:
        raise RuntimeError("contiguous baselines do not swap")

    def can_swap_in(self, group: SequenceGroup) -> bool:
        return False

    def swap_in(self, group: SequenceGroup) -> dict[int, int]:
        raise RuntimeError("contiguous baselines do not swap")

    # ------------------------------------------------------------------ accounting (Figure 2)
    def get_block_table(self, seq: Sequence) -> range:
        address, order = self.chunks[seq.seq_id]
        return range(address, address + (1 << order))  # consecutive blocks; a range costs no list

    def _held(self, running: list[SequenceGroup]):
        """(chunk slots, reserved, tokens computed, final KV tokens) of every chunk held."""
        for group in running:
            final = min(group.max_seq_len, self.max_model_len) - 1
            for seq in group.seqs:
                if seq.seq_id in self.chunks:
                    yield self._capacity_of(seq), self.reserved[seq.seq_id], seq.num_computed_tokens, final

    def usage(self, running: list[SequenceGroup]) -> MemoryUsage:
        """Per chunk: computed tokens are token states; reserved slots the sequence will still fill are
        reservation; reserved slots it never will are internal fragmentation; the buddy round-up
        beyond the reservation, plus free chunks smaller than the last chunk that could not be placed,
        are external fragmentation and others (Figure 2)."""
        bs = self.block_size
        usage = MemoryUsage(total=self.num_total_slots)
        held = 0
        for capacity, reserved, computed, final in self._held(running):
            will_use = max(min(reserved, final), computed)
            usage.token_states += computed
            usage.reservation += will_use - computed
            usage.internal_fragmentation += reserved - will_use
            usage.external_fragmentation += capacity - reserved
            held += capacity
        # Chunks still held by sequences no longer running (FasterTransformer keeps a batch's
        # memory until the batch ends): reserved, never to be used again.
        orphan = (self.arena.num_units - self.arena.num_free) * bs - held
        usage.internal_fragmentation += orphan
        usage.physical_blocks = usage.logical_blocks = self.arena.num_units - self.arena.num_free
        for _, order in self.arena.free_chunks():
            slots = (1 << order) * bs
            if order < self._blocked_order:
                usage.external_fragmentation += slots
            else:
                usage.free += slots
        return usage


class ContiguousDecodeRun:
    """A contiguous policy's side of a fast-forward (paged/fast_forward.py; the interface of
    paged.block_manager.PagedDecodeRun): appends take nothing, a sequence may decode until it
    outgrows its chunk, and each step turns one reserved slot per sequence into a token state."""

    def __init__(self, manager: ContiguousManager) -> None:
        self.manager = manager
        self.capacity = np.zeros(0, dtype=np.int64)  # per sequence: its chunk's slots
        self.reserved = np.zeros(0, dtype=np.int64)  # ... what its reservation asked for
        self.lengths = np.zeros(0, dtype=np.int64)  # ... its base length (tokens after step t: + t)

    def join(self, seqs: list[Sequence], base: np.ndarray) -> bool:
        chunks, reserved = self.manager.chunks, self.manager.reserved
        bs = self.manager.block_size
        capacity = np.array([bs << chunks[s.seq_id][1] for s in seqs], dtype=np.int64)
        self.capacity = np.concatenate((self.capacity, capacity))
        self.reserved = np.concatenate((self.reserved, [reserved[s.seq_id] for s in seqs]))
        self.lengths = np.concatenate((self.lengths, base))
        return True

    needs_tokens = False

    def take(self, seq: Sequence) -> None:
        raise AssertionError("a contiguous chunk takes nothing on append")

    def limits(self) -> np.ndarray:
        """Steps each sequence can take: at step t it holds length + t - 1 tokens, at most its chunk."""
        return self.capacity - self.lengths + 1

    def budget(self) -> int:
        return 0

    def appends(self, alive: np.ndarray, t0: int, t1: int) -> list:
        return []  # append_slot never does anything

    def usage_rows(
        self, u0: MemoryUsage, alive: np.ndarray, t0: int, k: int, max_kv: np.ndarray, allocs: list
    ) -> np.ndarray:
        """[k, 7]: `usage(running)` after each step t0 + 1 .. t0 + k, from u0 (after step t0): each
        step computes one more token per sequence, a reserved slot become a token state, or, once
        the sequence passes min(reserved, final), a slot it will use more (less internal
        fragmentation)."""
        computed = self.lengths[alive] + t0 - 1
        slack = np.maximum(np.minimum(self.reserved[alive], max_kv[alive]) - computed, 0)
        steps = np.arange(1, k + 1, dtype=np.int64)
        nj = len(alive) * steps
        grown = np.maximum(steps[None, :] - slack[:, None], 0).sum(axis=0)
        rows = np.empty((k, 7), dtype=np.int64)
        rows[:, 0] = u0.token_states + nj
        rows[:, 1] = u0.reservation + grown - nj
        rows[:, 2] = u0.internal_fragmentation - grown
        rows[:, 3] = u0.external_fragmentation
        rows[:, 4] = u0.free
        rows[:, 5] = u0.logical_blocks
        rows[:, 6] = u0.physical_blocks
        return rows
