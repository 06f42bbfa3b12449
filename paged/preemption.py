"""Cost-aware preemption (`preemption_mode="cost"`): swap or recompute each victim, whichever is
predicted cheaper, in place of the paper's fixed rule (section 4.5: recompute single sequences, swap
groups). Section 7.3 (Figure 19) shows why a fixed rule loses: swapping moves every block over PCIe,
one copy per block and layer, so it is slow at small block sizes, while recomputation costs a prefill
of the sequence's tokens whatever the block size.

The scheduler asks a `PreemptionCosts` for the two predictions: the simulator answers from its cost
model (harness/sim/executor.py), the real engine from its measured swap and prefill speeds
(`MeasuredCosts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PreemptionCosts(Protocol):
    def swap_s(self, num_blocks: int) -> float:
        """Seconds to move this many blocks to host memory now and back when the group resumes."""
        ...

    def recompute_s(self, num_tokens: int) -> float:
        """Seconds to prefill this many tokens again when the group is readmitted."""
        ...


@dataclass
class MeasuredCosts:
    """Linear costs from measured speeds (the real engine: `ModelRunner.measure_preemption_costs`)."""

    swap_s_per_block: float  # one block, out and back in, every layer's K and V
    prefill_s_per_token: float

    def swap_s(self, num_blocks: int) -> float:
        return num_blocks * self.swap_s_per_block

    def recompute_s(self, num_tokens: int) -> float:
        return num_tokens * self.prefill_s_per_token
