"""The engine loop: schedule -> execute -> post-process, on a clock the executor advances.

The same loop drives the real model runner (the clock advances by measured wall time) and the
simulator (by the cost model's prediction), so both run the very same scheduler and memory policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from paged.executor import Executor
from paged.memory import MemoryUsage
from paged.scheduler import Scheduler
from paged.sequence import SequenceGroup


@dataclass
class StepRecord:
    """One iteration, for the per-step metrics of docs/metrics.md."""

    start_time: float
    duration_s: float
    is_prefill: bool
    num_groups: int  # batched requests (Figure 13)
    num_seqs: int
    num_tokens: int
    num_preempted: int
    num_blocks_swapped_out: int
    num_blocks_swapped_in: int
    num_blocks_copied: int
    memory: MemoryUsage | None = None


class Engine:
    """Feeds requests to the scheduler as they arrive and runs steps until all are finished."""

    def __init__(
        self, scheduler: Scheduler, executor: Executor, track_memory: bool = False, memory_every: int = 1
    ):
        """track_memory: record the Figure 2 memory classes after every `memory_every`-th step (a
        systematic sample: the run's time-weighted averages stay unbiased at a fraction of the cost)."""
        self.scheduler = scheduler
        self.executor = executor
        self.track_memory = track_memory
        self.memory_every = max(1, memory_every)
        self.clock = 0.0
        self.steps: list[StepRecord] = []
        self.last_output = None  # the latest SchedulerOutput

    def step(self) -> list[SequenceGroup]:
        """Run one iteration at the current clock; returns the groups that finished in it."""
        sched = self.scheduler
        start = self.clock
        out = sched.schedule(start)
        self.last_output = out
        if out.is_empty and not (out.blocks_to_swap_out or out.blocks_to_copy):
            # Nothing to run (only rejections, or a lone group recompute-preempted itself).
            return sched.postprocess(out, [], start)
        result = self.executor.execute(out)
        self.clock = start + result.duration_s
        finished = sched.postprocess(out, result.outputs, self.clock)
        record = StepRecord(
            start,
            result.duration_s,
            out.is_prefill,
            len(out.scheduled_groups),
            out.num_seqs,
            out.num_batched_tokens,
            len(out.preempted),
            len(out.blocks_to_swap_out),
            len(out.blocks_to_swap_in),
            len(out.blocks_to_copy),
        )
        if self.track_memory and len(self.steps) % self.memory_every == 0:
            record.memory = sched.memory.usage(sched.running)
        self.steps.append(record)
        return finished

    def run(
        self,
        groups: Iterable[SequenceGroup],
        on_finish: Callable[[SequenceGroup], None] | None = None,
    ) -> list[SequenceGroup]:
        """Replay requests by arrival time until every one has finished (or been rejected).

        When nothing is running the clock jumps to the next arrival.
        """
        pending = sorted(groups, key=lambda g: g.arrival_time)
        sched = self.scheduler
        finished: list[SequenceGroup] = []
        i = 0
        while i < len(pending) or sched.has_unfinished:
            while i < len(pending) and pending[i].arrival_time <= self.clock:
                sched.add(pending[i])
                i += 1
            if not sched.has_unfinished:
                self.clock = pending[i].arrival_time
                continue
            clock_before = self.clock
            done = self.step()
            finished.extend(done)
            if on_finish is not None:
                for g in done:
                    on_finish(g)
            out = self.last_output
            if out.is_empty and not (out.preempted or out.rejected):
                # Nothing could run and nothing finished: only a new arrival can change that.
                if i >= len(pending):
                    raise RuntimeError(
                        "the scheduler can make no progress with the requests it holds; this is a "
                        "bug in a memory policy (can_allocate said LATER with nothing to wait for)"
                    )
                self.clock = max(clock_before, pending[i].arrival_time)
        return finished
