"""The simulated executor: the engine's executor with the GPU replaced by the cost model.

It allocates no tensors. Each step's duration is the cost model's prediction for the step's
composition (prompt tokens and cached context, decoding sequences and their context lengths, or both
in a mixed step; plus swaps and copies); tokens come from the NullExecutor's rule (one per running
sequence, never EOS, so every request generates exactly its trace's output length; beam parents drawn
from the beam model, paged/beam_model.py).
"""

from __future__ import annotations

import numpy as np

from harness.sim.cost_model import CostModel
from paged import ExecutorResult, NullExecutor, SchedulerOutput, SequenceStatus
from paged.beam_model import BeamModel

_RUNNING = SequenceStatus.RUNNING


class SimulatedExecutor(NullExecutor):
    """NullExecutor's tokens on the cost model's clock: each step lasts what the cost model predicts
    for its composition, times `time_scale`."""

    def __init__(
        self,
        cost_model: CostModel,
        seed: int = 0,
        time_scale: float = 1.0,
        beam_model: BeamModel | str = "calibrated",
    ) -> None:
        # beam_model: how beam search's parents are drawn (paged/beam_model.py): by default the fit
        # to real beam runs, harness/data/beam_model.json; "uniform" for the earlier draw.
        super().__init__(step_time_s=0.0, seed=seed, beam_model=beam_model)
        self.cost_model = cost_model
        self.time_scale = time_scale  # every step's predicted time multiplied by this
        # vAttention (baselines/vattention.py): the memory policy's (pages mapped, pages unmapped) since
        # the last call, and whether mapping overlaps the step's compute; None: nothing to map.
        self.page_ops = None
        self.overlap_mapping = True
        # Whether the host tier's offloads (paged/host_tier.py) overlap the step's compute
        # (system.host_offload_overlap); false: they add to it, as the real engine's copies do.
        self.overlap_offloads = False

    def step_ms(
        self, out: SchedulerOutput, decode: tuple[int, int] | None = None, page_ops: tuple[int, int] = (0, 0)
    ) -> float:
        """The step's predicted milliseconds. decode: (sequences, context tokens) of decodes the step
        runs besides out.scheduled_groups (a mixed step whose decodes the fast-forward advanced).
        page_ops: the vAttention pages the step maps and unmaps (`page_ops`)."""
        cm = self.cost_model
        if out.padded_batch is not None:
            ms = padded_ms(cm, out)
        elif out.is_prefill:
            groups = out.scheduled_groups
            num_decode_groups = len(groups) - out.num_prefill_groups
            if num_decode_groups or decode:  # a mixed step: its decoding groups come first
                num_seqs, context = decode or _decode_shape(groups[:num_decode_groups])
                prompts = _prefill_shape(groups[num_decode_groups:], out.prefill_ranges)
                ms = cm.mixed(prompts, num_seqs, context).total_ms
            else:
                ms = cm.prefill(_prefill_shape(groups, out.prefill_ranges)).total_ms
        else:
            num_seqs, context = decode or _decode_shape(out.scheduled_groups)
            ms = cm.decode_ms(num_seqs, context) if num_seqs else 0.0
        offloads = out.num_host_offloads if self.overlap_offloads else 0
        moved = len(out.blocks_to_swap_out) - offloads + len(out.blocks_to_swap_in)
        if moved:
            ms += cm.swap_ms(moved)
        if out.blocks_to_copy:
            ms += cm.copy_ms(len(out.blocks_to_copy))
        if page_ops != (0, 0):
            map_ms = cm.page_map_ms(*page_ops)
            ms = max(ms, map_ms) if self.overlap_mapping else ms + map_ms
        if offloads:  # copied on their own stream while the step computes (LMCache)
            ms = max(ms, cm.swap_ms(offloads))
        return ms

    def run_durations(
        self, scheduler, num_seqs: int, context: int, k: int, lead: tuple[int, int]
    ) -> np.ndarray:
        """Seconds each of the next k plain decode steps takes: `step_ms` of a decode step of
        num_seqs sequences over context + num_seqs * (j - 1) tokens at step j (a padded batch: its
        rows at the batch's common context, from the first running sequence's `lead` = (length,
        prompt length), one more per step), evaluated with the same floating-point operations in
        the same order, element by element, so every value equals stepping's."""
        cm = self.cost_model
        padded = scheduler._padded_batch if scheduler.config.pad_batch else None
        steps = np.arange(k, dtype=np.int64)
        if padded is not None:
            rows, prompt_len = padded
            num_seqs = rows
            contexts = rows * (prompt_len + lead[0] - lead[1] + steps)
        else:
            contexts = context + num_seqs * steps
        ms = cm.decode_ms_array(num_seqs, contexts)
        return ms * self.time_scale / 1e3

    def execute(self, out: SchedulerOutput, decode: tuple[int, int] | None = None) -> ExecutorResult:
        ops = self.page_ops() if self.page_ops is not None else (0, 0)
        duration = self.step_ms(out, decode, ops) * self.time_scale / 1e3
        result = super().execute(out)
        result.duration_s = duration
        return result


class ModelledPreemptionCosts:
    """preemption_mode="cost" in the simulator (paged/preemption.py): the cost model's time to swap a
    group's blocks out and back in (two PCIe moves), against a prompt step of its tokens."""

    def __init__(self, cost_model: CostModel, time_scale: float = 1.0) -> None:
        self.cost_model = cost_model
        self.time_scale = time_scale

    def swap_s(self, num_blocks: int) -> float:
        return 2 * self.cost_model.swap_ms(num_blocks) * self.time_scale / 1e3

    def recompute_s(self, num_tokens: int) -> float:
        if num_tokens == 0:
            return 0.0
        return self.cost_model.prefill([(num_tokens, 0)]).total_ms * self.time_scale / 1e3


def padded_ms(cm: CostModel, out: SchedulerOutput) -> float:
    """A step of a padded static batch (FasterTransformer, `SchedulerConfig.pad_batch`): every row of
    the batch computes, finished or not, as if its prompt were the batch's longest. The prompt step
    runs rows x longest prompt tokens; a decode step runs rows sequences, each at context longest
    prompt + tokens generated so far (the same for every member: they started together)."""
    rows, prompt_len = out.padded_batch
    if out.is_prefill:
        return cm.prefill([(prompt_len, 0)] * rows).total_ms
    for g in out.scheduled_groups:
        for s in g.seqs:
            if s.status is _RUNNING:
                context = prompt_len + len(s.token_ids) - s.num_prompt_tokens
                return cm.decode_ms(rows, rows * context)
    return 0.0


def prefill_shape(out: SchedulerOutput) -> list[tuple[int, int]]:
    """(new tokens, cached tokens) of each sequence a prompt step computes (a mixed step: of its
    prompt groups, the last `num_prefill_groups`)."""
    groups = out.scheduled_groups
    prompts = groups[len(groups) - out.num_prefill_groups :] if out.is_prefill else []
    return _prefill_shape(prompts, out.prefill_ranges)


def decode_shape(out: SchedulerOutput) -> tuple[int, int]:
    """(sequences, context tokens in all) of a decode step (a mixed step: of its decoding groups)."""
    groups = out.scheduled_groups
    return _decode_shape(groups[: len(groups) - out.num_prefill_groups] if out.is_prefill else groups)


def _prefill_shape(groups, ranges: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """(new tokens, cached tokens) of each sequence of the prompt groups that computes: its range in
    the step (a chunk, under chunked prefill)."""
    seqs = []
    for g in groups:
        for s in g.seqs:
            if s.status is _RUNNING:
                start, end = ranges[s.seq_id]
                if end > start:
                    seqs.append((end - start, start))
    return seqs


def _decode_shape(groups) -> tuple[int, int]:
    num_seqs = 0
    context = 0
    for g in groups:
        seqs = g.seqs
        if len(seqs) == 1:
            num_seqs += 1
            context += len(seqs[0].token_ids)
            continue
        for s in seqs:
            if s.status is _RUNNING:
                num_seqs += 1
                context += len(s.token_ids)
    return num_seqs, context
