"""Exact fast-forward: runs of plain decode steps advanced at once, identical to stepping them.

Most steps of a simulated run decide nothing new: every running group decodes one token per
sequence; nobody arrives who could be admitted, nobody finishes, no block runs out, nothing is
swapped or forked. Until the next such event the scheduler's decision is already known, so the
engine (engine.py) calls `fast_forward` here first, which asks `Scheduler.next_step()` and
`Scheduler.fast_forwardable()` whether the next step is such a step and, if so, keeps the running
sequences as arrays (one open batch, `_Batch`) and advances them (docs/simulator.md):

- a stretch of plain decode steps ends at the first event: the step at which a sequence reaches its
  length limit (its last token is appended and the scheduler's own stop check frees it:
  `Scheduler.finish_run`), the step after which a request has arrived, the last step whose appends
  the free blocks cover (the next would preempt), a contiguous chunk's end, the early stop's check;
- between stretches, as the engine's loop: arrivals join the queue and `Scheduler.next_step` says
  what the next step does; a step that admits the queue's head is taken inside the batch (the
  engine's own prompt step, or in mixed steps the batch's decodes here and the prompts by
  `Scheduler.admit_into_decode`) and the admitted groups join; any other answer closes the batch and
  the engine steps;
- the memory policy's view (`decode_run`: `appends`, `take`, `budget`, `limits`, `usage_rows`) says
  at which steps a sequence's append does something and takes the blocks in stepping's order (step,
  then running order), so block tables and free lists end up identical;
- the executor gives the step durations (`run_durations`: the cost model over the growing context,
  the same floating-point operations element by element) and the tokens (`run_offsets`,
  `run_tokens`: the rule of its `execute`); the clock is their running sum, as stepping adds them;
  tokens and timestamps are appended lazily, when something reads the sequence or at the end;
- the Figure 2 counts after each sampled step come from the view's `usage_rows`, the count after
  a stretch's last step from `usage()` itself.

Each stretch is recorded as one `DecodeRun`, which stands for its k StepRecords (harness/metrics.py
expands it into the same per-step series). tests/test_fast_forward.py checks, on random workloads of
every system and on every preset, that timestamps, tokens, free lists and per-step series are
identical with and without. An executor without `run_tokens` (the real model) or a memory policy
without `decode_run` is simply stepped.
"""

from __future__ import annotations

import inspect

import numpy as np

from paged.accounting import MEMORY_FIELDS
from paged.sequence import SequenceGroup, SequenceStatus
from paged.step import DecodeRun, SchedulerOutput, StepRecord

_RUNNING = SequenceStatus.RUNNING


def supports_fast_forward(executor, memory) -> bool:
    """Whether the executor and the memory policy can advance runs of decode steps: the executor
    gives a run's tokens and durations and prices a mixed step's decodes it is told of
    (`execute(out, decode=...)`; a subclass whose execute takes only `out` is stepped)."""
    if not (hasattr(executor, "run_tokens") and hasattr(memory, "decode_run")):
        return False
    return "decode" in inspect.signature(executor.execute).parameters


def fast_forward(engine, arrivals, deadline: float = float("inf")) -> list[SequenceGroup] | None:
    """Advance the engine from its current state for as long as every step is a plain decode step
    of the running batch, or a step that also admits arrivals (done by the scheduler's own
    admission); returns the groups finished meanwhile, or None when the next step is neither (the
    engine steps it). The steps go into engine.steps. arrivals: the engine's `Arrivals`, given to
    the scheduler as the engine's loop would; deadline: return once the clock reaches it (the early
    stop's next check)."""
    sched = engine.scheduler
    if not sched.fast_forwardable(sched.running):  # beam search, an EOS to watch: step it
        return None
    mode = sched.next_step()  # before join: it puts the running batch in stepping's order
    if mode is None:
        return None
    batch = _Batch(engine)
    if not batch.join(list(sched.running)):
        return None
    finished: list[SequenceGroup] = []
    num_records = len(engine.steps)
    while True:
        if mode == "admit":
            if not batch.admission_step(finished):
                break
        elif not batch.stretch(mode, arrivals.next_time, deadline, finished):
            break
        # Between steps, as the engine's loop: arrivals join the queue, then the scheduler's answer.
        arrivals.add_until(sched, engine.clock)
        if engine.clock >= deadline or not sched.running or batch.split:
            break
        mode = sched.next_step(batch.num_seqs)
        if mode is None:
            break
        if sched.waiting:
            # The head's verdict may change what the memory policy counts (a contiguous arena's
            # free chunks too small for the head are external fragmentation): count afresh.
            batch.u0 = None
    batch.close()
    if len(engine.steps) == num_records:
        return None  # not one step could be advanced here (its appends would preempt): step it
    return finished


class _Batch:
    """The running sequences being advanced, as arrays; admitted groups join. t counts the steps
    advanced; sequence i holds `base[i] + t` tokens after step t (its tokens are appended lazily:
    `materialize`), its newest token's KV not yet computed."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.sched = engine.scheduler
        self.executor = engine.executor
        self.memory = self.sched.memory
        self.view = None  # the memory policy's side (decode_run)
        self.seqs: list = []
        self.owners: list[SequenceGroup] = []
        self.offsets: list[int] = []  # the executor's token offsets
        self.materialized: list[int] = []  # the step up to which each holds its tokens
        self.base = np.zeros(0, dtype=np.int64)
        self.max_kv = np.zeros(0, dtype=np.int64)  # KV tokens at its last token
        self.ends = np.zeros(0, dtype=np.int64)  # the step whose token stops it, or its limit
        self.stops = np.zeros(0, dtype=np.int64)  # the step whose token stops it
        self.alive = np.zeros(0, dtype=np.int64)  # indices still running, in running order
        self.times: list[float] = []  # times[t - 1]: when step t ended
        self.t = 0
        self.u0 = None  # the Figure 2 count after step t, when known
        self.split = False  # a group lost some of its sequences: the batch must close

    @property
    def num_seqs(self) -> int:
        return len(self.alive)

    def join(self, groups: list[SequenceGroup]) -> bool:
        """Add the running sequences of `groups` (appended to the running batch, in order); False if
        one cannot be advanced plainly (its last block is shared: copy-on-write)."""
        if not groups:
            return True
        if not self.sched.fast_forwardable(groups):
            return False
        max_model_len = self.sched.config.max_model_len
        seqs, owners, stop_lens = [], [], []
        for g in groups:
            stop_len = min(g.num_prompt_tokens + g.sampling_params.max_tokens, max_model_len)
            for s in g.seqs:
                if s.status is _RUNNING:
                    seqs.append(s)
                    owners.append(g)
                    stop_lens.append(stop_len)
        t = self.t
        base = np.array([len(s.token_ids) for s in seqs], dtype=np.int64) - t
        if self.view is None:
            self.view = self.memory.decode_run(seqs, base)
            if self.view is None:
                return False
        elif not self.view.join(seqs, base):
            return False
        first = len(self.seqs)
        self.seqs += seqs
        self.owners += owners
        self.offsets += self.executor.run_offsets(groups)
        self.materialized += [t] * len(seqs)
        max_kv = np.array(stop_lens, dtype=np.int64) - 1
        stops = max_kv + 1 - base
        self.base = np.concatenate((self.base, base))
        self.max_kv = np.concatenate((self.max_kv, max_kv))
        self.stops = np.concatenate((self.stops, stops))
        self.ends = np.minimum(self.stops, self.view.limits())
        self.alive = np.concatenate((self.alive, np.arange(first, len(self.seqs))))
        self.u0 = None
        return True

    def materialize(self, i: int, upto: int) -> None:
        """Sequence i gets its tokens and timestamps up to step `upto`."""
        done = self.materialized[i]
        if done < upto:
            start = int(self.base[i]) + done
            tokens = self.executor.run_tokens(self.offsets[i], start, start + upto - done)
            self.seqs[i].token_ids.extend(tokens)
            self.seqs[i].token_times.extend(self.times[done:upto])
            self.materialized[i] = upto

    def set_computed(self) -> None:
        """Every running sequence's computed tokens as after step t (usage() reads them)."""
        seqs = self.seqs
        alive = self.alive
        for i, n in zip(alive.tolist(), (self.base[alive] + (self.t - 1)).tolist()):
            seqs[i].num_computed_tokens = n

    def close(self) -> None:
        """Every sequence still running gets its tokens: the scheduler may read them now."""
        for i in self.alive.tolist():
            self.materialize(i, self.t)
        self.set_computed()

    def _usage_row(self) -> list[float]:
        self.set_computed()
        self.u0 = self.memory.usage(self.sched.running)
        return [getattr(self.u0, f) for f in MEMORY_FIELDS]

    def _appends(self, k: int) -> tuple[int, list]:
        """The appends of the next k steps that do something, and how many steps the free blocks
        cover (the first step past them would preempt)."""
        appends = self.view.appends(self.alive, self.t, self.t + k)
        budget = self.view.budget()
        taken = 0
        for step, _, takes_block in appends:
            if takes_block:
                taken += 1
                if taken > budget:
                    return step - 1 - self.t, appends
        return k, appends

    def _take(self, appends: list, upto: int) -> None:
        """Carry out the appends up to step `upto`, in stepping's order (with the sequence's tokens
        up to that step where the memory policy reads them)."""
        take = self.view.take
        needs_tokens = self.view.needs_tokens
        for step, i, _ in appends:
            if step > upto:
                break
            if needs_tokens:
                self.materialize(i, step - 1)
            take(self.seqs[i])

    def _stop(self, now: float) -> list[SequenceGroup]:
        """The sequences whose last token step t gave: stopped by the scheduler's own check."""
        alive, t = self.alive, self.t
        stopping = alive[self.stops[alive] == t]
        if not len(stopping):
            return []
        stopped = []
        for i in stopping.tolist():
            self.materialize(i, t)
            self.seqs[i].num_computed_tokens = int(self.base[i]) + t - 1
            stopped.append((self.owners[i], self.seqs[i]))
        self.alive = alive[self.stops[alive] != t]
        done = self.sched.finish_run(stopped, now)
        # A group with sequences still running changes their token offsets: close here.
        self.split = any(g.metrics.finished_time is None for g, _ in stopped)
        return done

    def stretch(self, mode: str, next_arrival: float, deadline: float, finished: list) -> bool:
        """Advance plain decode steps up to the first event (a stop, the free blocks' end, a limit;
        in mode until_arrival the step after which a request has arrived; the deadline) as one
        DecodeRun. False if not even one step can be advanced."""
        engine = self.engine
        sched = self.sched
        alive = self.alive
        if not len(alive):
            return False
        t = self.t
        k = int(self.ends[alive].min()) - t
        if k < 1:
            return False
        k, appends = self._appends(k)
        if k < 1:
            return False
        n = len(alive)
        lead = int(self.base[alive[0]]) + t, self.seqs[alive[0]].num_prompt_tokens
        context = int(self.base[alive].sum()) + n * t
        durations = self.executor.run_durations(sched, n, context, k, lead)
        clock = np.cumsum(np.concatenate(([engine.clock], durations)))
        cut = min(deadline, next_arrival if mode == "until_arrival" else deadline)
        if cut <= clock[-1]:
            k = int(np.searchsorted(clock, cut, side="left"))  # the first step ending at/after it
            durations = durations[:k]
            clock = clock[: k + 1]
        self.times.extend(clock[1:].tolist())
        now = self.times[-1]
        num_groups = len(sched.running)
        # Figure 2 counts after each step stepping would sample (every memory_every-th executed
        # step): from the count before the stretch, the last one by usage() itself.
        rows = None
        if engine.track_memory:
            unsampled = (engine.num_executed + np.arange(k)) % engine.memory_every != 0
            if not unsampled.all():
                rows = np.full((k, 7), np.nan)
                if not unsampled[:-1].all():
                    if self.u0 is None:
                        self._usage_row()
                    allocs = [(step, i) for step, i, takes in appends if takes and step <= t + k]
                    rows[:] = self.view.usage_rows(self.u0, alive, t, k, self.max_kv, allocs)
                    rows[unsampled] = np.nan
        self._take(appends, t + k)
        self.t = t + k
        done = self._stop(now)
        self.u0 = None
        if rows is not None and not unsampled[-1]:
            rows[k - 1] = self._usage_row()
        engine.steps.append(DecodeRun(clock[:k], durations, num_groups, n, done, rows))
        engine.clock = now
        engine.num_executed += k
        finished += done
        return True

    def admission_step(self, finished: list) -> bool:
        """One step that admits the queue's head: in separate steps the engine's own prompt step
        (it reads no running sequence); in mixed steps the running batch's decodes advanced here and
        the prompts admitted, computed and post-processed by the scheduler's own code. The admitted
        groups join. False if the step cannot be taken here (its appends would preempt)."""
        engine, sched = self.engine, self.sched
        before = {id(g) for g in sched.running}
        if sched.config.step_composition == "separate":
            if engine.memory_due or getattr(self.memory, "partial_match", False):
                # the step's Figure 2 count reads every running sequence, and token-level matching
                # which cached blocks they have written (BlockManager._written)
                self.set_computed()
            record = engine.step()
            finished += record.finished
        else:
            if not len(self.alive) or int(self.ends[self.alive].min()) <= self.t:
                # No decodes (a prompt-only step, priced as one) or a sequence at its chunk's end
                # (the step would preempt it): the engine steps it.
                return False
            k, appends = self._appends(1)
            if k < 1:
                return False
            record = self._mixed_step(appends)
            finished += record.finished
        self.u0 = None
        if not sched._running_sorted:
            return False  # a re-admitted group goes before others: the order is the scheduler's
        # The admitted groups (a group of the batch may have finished in a mixed step: by identity).
        return self.join([g for g in sched.running if id(g) not in before])

    def _mixed_step(self, appends: list) -> StepRecord:
        """A mixed step: every running sequence of the batch decodes (appends here, tokens lazily),
        and `Scheduler.admit_into_decode` admits prompts into the same step, as `schedule()` does
        after its decodes; the executor prices both; the batch's stops are post-processed before
        the prompts, as post-processing walks the batch in order."""
        engine, sched = self.engine, self.sched
        alive, t = self.alive, self.t
        n = len(alive)
        start = engine.clock
        num_groups = len(sched.running)
        self._take(appends, t + 1)
        out = SchedulerOutput(num_seqs=n)
        if getattr(self.memory, "partial_match", False):
            # Token-level matching reads the running sequences' computed tokens (which cached blocks
            # are written yet: BlockManager._written), as stepping would have them now.
            self.set_computed()
        sched.admit_into_decode(out, start, n)
        context = int(self.base[alive].sum()) + n * t
        result = self.executor.execute(out, decode=(n, context))
        now = start + result.duration_s
        self.times.append(now)
        self.t = t + 1
        done = self._stop(now)
        prompts = sched.postprocess(out, result.outputs, now)  # the rejected groups, then finished
        rejected = len(out.rejected)
        engine.clock = now
        if engine.memory_due:
            self.set_computed()  # the count reads every running sequence
        # As stepping records it: out.scheduled_groups holds the admitted groups alone here.
        num_groups = num_groups + len(out.scheduled_groups)
        finished = prompts[:rejected] + done + prompts[rejected:]
        return engine.record(out, start, result.duration_s, True, num_groups, num_groups, finished)
