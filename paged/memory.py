"""The interface between the scheduler and a KV memory policy, and the paper's memory accounting.

The scheduler (paged/scheduler.py) talks to KV memory only through `KVCacheManager`. The paged
`BlockManager` implements it; the contiguous-allocation baselines (Orca, FasterTransformer; the
`baselines/` package) implement it too, so one scheduler runs every system (ARCHITECTURE.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from paged.sequence import Sequence, SequenceGroup


class AllocStatus(enum.Enum):
    OK = "ok"  # admit now
    LATER = "later"  # not enough free memory now; FCFS waits for it (head-of-line)
    NEVER = "never"  # can never fit: the request is rejected with a reason


@dataclass
class AllocPlan:
    """The answer of `can_allocate`: whether a group fits, and what admitting it would cost.

    `num_new_tokens` is what the prompt phase must compute (prompt tokens minus those found in shared
    or cached blocks); the scheduler charges it against max_num_batched_tokens. `detail` is the memory
    policy's own data, handed back to `allocate` so the work is not done twice.
    """

    status: AllocStatus
    num_new_tokens: int = 0
    reason: str = ""
    detail: Any = None


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


class KVCacheManager(Protocol):
    """What the scheduler asks of a KV memory policy. Guard/action pairs, as in the paper.

    Block ids in the returned maps and copy lists are the policy's own physical units; an executor
    applies, before each forward pass and in this order: swap-outs, swap-ins, copies (executor.py).
    """

    block_size: int
    num_total_slots: int

    def can_allocate(self, group: SequenceGroup) -> AllocPlan: ...

    def allocate(self, group: SequenceGroup, plan: AllocPlan) -> list[tuple[int, int]]:
        """Give the group's waiting sequences their prompt's memory; sets each sequence's
        num_computed_tokens (tokens found shared or cached); returns block copies to perform."""
        ...

    def can_append_slots(self, group: SequenceGroup) -> bool: ...

    def append_slot(self, seq: Sequence) -> tuple[int, int] | None:
        """Make room for the sequence's newest token; returns a copy-on-write (src, dst) or None."""
        ...

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """The child continues the parent's history; returns block copies to perform before the next
        step (none when the blocks are shared)."""
        ...

    def free(self, seq: Sequence) -> None: ...

    def can_swap_out(self, group: SequenceGroup) -> bool: ...

    def swap_out(self, group: SequenceGroup) -> dict[int, int]: ...

    def can_swap_in(self, group: SequenceGroup) -> bool: ...

    def swap_in(self, group: SequenceGroup) -> dict[int, int]: ...

    def mark_computed(self, group: SequenceGroup) -> None:
        """Called after the group's prompt phase ran: its blocks now hold real KV."""
        ...

    def usage(self, running: list[SequenceGroup]) -> MemoryUsage: ...

    def get_block_table(self, seq: Sequence) -> list[int]: ...
