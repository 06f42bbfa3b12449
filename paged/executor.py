"""The executor interface: what runs a scheduled step, on a real model or on a cost model.

The engine loop is schedule -> execute -> post-process (engine.py). An executor receives the
`SchedulerOutput`, performs its block operations in the order swap-out, swap-in, copy (a block freed
by a swap-out may be the target of a copy in the same step), writes the KV of every scheduled token of
a layer before attention of that layer reads the cache (so a prompt may read blocks that another
prompt of the same step is filling: identical prompts, shared prefixes), and returns one list of
samples per scheduled group plus how long the step took.
"""

from __future__ import annotations

import random
from typing import Protocol

import numpy as np

from paged.beam_model import BeamModel, load_beam_model
from paged.sequence import SequenceStatus
from paged.step import ExecutorResult, Sample, SchedulerOutput


class Executor(Protocol):
    """Runs one scheduled step. Reads only the `SchedulerOutput` (and the sequences it names): block
    tables, compute ranges and block operations all come in it, never from the memory manager."""

    # Whether it reads SchedulerOutput.block_tables (a real model does; a cost model needs only the
    # step's shape, and the scheduler then skips building them). The Engine reads it before every
    # step; an executor without it gets the tables.
    needs_block_tables: bool

    def execute(self, out: SchedulerOutput) -> ExecutorResult: ...


class NullExecutor:
    """Tokens without a model, for tests and the scheduler benchmark: no tensors, fixed step time.

    Every running sequence gets one token, never EOS; output lengths therefore follow each request's
    max_tokens, as in vLLM's benchmarks. Beam-search groups have their new beams' parents drawn from
    the current ones by `beam_model` (paged/beam_model.py; seeded), which exercises fork and free as
    real beam search does: "uniform" (the default here, each parent uniform over the current beams),
    "calibrated" (the fit to real beam runs that the simulator uses), "geometric:THETA", or a
    BeamModel. Under a geometric model the beams are ranked by cumulative log-probability, and each
    new beam gets a log-probability that puts it at its drawn rank, so the next step ranks the beams
    as real beam search would.
    """

    needs_block_tables = False

    def __init__(
        self,
        step_time_s: float = 0.0,
        seed: int = 0,
        vocab_size: int = 50_000,
        beam_model: BeamModel | str = "uniform",
    ) -> None:
        self.step_time_s = step_time_s
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)
        self.beam_model = load_beam_model(beam_model)

    def execute(self, out: SchedulerOutput, decode: tuple[int, int] | None = None) -> ExecutorResult:
        """Samples for out.scheduled_groups (decode: (sequences, context) of decodes the fast-forward
        advances itself in the same step; a fixed step time does not depend on them)."""
        outputs = []
        vocab = self.vocab_size
        for group in out.scheduled_groups:
            seqs = group.seqs
            if len(seqs) == 1:
                s = seqs[0]
                outputs.append([Sample(s.seq_id, (len(s.token_ids) * 7919 + s.seq_id) % vocab)])
                continue
            running = [s for s in seqs if s.status is SequenceStatus.RUNNING]
            if group.sampling_params.use_beam_search:
                if self.beam_model.kind != "uniform":
                    outputs.append(self._beam_step(running, group.sampling_params.n))
                    continue
                parents = sorted(self.rng.choices(running, k=len(running)), key=lambda s: s.seq_id)
            else:
                parents = running
            outputs.append(
                [
                    Sample(p.seq_id, (len(p.token_ids) * 7919 + p.seq_id * 31 + i) % vocab)
                    for i, p in enumerate(parents)
                ]
            )
        return ExecutorResult(outputs, self.step_time_s)

    # ------------------------------------------------------------------ fast-forward (paged/fast_forward.py)
    # A plain decode step's token for a sequence of length x is (x * 7919 + offset) % vocab, offset
    # its id (a group of one) or id * 31 + its index among the group's running sequences: `execute`.
    def run_offsets(self, groups: list) -> list[int]:
        """The token offset of each running sequence of `groups`, in order (no beam search)."""
        offsets = []
        for group in groups:
            seqs = group.seqs
            if len(seqs) == 1:
                offsets.append(seqs[0].seq_id)
                continue
            i = 0
            for s in seqs:
                if s.status is SequenceStatus.RUNNING:
                    offsets.append(s.seq_id * 31 + i)
                    i += 1
        return offsets

    def run_tokens(self, offset: int, start: int, end: int) -> list[int]:
        """The tokens `execute` gives a sequence of that offset at lengths start .. end - 1."""
        vocab = self.vocab_size
        return [(x * 7919 + offset) % vocab for x in range(start, end)]

    def run_durations(
        self, scheduler, num_seqs: int, context: int, k: int, lead: tuple[int, int]
    ) -> np.ndarray:
        """Seconds each of the next k plain decode steps takes (num_seqs sequences whose contexts
        hold `context` tokens at the first step, one more each per step; lead: length and prompt
        length of the first running sequence)."""
        return np.full(k, float(self.step_time_s))

    def _beam_step(self, running: list, width: int) -> list[Sample]:
        """One beam-search step under a ranked beam model: parents drawn by rank, and each new beam's
        log-probability chosen so that its cumulative log-probability, -(generated length) - j / m for
        new rank j of m, orders the beams as drawn (between -2 and 0 per token)."""
        # Best first; ties (the first step's identical beams) by id, so the draw is deterministic.
        ranked = sorted(running, key=lambda s: (-s.cumulative_logprob, s.seq_id))
        m = len(ranked)
        gen_len = ranked[0].num_output_tokens + 1
        vocab = self.vocab_size
        samples = []
        for j, r in enumerate(self.beam_model.draw(m, m, self.rng, width)):
            p = ranked[r]
            target = -gen_len - j / m
            token = (len(p.token_ids) * 7919 + p.seq_id * 31 + j) % vocab
            samples.append(Sample(p.seq_id, token, target - p.cumulative_logprob))
        return samples
