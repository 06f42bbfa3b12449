"""Cost-aware preemption (`preemption_mode="cost"`, paged/preemption.py): each victim is swapped or
recomputed, whichever is predicted cheaper. The shared property tests (tests/test_properties.py) run
it on random workloads; these check the choice, the simulator's costs and the real engine's."""

from __future__ import annotations

import pytest

from paged import NullExecutor
from paged.preemption import MeasuredCosts
from tests.conftest import make_group, make_scheduler
from tests.shadow import check_invariants


def preempt_once(costs, n=1):
    """Two requests on a cache that holds one: the later one is preempted when the first grows."""
    sched, manager = make_scheduler(num_gpu_blocks=8, preemption_mode="cost", step_composition="mixed")
    sched.preemption_costs = costs
    size = 14 if n == 1 else 8  # n=2 needs 2 + 2 x 2 blocks at its longest
    groups = [make_group("a", range(14), max_tokens=14), make_group("b", range(size), max_tokens=size, n=n)]
    for g in groups:
        sched.add(g)
    t, modes = 0.0, []
    while sched.has_unfinished:
        out = sched.schedule(t)
        if out.preempted:
            modes.append("swap" if out.blocks_to_swap_out else "recompute")
        sched.postprocess(out, NullExecutor().execute(out).outputs, t)
        t += 1
        assert t < 200
    check_invariants(manager)
    assert all(s.num_output_tokens == g.sampling_params.max_tokens for g in groups for s in g.seqs)
    return modes


def test_the_cheaper_preemption_is_chosen():
    cheap_swap = MeasuredCosts(swap_s_per_block=1e-4, prefill_s_per_token=1e-3)
    dear_swap = MeasuredCosts(swap_s_per_block=1.0, prefill_s_per_token=1e-3)
    assert set(preempt_once(cheap_swap)) == {"swap"}
    assert set(preempt_once(dear_swap)) == {"recompute"}
    assert set(preempt_once(dear_swap, n=2)) == {"swap"}  # several sequences swap, as under auto


def test_cost_mode_without_costs_names_the_fix():
    with pytest.raises(RuntimeError, match="preemption_costs"):
        preempt_once(None)


def test_the_simulator_prices_swapping_per_block_and_recomputation_per_token():
    """Figure 19's question in the cost model (OPT-13B, A100): at block size 1 swapping a
    1024-token sequence costs more than recomputing it; at 256 it costs less."""
    from harness.sim.cost_model import CostModel
    from harness.sim.executor import ModelledPreemptionCosts
    from harness.sim.hardware import load_hardware
    from paged.presets import load_model

    model, gpu = load_model("opt-13b"), load_hardware("a100_40gb")
    small = ModelledPreemptionCosts(CostModel(model, gpu, block_size=1))
    large = ModelledPreemptionCosts(CostModel(model, gpu, block_size=256))
    assert small.swap_s(1024) > small.recompute_s(1024)  # 1024 blocks of one token
    assert large.swap_s(4) < large.recompute_s(1024)  # 4 blocks of 256 tokens
    assert small.recompute_s(0) == 0.0


def test_the_real_engine_measures_its_costs_and_keeps_its_tokens():
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, engine_greedy, hf_greedy, tiny

    model = tiny("opt")
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    got, sched = engine_greedy(model, PROMPTS, NEW_TOKENS, num_gpu_blocks=8, mode="cost")
    assert sched.num_preemptions > 0 and got == expected
    costs = sched.preemption_costs
    assert costs.swap_s_per_block > 0 and costs.prefill_s_per_token > 0
