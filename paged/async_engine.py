"""Online serving's engine loop: the one Engine stepping in its own thread while requests arrive, stream
out and are aborted from another (an asyncio server's event loop).

The engine thread owns the scheduler and the executor; other threads only put requests and aborts into
its inbox and read the snapshot it publishes after each step. Each step's new tokens go to the request's
`on_update` callback, called on the engine thread (the server hands them to its event loop with
`call_soon_threadsafe`). Time: the engine's clock follows the wall clock (seconds since `start`): an
idle engine jumps to the present before its next step, and with `pace=True` (a simulated executor,
whose steps take no wall time) the thread sleeps until the wall clock reaches each step's end, so a
client sees the simulated GPU's latencies.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from paged.engine import Engine
from paged.sequence import SequenceGroup, SequenceStatus


@dataclass
class Update:
    """What one step did to a request: tokens appended per sequence index since the last update, and
    whether the request finished (then `group` holds the final sequences)."""

    group: SequenceGroup
    new_tokens: dict[int, list[int]]
    finished: bool


@dataclass
class Snapshot:
    """The engine's state after its last step, for /metrics (read from any thread)."""

    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    cache_usage: float = 0.0  # fraction of device blocks in use
    num_preemptions: int = 0
    num_steps: int = 0
    memory: dict[str, float] = field(default_factory=dict)  # Figure 2's classes, fractions of all slots


class QueueFull(RuntimeError):
    """The waiting queue is at its bound: the server answers 503."""


class EngineStopped(RuntimeError):
    """The engine thread has stopped (shut down, or failed: `AsyncEngine.error`): nothing is served."""


class AsyncEngine:
    def __init__(self, engine: Engine, pace: bool = False, max_waiting: int = 1024) -> None:
        self.engine = engine
        self.pace = pace
        self.max_waiting = max_waiting
        self.snapshot = Snapshot()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._callbacks: dict[str, Callable[[Update], None]] = {}
        self._sent: dict[str, list[int]] = {}  # output tokens sent so far, per sequence index
        self._num_pending = 0  # added but not yet taken from the inbox
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._closed = False  # set before the thread's last sweep of the inbox: add() refuses after
        self._idle = True  # the engine waited for work: its clock jumps to the wall clock
        self.error: BaseException | None = None  # what stopped the engine thread, if anything

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="pagelab-engine", daemon=True)
        self._thread.start()

    def now(self) -> float:
        """Seconds since start: the engine clock's time base."""
        return time.monotonic() - self._t0

    def add(self, group: SequenceGroup, on_update: Callable[[Update], None]) -> None:
        """Queue a request (its arrival time is now). Raises QueueFull at the waiting bound and
        EngineStopped once the engine thread has stopped."""
        with self._lock:
            if self._closed:
                raise EngineStopped(
                    f"the engine has stopped ({self.error!r})" if self.error else "the engine has stopped"
                )
            waiting = self.snapshot.num_waiting + self._num_pending
            if waiting >= self.max_waiting:
                raise QueueFull(f"{waiting} requests are waiting (the server's bound is {self.max_waiting})")
            self._num_pending += 1
            group.arrival_time = self.now()
            self._inbox.put(("add", group, on_update))
        self._wake.set()

    def abort(self, request_id: str) -> None:
        """Drop a request (its client went away); its blocks are freed before the next step."""
        self._inbox.put(("abort", request_id, None))
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; requests still in flight are aborted (their callbacks get a
        final update)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        stalled = 0
        try:
            while not self._stop.is_set():
                self._drain()
                if not self.engine.scheduler.has_unfinished:
                    self._idle = True
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                record = self._step()
                # A step that ran nothing and finished nothing changed nothing: the next would too.
                stalled = 0 if record.executed or record.finished else stalled + 1
                if stalled > 1000:
                    raise RuntimeError("the scheduler made no progress in 1000 steps")
        except BaseException as e:  # the server reports it (/health) rather than hanging its clients
            self.error = e
        finally:
            with self._lock:
                self._closed = True
            self._abort_all()

    def _drain(self) -> None:
        sched = self.engine.scheduler
        while True:
            try:
                kind, item, callback = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                with self._lock:
                    self._num_pending -= 1
                self._callbacks[item.request_id] = callback
                self._sent[item.request_id] = [0] * len(item.seqs)
                sched.add(item)
            else:
                for group in sched.abort(item, self.engine.clock):
                    self._publish(group, finished=True)
                self._snapshot(step=False)  # an abort frees blocks: /metrics shows it now
        # The snapshot counts the queue as the next step will see it.
        self.snapshot.num_waiting = len(sched.waiting)

    def _step(self):
        engine = self.engine
        if self._idle:  # idle time passes on the engine's clock too; a busy engine keeps its own
            engine.clock = max(engine.clock, self.now())
            self._idle = False
        record = engine.step()
        engine.steps.clear()  # a server runs for days: keep no per-step history
        if self.pace:
            ahead = engine.clock - self.now()
            if ahead > 0:
                time.sleep(ahead)
        finished = {g.request_id for g in record.finished}
        for group in record.finished:
            self._publish(group, finished=True)
        for group in engine.scheduler.running:
            if group.request_id not in finished:
                self._publish(group, finished=False)
        self._snapshot()
        return record

    def _publish(self, group: SequenceGroup, finished: bool) -> None:
        callback = self._callbacks.get(group.request_id)
        if callback is None:
            return
        sent = self._sent[group.request_id]
        new = {}
        if not group.sampling_params.use_beam_search:  # beams change until the end: sent when final
            for i, seq in enumerate(group.seqs[: len(sent)]):
                out = seq.output_token_ids
                if len(out) > sent[i]:
                    new[i] = list(out[sent[i] :])
                    sent[i] = len(out)
        if finished:
            del self._callbacks[group.request_id], self._sent[group.request_id]
        if new or finished:
            callback(Update(group, new, finished))

    def _snapshot(self, step: bool = True) -> None:
        sched = self.engine.scheduler
        mem = sched.memory
        s = self.snapshot
        s.num_running = len(sched.running)
        s.num_waiting = len(sched.waiting)
        s.num_swapped = len(sched.swapped)
        s.num_preemptions = sched.num_preemptions
        s.num_steps += step
        usage = mem.usage(sched.running)
        total = max(usage.total, 1)
        s.cache_usage = 1.0 - usage.free / total
        s.memory = {
            "token_states": usage.token_states / total,
            "reservation": usage.reservation / total,
            "internal_fragmentation": usage.internal_fragmentation / total,
            "external_fragmentation": usage.external_fragmentation / total,
            "free": usage.free / total,
        }

    def _abort_all(self) -> None:
        sched = self.engine.scheduler
        for group in list(sched.waiting) + list(sched.running) + list(sched.swapped):
            for g in sched.abort(group.request_id, self.engine.clock):
                self._publish(g, finished=True)
        while True:  # requests that never reached the scheduler
            try:
                kind, item, callback = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                for seq in item.seqs:
                    seq.status = SequenceStatus.FINISHED_ABORTED
                callback(Update(item, {}, True))
