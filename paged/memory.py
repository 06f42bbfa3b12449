"""The interface between the scheduler and a KV memory policy.

The scheduler (paged/scheduler.py) talks to KV memory only through `KVCacheManager`. The paged
`BlockManager` implements it; the contiguous-allocation baselines (Orca, FasterTransformer; the
`baselines/` package) implement it too, so one scheduler runs every system (ARCHITECTURE.md).
`MemoryUsage`, the paper's Figure 2 accounting every policy reports, lives in paged/accounting.py and
is re-exported here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from paged.accounting import MemoryUsage
from paged.sequence import Sequence, SequenceGroup

__all__ = ["AllocPlan", "AllocStatus", "KVCacheManager", "MemoryUsage"]


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

    def end_step(self) -> None:
        """Called after every step (post-processing, before its samples are applied): what the policy
        held for the step's copies can go."""
        ...

    def usage(self, running: list[SequenceGroup]) -> MemoryUsage: ...

    def get_block_table(self, seq: Sequence) -> list[int] | range:
        """Logical block i -> physical block id (a contiguous policy's chunk is a range)."""
        ...
