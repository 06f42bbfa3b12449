"""The paper's Figure 2 memory accounting: `MemoryUsage`, and its count for the paged block manager.

`MemoryUsage` is what every memory policy reports (the paged `BlockManager` here; the contiguous
baselines in baselines/contiguous.py count their own). `paged_usage` classifies the slots of a
`BlockManager`'s device pool; `BlockManager.usage` delegates to it. (`PagedKV` names what it reads,
so that this module need not import block_manager, which imports it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from paged.block import BlockAllocator
from paged.sequence import SequenceGroup, SequenceStatus
from paged.shared_prefix import SharedPrefixes


@dataclass
class MemoryUsage:
    """The KV space in the paper's Figure 2 classes, in token slots; the five classes sum to total.

    - token_states: slots holding keys/values of tokens already computed (counted once when shared);
    - reservation: slots set aside for tokens the request will still produce;
    - internal_fragmentation: slots set aside that the request will never use;
    - external_fragmentation: free slots no request can use (allocator round-up, scattered holes);
    - free: slots any request can still get.
    `logical_blocks` is what the running sequences' block tables would hold without sharing and
    `physical_blocks` what they hold: their ratio is the sharing saving (Figure 15).
    """

    total: int
    token_states: int = 0
    reservation: int = 0
    internal_fragmentation: int = 0
    external_fragmentation: int = 0
    free: int = 0
    logical_blocks: int = 0
    physical_blocks: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        parts = (
            self.token_states
            + self.reservation
            + self.internal_fragmentation
            + self.external_fragmentation
            + self.free
        )
        if parts != self.total:
            raise AssertionError(f"memory classes sum to {parts} slots, not {self.total}: {self}")

    def percentages(self) -> dict[str, float]:
        """The Figure 2 classes as % of the KV space (keys as in results/ points.csv)."""
        t = self.total or 1
        return {
            "kv_token_states_pct": 100.0 * self.token_states / t,
            "kv_reservation_pct": 100.0 * self.reservation / t,
            "kv_internal_frag_pct": 100.0 * self.internal_fragmentation / t,
            "kv_external_frag_pct": 100.0 * self.external_fragmentation / t,
            "kv_free_pct": 100.0 * self.free / t,
        }

    @property
    def sharing_saving(self) -> float:
        """Blocks saved by sharing / blocks needed without sharing (paper Figure 15)."""
        if not self.logical_blocks:
            return 0.0
        return (self.logical_blocks - self.physical_blocks) / self.logical_blocks


# MemoryUsage's counts in the order of a DecodeRun's memory rows and of harness/metrics.py's columns.
MEMORY_FIELDS = (
    "token_states",
    "reservation",
    "internal_fragmentation",
    "external_fragmentation",
    "free",
    "logical_blocks",
    "physical_blocks",
)


class PagedKV(Protocol):
    """What the count reads of a paged block manager (`paged.block_manager.BlockManager`)."""

    block_size: int
    num_total_slots: int
    max_model_len: int | None
    gpu: BlockAllocator
    block_tables: dict[int, list[int]]
    shared_prefixes: SharedPrefixes


def paged_usage(manager: PagedKV, running: list[SequenceGroup]) -> MemoryUsage:
    """The device KV space of a paged block manager in Figure 2's classes, in O(running sequences).

    Every block of a table but the last is full, so only last blocks have empty slots. A prompt in
    progress (chunked prefill) is the exception: its blocks past its computed tokens are empty, and
    they are reservation, since its next chunks fill them. Otherwise an empty slot is reservation if
    the sequence will still fill it (prompt + max_tokens, the trace's true output length when EOS is
    ignored), internal fragmentation otherwise. A shared prefix's partial last
    block that no sequence holds counts its tail as token states and the rest as internal
    fragmentation. Paging leaves no external fragmentation: any free block serves any request
    (section 4.2).
    """
    bs = manager.block_size
    gpu = manager.gpu
    ref_counts = gpu.ref_counts
    tables = manager.block_tables
    max_model_len = manager.max_model_len or 1 << 62
    running_status = SequenceStatus.RUNNING
    # (filled, future) slots of each last block shared by several sequences (forked siblings),
    # keeping the largest. A last block held by one sequence (most of them) is summed directly
    # instead: through the dict, usage() takes 15-20% longer at 128-256 running sequences, 4-5% of
    # a step of benchmarks/bench_scheduler.py with memory accounting.
    last_blocks: dict[int, tuple[int, int]] = {}
    num_private = filled_private = future_private = 0
    unwritten = 0  # empty slots in blocks before the last (prompts in progress)
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
            if filled < 0:
                unwritten -= filled
                filled = 0
            elif filled > bs:
                filled = bs
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
    for block, tail in manager.shared_prefixes.unshared_tails():
        if block not in last_blocks:
            last_blocks[block] = (tail, tail)
    used = gpu.num_used
    num_last = len(last_blocks) + num_private
    filled = sum(f for f, _ in last_blocks.values()) + filled_private
    future = sum(u for _, u in last_blocks.values()) + future_private
    return MemoryUsage(
        total=manager.num_total_slots,
        token_states=(used - num_last) * bs + filled - unwritten,
        reservation=future - filled + unwritten,
        internal_fragmentation=num_last * bs - future,
        external_fragmentation=0,
        free=gpu.num_free * bs,
        logical_blocks=logical,
        physical_blocks=used,
    )
