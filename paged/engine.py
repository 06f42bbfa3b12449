"""The engine loop: schedule -> execute -> post-process, on a clock the executor advances.

The same loop drives the real model runner (the clock advances by measured wall time) and the
simulator (by the cost model's prediction), so both run the very same scheduler and memory policy.
Data flows one way: the scheduler's output carries everything the executor needs (paged/step.py); the
executor's samples go back to the scheduler's post-processing; every step leaves a `StepRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from paged.executor import Executor
from paged.fast_forward import fast_forward, supports_fast_forward
from paged.scheduler import Scheduler
from paged.sequence import SequenceGroup
from paged.step import DecodeRun, StepRecord


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
        record = StepRecord(
            start,
            duration,
            executed,
            out.is_prefill,
            len(out.scheduled_groups),
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
            if self.track_memory and self.num_executed % self.memory_every == 0:
                record.memory = sched.memory.usage(sched.running)
            self.num_executed += 1
        self.steps.append(record)
        return record

    def run(
        self,
        groups: Iterable[SequenceGroup],
        on_finish: Callable[[SequenceGroup], None] | None = None,
        should_stop: Callable[[Engine], bool] | None = None,
    ) -> list[SequenceGroup]:
        """Replay requests by arrival time until every one has finished (or been rejected), or until
        `should_stop(engine)`, asked before every step, says so (harness/overload.py).

        When nothing is running the clock jumps to the next arrival. With `fast_forward`, runs of
        plain decode steps are advanced at once (paged/fast_forward.py).
        """
        pending = sorted(groups, key=lambda g: g.arrival_time)
        sched = self.scheduler
        finished: list[SequenceGroup] = []
        skip = self.fast_forward and supports_fast_forward(self.executor, sched.memory)
        i = 0
        while i < len(pending) or sched.has_unfinished:
            while i < len(pending) and pending[i].arrival_time <= self.clock:
                sched.add(pending[i])
                i += 1
            if not sched.has_unfinished:
                self.clock = pending[i].arrival_time
                continue
            if should_stop is not None and should_stop(self):
                break
            if skip:
                runs = fast_forward(self, pending[i].arrival_time if i < len(pending) else float("inf"))
                if runs:
                    self.steps.extend(runs)
                    for run in runs:
                        finished.extend(run.finished)
                        if on_finish is not None:
                            for g in run.finished:
                                on_finish(g)
                    continue
            record = self.step()
            finished.extend(record.finished)
            if on_finish is not None:
                for g in record.finished:
                    on_finish(g)
            if not (record.num_groups or record.num_preempted or record.num_rejected):
                # Nothing could run and nothing finished: only a new arrival can change that.
                if i >= len(pending):
                    raise RuntimeError(
                        "the scheduler can make no progress with the requests it holds; this is a "
                        "bug in a memory policy (can_allocate said LATER with nothing to wait for)"
                    )
                self.clock = max(record.start_time, pending[i].arrival_time)
        return finished
