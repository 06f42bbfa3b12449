"""The simulator end to end: the engine's own scheduler and block manager on the cost model's clock."""

from __future__ import annotations

import math

import pytest

from harness.metrics import KV_CLASSES
from harness.sim.kv_capacity import KVCapacity
from harness.simulate import ServerConfig, SimConfig, build, simulate
from harness.workload import shared_prefix, synthetic
from paged import BlockManager, Scheduler


def test_one_minute_of_sharegpt_on_opt13b():
    w = synthetic("sharegpt_synthetic", rate=2.0, duration_s=60, seed=0)
    r = simulate(w, SimConfig())
    m = r.metrics
    assert isinstance(r.engine.scheduler, Scheduler) and isinstance(r.engine.scheduler.memory, BlockManager)
    assert isinstance(r.capacity, KVCapacity) and m["kv_slots"] == r.capacity.num_slots
    assert m["num_completed"] == len(w) and m["num_rejected"] == 0
    for req, g in zip(w.requests, r.groups):
        assert g.seqs[0].num_output_tokens == req.output_len  # outputs follow the trace
    # A token costs at least one decode step of a lone sequence.
    assert m["normalized_latency"] > 0.02 and m["mean_tpot_ms"] > 20
    assert m["duration_s"] >= w.requests[-1].arrival_time
    assert sum(m[k] for k in KV_CLASSES) == pytest.approx(100.0)
    assert 0 < m["avg_batched_requests"] <= 256


def test_latency_grows_with_load():
    low = simulate(synthetic("sharegpt_synthetic", 0.5, 120, seed=1)).metrics["normalized_latency"]
    high = simulate(synthetic("sharegpt_synthetic", 8.0, 120, seed=1)).metrics["normalized_latency"]
    assert high > 2 * low


@pytest.mark.parametrize("beam", [False, True])
def test_parallel_samples_and_beams_share_memory(beam):
    w = synthetic("alpaca", 4.0, 60, seed=0, n=4, use_beam_search=beam)
    m = simulate(w).metrics
    assert m["num_completed"] == len(w) and m["sharing_saving_pct"] > 0


def test_swap_mode_swaps_under_pressure():
    w = synthetic("alpaca", 30.0, 40, seed=0, n=4)
    m = simulate(
        w, SimConfig(server=ServerConfig(preemption_mode="swap", gpu_memory_utilization=0.7))
    ).metrics
    assert m["num_preemptions"] > 0 and m["num_swapped_blocks"] > 0
    assert m["num_completed"] == len(w)


def test_shared_prefix_is_computed_once():
    w = shared_prefix(prefix_len=341, rate=2.0, duration_s=30, seed=0)
    engine, _, _ = build(SimConfig(model="llama-13b"))
    groups = w.to_sequence_groups()
    engine.run(groups)
    prefill_tokens = sum(s.num_tokens for s in engine.records() if s.is_prefill)
    assert prefill_tokens < sum(r.prompt_len for r in w.requests) - 341 * (len(w) - 2)


def test_no_requests_gives_empty_metrics():
    w = synthetic("sharegpt_synthetic", 0.001, 1, seed=0)
    m = simulate(w).metrics
    assert m["num_requests"] == 0 and math.isnan(m["normalized_latency"])
