"""Metric definitions (docs/metrics.md) on hand-computed examples."""

from __future__ import annotations

import pytest

from harness.metrics import request_metrics, step_metrics
from paged import MemoryUsage, SamplingParams, SequenceGroup, SequenceStatus, StepRecord


def finished_group(rid, arrival, scheduled, token_times, prompt_len=10, n=1):
    g = SequenceGroup(rid, [1] * prompt_len, SamplingParams(max_tokens=len(token_times), n=n), arrival)
    for s in g.seqs:
        for t in token_times:
            s.append_token(2, 0.0, t)
        s.status = SequenceStatus.FINISHED_LENGTH_CAPPED
    g.metrics.first_scheduled_time = scheduled
    g.metrics.first_token_time = token_times[0]
    g.metrics.finished_time = token_times[-1]
    return g


def test_request_metrics_by_hand():
    a = finished_group("a", 0.0, 0.5, [1.0, 2.0, 4.0])  # e2e 4 s, 3 tokens, ttft 1 s, tpot 1.5 s
    b = finished_group("b", 1.0, 1.0, [2.0, 3.0], prompt_len=20, n=2)  # e2e 2 s, 2 tokens x 2 samples
    rejected = SequenceGroup("r", [1] * 5000, SamplingParams(max_tokens=4), 0.5)
    rejected.reject_reason = "too long"
    m = request_metrics([a, b, rejected])
    assert m["num_requests"] == 3 and m["num_completed"] == 2 and m["num_rejected"] == 1
    assert m["duration_s"] == 4.0  # last finish 4.0 - first arrival 0.0
    assert m["request_throughput"] == pytest.approx(2 / 4)
    assert m["output_throughput"] == pytest.approx((3 + 2 * 2) / 4)
    assert m["total_token_throughput"] == pytest.approx((10 + 20 + 3 + 4) / 4)
    assert m["normalized_latency"] == pytest.approx((4 / 3 + 2 / 2) / 2)
    assert m["mean_ttft_ms"] == pytest.approx(1000.0) and m["median_ttft_ms"] == pytest.approx(1000.0)
    assert m["mean_tpot_ms"] == pytest.approx((1500 + 1000) / 2)
    assert m["mean_e2el_ms"] == pytest.approx(3000.0)
    assert m["p99_e2el_ms"] == pytest.approx(2000 + 0.99 * 2000)
    # ITL: gaps 1, 2 (a) and 1, 1 (b's two samples)
    assert m["mean_itl_ms"] == pytest.approx(1000 * (1 + 2 + 1 + 1) / 4)
    assert m["mean_queue_ms"] == pytest.approx(250.0)


def test_step_metrics_by_hand():
    def usage(token, free, logical=0, physical=0):
        return MemoryUsage(
            total=100,
            token_states=token,
            reservation=0,
            internal_fragmentation=100 - token - free,
            free=free,
            logical_blocks=logical,
            physical_blocks=physical,
        )

    def step(start, duration, is_prefill, groups, seqs, tokens, preempted, swapped_out, copied, memory):
        return StepRecord(
            start, duration, executed=True, is_prefill=is_prefill, num_groups=groups, num_seqs=seqs,
            num_running_groups=groups,
            num_tokens=tokens, num_preempted=preempted, num_rejected=0, num_blocks_swapped_out=swapped_out,
            num_blocks_swapped_in=0, num_blocks_copied=copied, finished=[], memory=memory,
        )  # fmt: skip

    steps = [
        step(0.0, 1.0, True, 2, 2, 50, 0, 0, 0, usage(60, 30, 10, 5)),
        step(1.0, 3.0, False, 4, 5, 5, 1, 7, 1, usage(80, 20, 0, 0)),
    ]
    m = step_metrics(steps)
    assert m["avg_batched_requests"] == 3.0
    assert m["num_preemptions"] == 1 and m["num_swapped_blocks"] == 7
    assert m["kv_token_states_pct"] == pytest.approx((60 * 1 + 80 * 3) / 4)  # weighted by step time
    assert m["kv_free_pct"] == pytest.approx((30 + 20 * 3) / 4)
    assert m["sharing_saving_pct"] == pytest.approx(50.0)
