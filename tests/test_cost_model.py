"""The operator cost model: units, monotonicity, and its calibration."""

from __future__ import annotations

import pytest

from harness.cost_model import CostModel, load_calibration
from harness.presets import load_hardware, load_model


@pytest.fixture(scope="module")
def opt13_a100():
    return CostModel(load_model("opt-13b"), load_hardware("a100-40gb"), 1, 16)


def test_decode_batch_1_is_bounded_by_reading_the_weights(opt13_a100):
    # One decode step must at least stream the 25.7 GB of weights over 1.555 TB/s: 16.5 ms.
    ms = opt13_a100.decode(1, 100).total_ms
    assert 25.7e9 / 1.555e12 * 1e3 < ms < 60


def test_decode_grows_with_batch_and_context(opt13_a100):
    base = opt13_a100.decode_ms(8, 8 * 256)
    assert opt13_a100.decode_ms(16, 16 * 256) > base
    assert opt13_a100.decode_ms(8, 8 * 1024) > base
    times = [opt13_a100.decode_ms(b, b * 512) for b in range(1, 257, 5)]
    assert times == sorted(times)
    # Decode is memory-bound: 32 sequences cost far less than 32 single-sequence steps.
    assert opt13_a100.decode_ms(32, 32 * 512) < 4 * opt13_a100.decode_ms(1, 512)


def test_decode_ms_equals_the_component_sum(opt13_a100):
    cost = opt13_a100.decode(32, 32 * 700)
    parts = cost.linear + cost.norm + cost.attention + cost.allreduce + cost.lm_head + cost.overhead
    assert cost.total_ms == pytest.approx(parts)
    assert opt13_a100.decode_ms(32, 32 * 700) == pytest.approx(cost.total_ms)


def test_prefill_grows_with_tokens_and_is_compute_bound_at_scale(opt13_a100):
    times = [opt13_a100.prefill([(n, 0)]).total_ms for n in (16, 64, 256, 1024, 2048)]
    assert times == sorted(times)
    # 2048 tokens x 25.7 GFLOP each at 312 TFLOP/s is 169 ms: the model cannot beat the peak.
    assert times[-1] > 2048 * 2 * 12.85e9 / 312e12 * 1e3
    # A cached prefix makes the same prompt cheaper.
    assert opt13_a100.prefill([(64, 960)]).total_ms < opt13_a100.prefill([(1024, 0)]).total_ms


def test_faster_gpu_and_tensor_parallelism_are_faster():
    m = load_model("opt-66b")
    a100 = CostModel(m, load_hardware("a100-80gb"), 4, 16)
    h100 = CostModel(m, load_hardware("h100-80gb"), 4, 16)
    assert h100.decode_ms(32, 32 * 512) < a100.decode_ms(32, 32 * 512)
    a100_tp8 = CostModel(m, load_hardware("a100-80gb"), 8, 16)
    assert a100_tp8.prefill([(1024, 0)]).attention < a100.prefill([(1024, 0)]).attention
    assert a100.allreduce_ms(1) > 0 and a100.allreduce_ms(4096) > a100.allreduce_ms(1)


def test_paged_kernel_overhead_falls_with_block_size():
    m, g = load_model("opt-13b"), load_hardware("a100-40gb")
    attn = {bs: CostModel(m, g, 1, bs).decode(32, 32 * 1024).attention for bs in (1, 8, 16, 64, 256)}
    assert attn[1] > attn[8] > attn[16] > attn[64] > attn[256]
    assert attn[16] / attn[256] == pytest.approx((1 + 3.68 / 16) / (1 + 3.68 / 256))


def test_swap_is_slow_for_small_blocks():
    m, g = load_model("opt-13b"), load_hardware("a100-40gb")
    per_token = {bs: CostModel(m, g, 1, bs).swap_ms(64 // bs) / 64 for bs in (1, 16, 64)}
    assert per_token[1] > 5 * per_token[16] > 5 * per_token[64] / 2
    # Units: 64 tokens of OPT-13B KV (51 MB) over ~25.6 GB/s take about 2 ms plus per-copy costs.
    assert 1.5 < CostModel(m, g, 1, 64).swap_ms(1) < 4


def test_calibration_matches_vllm_profile_it_came_from():
    # In-sample: DistServe's fit of vLLM on OPT-13B / A100-80GB (docs/simulator.md).
    cal = load_calibration()
    in_sample = [v for v in cal["validation"] if v["case"].startswith("opt-13b")]
    assert in_sample and all(abs(v["error_pct"]) < 5 for v in in_sample)
