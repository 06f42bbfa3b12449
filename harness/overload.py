"""Early stop for points far past capacity (issue 14; docs/simulator.md, "Overloaded points").

Past its capacity a server's queue grows without bound and every later request waits longer: the
run's normalized latency only grows, and simulating the rest of an hour-long trace costs the most
steps of any point while changing nothing a capacity figure reads. `OverloadStop` ends such a run
once, at a check (every `check_every_s` of simulated time, after `window_s`):

- the queue (waiting plus swapped-out requests) is longer than it was `window_s` earlier, and
- a lower bound on the whole run's normalized latency (the mean over requests of end-to-end latency /
  output tokens) exceeds `max_latency` (the harness: `early_stop_factor` x the capacity threshold,
  10 x 0.5 s/token by default). The bound counts finished requests as they are, requests still
  queued or running as if they finished now (they finish later), requests yet to arrive as zero,
  and divides by every request of the trace.

So a stopped point's full run is certain to lie above `max_latency`: a point whose full-run latency is
below it is never stopped, and a capacity figure, which reads the latencies of the points up to the
first one above the threshold, changes only if that first point lies above `max_latency` (its exact
value enters the interpolation); tests/test_fast_forward.py checks the main job's capacities.
The point is then marked `early_stopped` in points.csv with the simulated time it stopped at; its
metrics cover the requests that finished (a lower bound on the full run's latency) and plots draw it
clipped at their y-limit, as the paper's are. Off by default (`early_stop=false`): turn it on for a
sweep whose overloaded points are not the object of study.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paged import SequenceGroup


@dataclass
class OverloadStop:
    """The stop rule; `should_stop(engine)` is the engine's hook, `on_finish` counts latencies."""

    max_latency: float  # s/token
    window_s: float = 300.0
    check_every_s: float = 60.0
    num_requests: int = 0  # in the trace: the bound's denominator (simulate() sets it)
    # A run's state: not init fields, so that dataclasses.replace() (simulate() makes one per run)
    # starts each run afresh instead of sharing the template's history.
    stopped_at: float | None = field(default=None, init=False)
    next_check: float = field(default=0.0, init=False)  # the engine asks should_stop from then on
    _queue: list[tuple[float, int]] = field(default_factory=list, init=False)  # (check time, queue)
    _finished_sum: float = field(default=0.0, init=False)  # sum of finished requests' s/token

    def __post_init__(self) -> None:
        if not (self.max_latency > 0 and self.window_s > 0 and 0 < self.check_every_s <= self.window_s):
            raise ValueError(
                "early stop needs max_latency > 0 and 0 < check_every_s <= window_s, got "
                f"{self.max_latency}, {self.check_every_s}, {self.window_s}"
            )
        self.next_check = self.window_s

    def on_finish(self, group: SequenceGroup) -> None:
        m = group.metrics
        if group.reject_reason is None and m.finished_time is not None:
            length = max(s.num_output_tokens for s in group.seqs)
            if length:
                self._finished_sum += (m.finished_time - m.arrival_time) / length

    def should_stop(self, engine) -> bool:
        now = engine.clock
        if now < self.next_check:
            return False
        while self.next_check <= now:
            self.next_check += self.check_every_s
        sched = engine.scheduler
        queue = len(sched.waiting) + len(sched.swapped)
        self._queue.append((now, queue))
        earlier = [q for t, q in self._queue if t <= now - self.window_s]
        if not earlier or queue <= earlier[-1]:
            return False
        bound = self._finished_sum
        for group in (*sched.waiting, *sched.running, *sched.swapped):
            bound += (now - group.arrival_time) / max(group.sampling_params.max_tokens, 1)
        if bound <= self.max_latency * max(self.num_requests, 1):
            return False
        self.stopped_at = now
        return True
