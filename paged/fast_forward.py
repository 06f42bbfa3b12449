"""Exact fast-forward: runs of plain decode steps advanced at once, identical to stepping them.

Most steps of a simulated run decide nothing new: every running group decodes one token per
sequence; nobody arrives who could be admitted, nobody finishes, no block runs out, nothing is
swapped or forked. Until the next such event the scheduler's decision is already known, so the
engine (engine.py) asks `Scheduler.decodes_only()` whether the next step is such a step and, if so,
advances a stretch of them here in one go (docs/simulator.md):

- a stretch ends at the first event: the step at which a sequence reaches its length limit (its
  last token is appended and the scheduler's own stop check frees it: `Scheduler.finish_run`), the
  step after which a request has arrived that could be admitted, the last step whose appends the
  free blocks cover (the next would preempt), a contiguous chunk's end; past a finish the next
  stretch follows only while the scheduler's answer stays the same;
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

import numpy as np

from paged.accounting import MEMORY_FIELDS
from paged.sequence import SequenceStatus
from paged.step import DecodeRun

_RUNNING = SequenceStatus.RUNNING


def supports_fast_forward(executor, memory) -> bool:
    """Whether the executor and the memory policy can advance runs of decode steps."""
    return hasattr(executor, "run_tokens") and hasattr(memory, "decode_run")


def fast_forward(engine, next_arrival: float) -> list[DecodeRun]:
    """Advance the engine by runs of plain decode steps, as many as come before the next event;
    returns them (one DecodeRun per stretch between finishes), or [] when the next step is not a
    plain decode step. next_arrival: when the next request not yet given to the scheduler arrives
    (inf: none)."""
    sched = engine.scheduler
    mode = sched.decodes_only()
    if mode is None:
        return []
    memory = sched.memory
    executor = engine.executor
    max_model_len = sched.config.max_model_len
    # Every running sequence in stepping's order, with its group and the length it stops at.
    seqs = []
    owners = []
    stop_lens = []
    for g in sched.running:
        stop_len = g.num_prompt_tokens + g.sampling_params.max_tokens
        if stop_len > max_model_len:
            stop_len = max_model_len
        group_seqs = g.seqs
        if len(group_seqs) == 1:
            seqs.append(group_seqs[0])
            owners.append(g)
            stop_lens.append(stop_len)
            continue
        for s in group_seqs:
            if s.status is _RUNNING:
                seqs.append(s)
                owners.append(g)
                stop_lens.append(stop_len)
    lengths = np.array([len(s.token_ids) for s in seqs], dtype=np.int64)
    view = memory.decode_run(seqs, lengths)
    if view is None:
        return []
    offsets = executor.run_offsets(sched.running)
    max_kv = np.array(stop_lens, dtype=np.int64) - 1  # the KV a sequence holds at its last token
    stops = max_kv + 1 - lengths  # the step whose token ends each sequence
    ends = np.minimum(stops, view.limits())  # ... or after which it would need more than a block
    # Tokens and timestamps are appended lazily: a sequence gets them when something reads it (an
    # append that does something, its stop) or at the end. times[t - 1]: when step t ended.
    materialized = [0] * len(seqs)  # steps whose tokens each sequence holds already
    times: list[float] = []

    def materialize(i: int, upto: int) -> None:
        done = materialized[i]
        if done < upto:
            start = int(lengths[i]) + done
            seqs[i].token_ids.extend(executor.run_tokens(offsets[i], start, start + upto - done))
            seqs[i].token_times.extend(times[done:upto])
            materialized[i] = upto

    alive = np.arange(len(seqs))
    runs: list[DecodeRun] = []
    t = 0  # steps advanced so far
    u0 = None  # Figure 2 count after step t, when known
    while True:
        if mode == "until_arrival" and next_arrival <= engine.clock:
            break  # it arrived during the last stretch: the engine gives it to the scheduler now
        # Bound this stretch: the first stop or limit, then the blocks the free list can give.
        k = int(ends[alive].min()) - t
        if k < 1:
            break
        appends = view.appends(alive, t, t + k)
        if appends:
            budget = view.budget()
            taken = 0
            for step, _, takes_block in appends:
                if takes_block:
                    taken += 1
                    if taken > budget:
                        k = step - 1 - t  # that step would preempt
                        break
            if k < 1:
                break
        # Durations and the clock, cut at the step after which a request that could be admitted
        # has arrived.
        n = len(alive)
        lead = int(lengths[alive[0]]) + t, seqs[alive[0]].num_prompt_tokens
        context = int(lengths[alive].sum()) + n * t
        durations = executor.run_durations(sched, n, context, k, lead)
        clock = np.cumsum(np.concatenate(([engine.clock], durations)))
        if mode == "until_arrival" and next_arrival <= clock[-1]:
            k = int(np.searchsorted(clock, next_arrival, side="left"))  # first step ending at/after
            durations = durations[:k]
            clock = clock[: k + 1]
        times.extend(clock[1:].tolist())
        now = times[-1]
        num_groups = len(sched.running)
        # Figure 2 counts after each step stepping would sample (every memory_every-th executed
        # step): from the count before the stretch, the last one by usage() itself.
        rows = None
        if engine.track_memory:
            unsampled = (engine.num_executed + np.arange(k)) % engine.memory_every != 0
            if not unsampled.all():
                rows = np.full((k, 7), np.nan)
                if not unsampled[:-1].all():
                    if u0 is None:
                        _set_computed(seqs, lengths, alive, t)
                        u0 = memory.usage(sched.running)
                    allocs = [(step, i) for step, i, takes in appends if takes and step <= t + k]
                    rows[:] = view.usage_rows(u0, alive, t, k, max_kv, allocs)
                    rows[unsampled] = np.nan
        # The appends that do something, in stepping's order (with the sequence's tokens up to that
        # step where the memory policy reads them).
        take = view.take
        needs_tokens = view.needs_tokens
        for step, i, _ in appends:
            if step > t + k:
                break
            if needs_tokens:
                materialize(i, step - 1)
            take(seqs[i])
        t += k
        # The sequences whose last token this step gave: stopped by the scheduler's own check.
        stopping = alive[stops[alive] == t]
        stopped = []
        for i in stopping.tolist():
            materialize(i, t)
            seqs[i].num_computed_tokens = int(lengths[i]) + t - 1
            stopped.append((owners[i], seqs[i]))
        finished = sched.finish_run(stopped, now) if stopped else []
        if len(stopping):
            alive = alive[stops[alive] != t]
        u0 = None
        if rows is not None and not unsampled[-1]:
            _set_computed(seqs, lengths, alive, t)
            u0 = memory.usage(sched.running)
            rows[k - 1] = [getattr(u0, f) for f in MEMORY_FIELDS]
        runs.append(DecodeRun(clock[:k], durations, num_groups, n, finished, rows))
        engine.clock = now
        engine.num_executed += k
        # Go on past a finish while the scheduler's decision stays a plain decode: ask it again
        # unless only an arrival could change it (the queue is empty and stays so until next_arrival,
        # where every stretch is cut). Not past a sequence whose siblings go on: their token offsets
        # change.
        if not len(stopping) or not len(alive):
            break
        if any(g.metrics.finished_time is None for g, _ in stopped):
            break
        if mode != "until_arrival":
            mode = sched.decodes_only()
            if mode is None:
                break
    # Every sequence still running gets the rest of its tokens and timestamps.
    if t:
        for i in alive.tolist():
            materialize(i, t)
        _set_computed(seqs, lengths, alive, t)
    return runs


def _set_computed(seqs: list, lengths: np.ndarray, alive: np.ndarray, t: int) -> None:
    """After step t every sequence has the KV of all its tokens but the newest."""
    if t:
        for s, n in zip([seqs[i] for i in alive.tolist()], (lengths[alive] + (t - 1)).tolist()):
            s.num_computed_tokens = n
