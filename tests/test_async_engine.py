"""The serving engine loop (paged/async_engine.py): requests added and aborted from other threads while
the engine steps in its own; every token streamed once, in order; aborted requests free their blocks;
the waiting bound; pacing by the executor's step times."""

import threading
import time

import pytest

from paged import BlockManager, CacheConfig, Engine, NullExecutor, SamplingParams, Scheduler, SchedulerConfig
from paged.async_engine import AsyncEngine, EngineStopped, QueueFull
from paged.sequence import SequenceGroup, SequenceStatus


def _engine(step_time_s=0.0, num_gpu_blocks=64, num_cpu_blocks=64):
    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=4, num_cpu_blocks=num_cpu_blocks)
    cfg = SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16, max_model_len=128)
    manager = BlockManager(cache, cfg.max_model_len)
    return Engine(Scheduler(cfg, manager), NullExecutor(step_time_s=step_time_s)), manager


class Collector:
    def __init__(self):
        self.tokens: dict[str, dict[int, list[int]]] = {}
        self.done: dict[str, SequenceGroup] = {}
        self.all_done = threading.Event()
        self.expected = 0

    def callback(self, request_id):
        def on_update(update):
            per = self.tokens.setdefault(request_id, {})
            for i, toks in update.new_tokens.items():
                per.setdefault(i, []).extend(toks)
            if update.finished:
                assert request_id not in self.done, "finished twice"
                self.done[request_id] = update.group
                if len(self.done) == self.expected:
                    self.all_done.set()

        return on_update


def test_concurrent_requests_stream_every_token_once_and_aborts_free_their_blocks():
    engine, manager = _engine(step_time_s=0.002, num_gpu_blocks=48)
    loop = AsyncEngine(engine, pace=True)  # 2 ms steps in wall time: the aborts land mid-run
    loop.start()
    c = Collector()
    c.expected = 24
    groups = []
    for i in range(24):
        params = SamplingParams(max_tokens=40, n=2 if i % 5 == 0 else 1, ignore_eos=True)
        g = SequenceGroup(str(i), [1, 2, 3, 4, 5] * (1 + i % 3), params, 0.0)
        groups.append(g)
        loop.add(g, c.callback(g.request_id))
    time.sleep(0.03)
    for g in groups[::3]:  # 8 clients go away midway
        loop.abort(g.request_id)
    assert c.all_done.wait(20), f"{len(c.done)} of 24 finished"
    loop.stop()
    assert loop.error is None and not loop.alive
    for g in groups:
        got = c.tokens.get(g.request_id, {})
        for i, seq in enumerate(g.seqs[: g.sampling_params.n]):
            assert got.get(i, []) == seq.output_token_ids  # streamed once, in order, nothing lost
        if int(g.request_id) % 3:
            assert all(s.status is SequenceStatus.FINISHED_LENGTH_CAPPED for s in g.seqs)
    aborted = [g for g in groups[::3] if any(s.status is SequenceStatus.FINISHED_ABORTED for s in g.seqs)]
    assert aborted, "no abort arrived before its request finished"
    assert manager.block_tables == {} and manager.gpu.num_free == manager.gpu.num_blocks
    assert manager.cpu.num_free == manager.cpu.num_blocks


def test_the_waiting_queue_is_bounded():
    engine, _ = _engine()
    loop = AsyncEngine(engine, max_waiting=2)  # not started: nothing leaves the queue
    loop.add(SequenceGroup("a", [1], SamplingParams(max_tokens=1), 0.0), lambda u: None)
    loop.add(SequenceGroup("b", [1], SamplingParams(max_tokens=1), 0.0), lambda u: None)
    with pytest.raises(QueueFull, match="bound is 2"):
        loop.add(SequenceGroup("c", [1], SamplingParams(max_tokens=1), 0.0), lambda u: None)


def test_pacing_follows_the_executors_step_times():
    """A simulated executor's steps take no wall time; paced, a request of k steps lasts k x step."""
    engine, _ = _engine(step_time_s=0.02)
    loop = AsyncEngine(engine, pace=True)
    loop.start()
    c = Collector()
    c.expected = 1
    t0 = time.monotonic()
    loop.add(
        SequenceGroup("x", [1, 2, 3], SamplingParams(max_tokens=10, ignore_eos=True), 0.0), c.callback("x")
    )
    assert c.all_done.wait(10)
    elapsed = time.monotonic() - t0
    loop.stop()
    assert 10 * 0.02 <= elapsed < 10 * 0.02 + 1.0  # one prompt step + 9 decodes = 10 steps of 20 ms
    g = c.done["x"]
    assert g.metrics.finished_time - g.arrival_time == pytest.approx(0.2, abs=0.05)  # + the wake-up


def test_stop_aborts_what_is_in_flight():
    engine, manager = _engine(step_time_s=0.01)
    loop = AsyncEngine(engine, pace=True)
    loop.start()
    c = Collector()
    c.expected = 3
    for i in range(3):
        loop.add(
            SequenceGroup(str(i), [1, 2], SamplingParams(max_tokens=100, ignore_eos=True), 0.0),
            c.callback(str(i)),
        )
    time.sleep(0.05)
    loop.stop()
    assert c.all_done.wait(5) and not loop.alive
    assert all(s.status is SequenceStatus.FINISHED_ABORTED for g in c.done.values() for s in g.seqs)
    assert manager.gpu.num_free == manager.gpu.num_blocks
    with pytest.raises(EngineStopped):  # nothing is queued where no thread will read it
        loop.add(SequenceGroup("late", [1], SamplingParams(max_tokens=1), 0.0), lambda u: None)
