"""The engine loop: schedule -> execute -> post-process, on a clock the executor advances.

The same loop drives the real model runner (the clock advances by measured wall time) and the
simulator (by the cost model's prediction), so both run the very same scheduler and memory policy.
Data flows one way: the scheduler's output carries everything the executor needs (paged/step.py); the
executor's samples go back to the scheduler's post-processing; every step leaves a `StepRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from paged.executor import Executor
from paged.fast_forward import fast_forward, supports_fast_forward
from paged.scheduler import Scheduler
from paged.sequence import SequenceGroup
from paged.step import DecodeRun, SchedulerOutput, StepRecord


class Engine:
    """Feeds requests to the scheduler as they arrive and runs steps until all are finished."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        track_memory: bool = False,
        memory_every: int = 1,
        fast_forward: bool = False,
    ):
        """track_memory: record the Figure 2 memory classes after every `memory_every`-th executed step
        (a systematic sample: the run's time-weighted averages stay unbiased at a fraction of the cost).
        fast_forward: `run` advances runs of plain decode steps at once where the executor and the
        memory policy can (paged/fast_forward.py: the simulator's; results identical to stepping)."""
        self.scheduler = scheduler
        self.executor = executor
        self.track_memory = track_memory
        self.memory_every = max(1, memory_every)
        self.fast_forward = fast_forward
        self.clock = 0.0
        # One StepRecord per step, or one DecodeRun per fast-forwarded run of steps (records()
        # expands them).
        self.steps: list[StepRecord | DecodeRun] = []
        self.num_executed = 0  # steps that called the executor (fast-forwarded ones included)

    @property
    def num_steps(self) -> int:
        return sum(len(r) if type(r) is DecodeRun else 1 for r in self.steps)

    def records(self) -> list[StepRecord]:
        """Every step as a StepRecord, fast-forwarded runs expanded."""
        total = self.scheduler.memory.num_total_slots
        out: list[StepRecord] = []
        for r in self.steps:
            if type(r) is DecodeRun:
                out.extend(r.records(total))
            else:
                out.append(r)
        return out

    def step(self) -> StepRecord:
        """Run one iteration at the current clock and record it."""
        sched = self.scheduler
        start = self.clock
        # Block tables only for an executor that reads them (read each step: a caller may swap the
        # executor, as harness/calib/sim_vs_real.py does).
        sched.emit_block_tables = getattr(self.executor, "needs_block_tables", True)
        out = sched.schedule(start)
        num_running = len(sched.running)  # before post-processing drops the groups that finish
        # Nothing to execute: only rejections, or a lone group recompute-preempted itself.
        executed = not out.is_empty or out.has_block_ops
        if executed:
            result = self.executor.execute(out)
            duration, samples = result.duration_s, result.outputs
        else:
            duration, samples = 0.0, []
        self.clock = start + duration
        finished = sched.postprocess(out, samples, self.clock)
        return self.record(out, start, duration, executed, len(out.scheduled_groups), num_running, finished)

    @property
    def memory_due(self) -> bool:
        """Whether the next executed step's Figure 2 count is sampled (every memory_every-th)."""
        return self.track_memory and self.num_executed % self.memory_every == 0

    def record(
        self,
        out: SchedulerOutput,
        start: float,
        duration: float,
        executed: bool,
        num_groups: int,
        num_running: int,
        finished: list[SequenceGroup],
    ) -> StepRecord:
        """Record a step (this engine's, or one the fast-forward took: paged/fast_forward.py), with
        its Figure 2 count when one is due."""
        record = StepRecord(
            start,
            duration,
            executed,
            out.is_prefill,
            num_groups,
            num_running,
            out.num_seqs,
            out.num_batched_tokens,
            len(out.preempted),
            len(out.rejected),
            len(out.blocks_to_swap_out),
            len(out.blocks_to_swap_in),
            len(out.blocks_to_copy),
            finished,
        )
        if executed:
            if self.memory_due:
                record.memory = self.scheduler.memory.usage(self.scheduler.running)
            self.num_executed += 1
        self.steps.append(record)
        return record

    def run(
        self,
        groups: Iterable[SequenceGroup],
        on_finish: Callable[[SequenceGroup], None] | None = None,
        stop: StopRule | None = None,
    ) -> list[SequenceGroup]:
        """Replay requests by arrival time until every one has finished (or been rejected), or until
        `stop.should_stop(engine)`, asked before the first step at or after `stop.next_check`, says
        so (harness/overload.py).

        When nothing is running the clock jumps to the next arrival. With `fast_forward`, runs of
        plain decode steps are advanced at once (paged/fast_forward.py).
        """
        arrivals = Arrivals(groups)
        sched = self.scheduler
        finished: list[SequenceGroup] = []
        skip = self.fast_forward and supports_fast_forward(self.executor, sched.memory)
        while arrivals or sched.has_unfinished:
            arrivals.add_until(sched, self.clock)
            if not sched.has_unfinished:
                self.clock = arrivals.next_time
                continue
            if stop is not None and self.clock >= stop.next_check and stop.should_stop(self):
                break
            if skip:
                num_records = len(self.steps)
                done = fast_forward(self, arrivals, stop.next_check if stop is not None else float("inf"))
                if done is not None:
                    if len(self.steps) == num_records:  # it would loop forever: say so instead
                        raise RuntimeError("fast_forward advanced no step: a bug in paged/fast_forward.py")
                    finished.extend(done)
                    if on_finish is not None:
                        for g in done:
                            on_finish(g)
                    continue
            record = self.step()
            finished.extend(record.finished)
            if on_finish is not None:
                for g in record.finished:
                    on_finish(g)
            if not (record.num_groups or record.num_preempted or record.num_rejected):
                # Nothing could run and nothing finished: only a new arrival can change that.
                if not arrivals:
                    raise RuntimeError(
                        "the scheduler can make no progress with the requests it holds; this is a "
                        "bug in a memory policy (can_allocate said LATER with nothing to wait for)"
                    )
                self.clock = max(record.start_time, arrivals.next_time)
        return finished


class StopRule(Protocol):
    """When to end a run early (harness/overload.py): asked once the clock reaches next_check."""

    next_check: float

    def should_stop(self, engine: Engine) -> bool: ...


class Arrivals:
    """The requests not yet given to the scheduler, in arrival order."""

    __slots__ = ("pending", "i")

    def __init__(self, groups: Iterable[SequenceGroup]) -> None:
        self.pending = sorted(groups, key=lambda g: g.arrival_time)
        self.i = 0

    def __bool__(self) -> bool:
        return self.i < len(self.pending)

    @property
    def next_time(self) -> float:
        """When the next one arrives (inf: none left)."""
        return self.pending[self.i].arrival_time if self.i < len(self.pending) else float("inf")

    def add_until(self, scheduler: Scheduler, clock: float) -> None:
        """Give the scheduler every request that has arrived by `clock`."""
        pending, i = self.pending, self.i
        while i < len(pending) and pending[i].arrival_time <= clock:
            scheduler.add(pending[i])
            i += 1
        self.i = i
