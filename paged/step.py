"""What one iteration carries between the parts of the engine loop (engine.py):
schedule -> `SchedulerOutput` -> execute -> `ExecutorResult` -> post-process -> `StepRecord`.

The scheduler's output holds everything an executor needs (the sequences, their block tables, what
each computes, and the block operations), so an executor never asks the memory manager anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from paged.accounting import MEMORY_FIELDS, MemoryUsage
from paged.sequence import Sequence, SequenceGroup


@dataclass
class SchedulerOutput:
    """What one step runs. Under `step_composition="separate"` (vLLM v0.1) a step is a prompt step
    (`is_prefill`) or a decode step; under "mixed" (the paper's artifact) a step decodes every running
    group and may also prefill newly admitted ones, and `is_prefill` then means "has prompts".

    A prefill sequence computes tokens `prefill_ranges[seq_id] = (start, end)`: `start` tokens were
    found shared or cached (paper section 4.4), `end` is its length. A decode sequence (every running
    sequence without a prefill range) computes its newest token, [len - 1, len). The prompt groups are
    the last `num_prefill_groups` of `scheduled_groups` (all of them in a separate prompt step).
    `block_tables[seq_id]` maps each running sequence's logical blocks to physical block ids, as they
    are for this step (after its swaps, copies and appends); it is filled for executors that read it
    (`Executor.needs_block_tables`: the real one) and left empty for the simulated one, which prices a
    step by its shape."""

    scheduled_groups: list[SequenceGroup] = field(default_factory=list)
    is_prefill: bool = False  # the step prefills prompts (a mixed step may decode others too)
    num_batched_tokens: int = 0  # tokens the forward pass computes
    num_seqs: int = 0  # sequences in the batch
    num_prefill_groups: int = 0  # the prompt groups: the last ones of scheduled_groups
    block_tables: dict[int, list[int]] = field(default_factory=dict)
    prefill_ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    # (device, host) and (host, device) pairs. Pairs, not a dict: a block shared across groups (a
    # shared prefix, a cached block) is copied once for each group that swaps it out.
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    # The last num_host_offloads pairs of blocks_to_swap_out are the prefix cache's host-tier offloads
    # (paged/host_tier.py), which a cost model may overlap with the step's compute.
    num_host_offloads: int = 0
    preempted: list[SequenceGroup] = field(default_factory=list)
    rejected: list[SequenceGroup] = field(default_factory=list)
    # Chunked prefill: prompt groups whose range ends before their prompt does. They sample nothing
    # in this step; their prompt goes on in a later one.
    partial_prefills: list[SequenceGroup] = field(default_factory=list)
    # A padded static batch (SchedulerConfig.pad_batch, FasterTransformer): (rows, prompt length) the
    # step really computes: every sequence of the batch, finished ones too, at the batch's longest
    # prompt. None: the step computes only the scheduled sequences, unpadded.
    padded_batch: tuple[int, int] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.scheduled_groups

    @property
    def has_block_ops(self) -> bool:
        return bool(self.blocks_to_swap_out or self.blocks_to_swap_in or self.blocks_to_copy)

    def compute_range(self, seq: Sequence) -> tuple[int, int]:
        """The token positions [start, end) the sequence computes in this step."""
        if self.is_prefill:
            r = self.prefill_ranges.get(seq.seq_id)
            if r is not None:
                return r
        n = len(seq.token_ids)
        return n - 1, n


@dataclass(slots=True)
class Sample:
    """One sampled token for the sequence `parent_seq_id`. Several samples with the same parent
    fork it (beam search); a running sequence that gets none is dropped (a losing beam)."""

    parent_seq_id: int
    token_id: int
    logprob: float = 0.0
    top: dict[int, float] | None = None  # asked for (SamplingParams.logprobs): the top tokens' logprobs


@dataclass
class ExecutorResult:
    outputs: list[list[Sample]]  # one list per group in SchedulerOutput.scheduled_groups
    duration_s: float  # wall time on a real executor, predicted time on a simulated one


@dataclass(slots=True)
class StepRecord:
    """One iteration, for the per-step metrics of docs/metrics.md. Every call of `Engine.step` makes
    one. `executed` is False when there was nothing for the executor to do (only rejections, or a lone
    group preempted itself by recomputation): no executor call, no time. A step that only swapped out
    still runs the executor for its block operations."""

    start_time: float
    duration_s: float
    executed: bool  # the executor ran (a forward pass, or block operations alone)
    is_prefill: bool  # the step prefills prompts (under "mixed" it may decode others too)
    num_groups: int  # groups the step computes (pagelab's Figure 13 count)
    num_running_groups: int  # groups running after scheduling, new prompts included (the artifact's
    # Figure 13 count, `len(running)` in its scheduler; equal to num_groups in a decode or mixed step)
    num_seqs: int
    num_tokens: int
    num_preempted: int
    num_rejected: int
    num_blocks_swapped_out: int
    num_blocks_swapped_in: int
    num_blocks_copied: int
    finished: list[SequenceGroup]  # groups that finished in this step, rejected ones included
    memory: MemoryUsage | None = None


@dataclass(slots=True)
class DecodeRun:
    """k = len(start_times) consecutive plain decode steps that the fast-forward advanced at once
    (paged/fast_forward.py). It stands for k `StepRecord`s, each executed, a decode step of
    `num_groups` groups and `num_seqs` sequences (one token each), nothing preempted, rejected,
    swapped or copied, and the groups in `finished` finishing at the last one. `memory`: [k, 7]
    Figure 2 counts after each step in MEMORY_FIELDS order, NaN on steps not sampled; None when
    memory is not tracked. `records()` gives the StepRecords themselves."""

    start_times: np.ndarray
    durations: np.ndarray
    num_groups: int
    num_seqs: int
    finished: list[SequenceGroup]
    memory: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start_times)

    def records(self, total_slots: int = 0) -> list[StepRecord]:
        """The k steps as StepRecords (total_slots: MemoryUsage.total of the sampled ones)."""
        k = len(self.start_times)
        out = []
        for j in range(k):
            record = StepRecord(
                float(self.start_times[j]),
                float(self.durations[j]),
                True,
                False,
                self.num_groups,
                self.num_groups,
                self.num_seqs,
                self.num_seqs,
                0,
                0,
                0,
                0,
                0,
                self.finished if j == k - 1 else [],
            )
            if self.memory is not None and not np.isnan(self.memory[j, 0]):
                values = (int(v) for v in self.memory[j])
                record.memory = MemoryUsage(total_slots, **dict(zip(MEMORY_FIELDS, values)))
            out.append(record)
        return out
