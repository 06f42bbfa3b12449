"""Mixed steps (`step_composition="mixed"`, the paper's artifact): every step decodes each running group
and admits prompts into the same batch (docs/scheduler.md). Separate steps are tests/test_scheduler.py."""

from __future__ import annotations

import pytest

from baselines import build_system
from harness.sim.cost_model import CostModel
from harness.sim.executor import SimulatedExecutor, decode_shape, prefill_shape
from harness.sim.hardware import load_hardware
from paged import BlockManager, CacheConfig, NullExecutor, Scheduler, SchedulerConfig
from paged.presets import load_model
from tests.conftest import make_group, make_scheduler


def step(sched, now=0.0, executor=None):
    out = sched.schedule(now)
    result = (executor or NullExecutor()).execute(out)
    finished = sched.postprocess(out, result.outputs, now)
    return out, finished


def ids(groups):
    return [g.request_id for g in groups]


def prompts(out):
    groups = out.scheduled_groups
    return ids(groups[len(groups) - out.num_prefill_groups :])


def test_four_requests_step_by_step():
    """Budget 16 tokens, ample memory. Prompt / output lengths: a 6/3, b 8/2, c 7/2, d 3/1.

    step 1: nothing runs; a (6) and b (6 + 8 = 14) are admitted, c would make 21 > 16: stop.
    step 2: a and b decode (2 tokens); c (2 + 7 = 9) and d (9 + 3 = 12) join the same batch.
            b and d finish (their 2nd and 1st tokens).
    step 3: a and c decode; both finish.
    Separate steps take 4: c and d's prompts in a step of their own, while a and b wait.
    """
    for composition, expected in (
        (
            "mixed",
            [  # (groups, prompt groups, tokens, sequences, finished)
                (["a", "b"], ["a", "b"], 14, 2, []),
                (["a", "b", "c", "d"], ["c", "d"], 12, 4, ["b", "d"]),
                (["a", "c"], [], 2, 2, ["a", "c"]),
            ],
        ),
        (
            "separate",
            [
                (["a", "b"], ["a", "b"], 14, 2, []),
                (["c", "d"], ["c", "d"], 10, 2, ["d"]),
                (["a", "b", "c"], [], 3, 3, ["b", "c"]),
                (["a"], [], 1, 1, ["a"]),
            ],
        ),
    ):
        sched, _ = make_scheduler(step_composition=composition, max_num_batched_tokens=16, max_model_len=16)
        for rid, prompt, output in (("a", 6, 3), ("b", 8, 2), ("c", 7, 2), ("d", 3, 1)):
            sched.add(make_group(rid, range(prompt), max_tokens=output))
        got = []
        while sched.has_unfinished:
            out, finished = step(sched)
            got.append(
                (ids(out.scheduled_groups), prompts(out), out.num_batched_tokens, out.num_seqs, ids(finished))
            )
            assert out.is_prefill == bool(out.num_prefill_groups)
            # A prompt's range is its whole prompt; every other running sequence decodes one token.
            for g in out.scheduled_groups:
                for s in g.seqs:
                    start, end = out.compute_range(s)
                    assert (start, end) == (
                        (0, g.num_prompt_tokens) if g.request_id in prompts(out) else (end - 1, end)
                    )
        assert got == expected, composition


def test_the_token_budget_counts_one_token_per_running_sequence():
    sched, _ = make_scheduler(step_composition="mixed", max_num_batched_tokens=16, max_model_len=16)
    sched.add(make_group("a", range(2), max_tokens=3, n=2))  # two sequences decode
    step(sched)
    sched.add(make_group("b", range(14), max_tokens=1))  # 2 + 14 = 16: fits exactly
    sched.add(make_group("c", range(1), max_tokens=1))  # 17: waits, although memory has room
    out, _ = step(sched)
    assert ids(out.scheduled_groups) == ["a", "b"] and out.num_batched_tokens == 16 and out.num_seqs == 3
    assert ids(sched.waiting) == ["c"]
    # max_num_seqs counts sequences (the artifact counts running groups + the new group's sequences).
    sched, _ = make_scheduler(step_composition="mixed", max_num_seqs=3)
    sched.add(make_group("a", range(2), max_tokens=3, n=2))
    step(sched)
    sched.add(make_group("b", range(2), max_tokens=3, n=2))  # 2 + 2 > 3 sequences
    out, _ = step(sched)
    assert ids(out.scheduled_groups) == ["a"] and not out.is_prefill


def test_a_re_prefill_over_the_budget_runs_alone_once_the_batch_is_empty():
    """Three diverged samples recomputed after a preemption need more than the 16-token budget: the
    group waits while anything decodes, and then runs alone, over the budget (no deadlock)."""
    sched, manager = make_scheduler(
        num_gpu_blocks=9,
        step_composition="mixed",
        max_num_batched_tokens=16,
        max_model_len=16,
        preemption_mode="recompute",
    )
    sched.add(make_group("a", range(4), max_tokens=12, arrival=0.0))
    sched.add(make_group("g", range(8), max_tokens=8, n=3, arrival=1.0))
    readmitted = None
    now = 0.0
    while sched.has_unfinished:
        out, _ = step(sched, now)
        now += 1.0
        g = [x for x in out.scheduled_groups if x.request_id == "g"]
        if g and "g" in prompts(out) and g[0].metrics.preemption_times:
            readmitted = out
            break
    assert readmitted is not None, "g was never preempted and readmitted"
    assert ids(readmitted.scheduled_groups) == ["g"]  # alone: a had to finish first
    assert readmitted.num_batched_tokens > 16
    while sched.has_unfinished:
        step(sched)
    assert manager.gpu.num_free == manager.gpu.num_blocks


class Flaky(BlockManager):
    """A BlockManager whose `deny` groups cannot append slots (a preemption on demand, with all the
    memory free that it would need to come straight back)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deny: set[str] = set()

    def can_append_slots(self, group):
        return group.request_id not in self.deny and super().can_append_slots(group)


def flaky_scheduler(mode, composition="mixed", **kw):
    cache = CacheConfig(num_gpu_blocks=64, block_size=4, num_cpu_blocks=64, watermark=0.0)
    cfg = SchedulerConfig(
        max_num_batched_tokens=64, max_model_len=64, preemption_mode=mode, step_composition=composition, **kw
    )
    manager = Flaky(cache, cfg.max_model_len)
    return Scheduler(cfg, manager), manager


def test_a_group_preempted_in_this_step_waits_and_stops_admission():
    sched, manager = flaky_scheduler("recompute")
    sched.add(make_group("a", range(4), max_tokens=8, arrival=0.0))
    sched.add(make_group("b", range(4), max_tokens=8, arrival=1.0))
    step(sched)
    sched.add(make_group("w", range(4), max_tokens=8, arrival=2.0))
    manager.deny = {"b"}
    out, _ = step(sched)
    # b (the latest running) preempted itself; memory has room for it and for w, but the artifact stops
    # admission at a group preempted in this very step: a decodes alone.
    assert ids(out.preempted) == ["b"] and ids(out.scheduled_groups) == ["a"] and not out.is_prefill
    assert ids(sched.waiting) == ["b", "w"]  # by arrival
    manager.deny = set()
    out, _ = step(sched)
    assert ids(out.scheduled_groups) == ["a", "b", "w"] and prompts(out) == ["b", "w"]
    assert out.prefill_ranges[out.scheduled_groups[1].seqs[0].seq_id] == (0, 5)  # b's prompt + 1 token


def test_a_recompute_preempted_group_goes_back_by_arrival():
    sched, manager = flaky_scheduler("recompute", max_num_seqs=2)
    for i, rid in enumerate("abw"):
        sched.add(make_group(rid, range(4), max_tokens=8, arrival=float(i)))
    step(sched)  # a and b run; w waits for a sequence slot
    manager.deny = {"a"}  # a cannot append: preempts b (the latest), then itself
    out, _ = step(sched)
    assert ids(out.preempted) == ["b", "a"] and ids(sched.waiting) == ["a", "b", "w"]


def test_no_admission_while_a_group_is_swapped_out_and_swap_in_comes_first():
    sched, manager = flaky_scheduler("swap")
    sched.add(make_group("a", range(4), max_tokens=8, arrival=0.0))
    sched.add(make_group("s", range(4), max_tokens=8, arrival=1.0))
    step(sched)
    sched.add(make_group("w", range(4), max_tokens=8, arrival=2.0))
    manager.deny = {"s"}
    out, _ = step(sched)
    # s swapped out in this step: no swap-in in the same step, and no admission while it is out.
    assert ids(out.preempted) == ["s"] and out.blocks_to_swap_out and not out.blocks_to_swap_in
    assert ids(out.scheduled_groups) == ["a"] and ids(sched.waiting) == ["w"]
    manager.deny = set()
    out, _ = step(sched)  # s swapped back in, then w admitted into the same batch
    assert out.blocks_to_swap_in and ids(out.scheduled_groups) == ["a", "s", "w"] and prompts(out) == ["w"]
    assert out.num_batched_tokens == 2 + 4 and out.num_seqs == 3


def test_a_recompute_preemption_does_not_stop_swap_in():
    """The artifact swaps in unless the step swapped something out; separate steps (vLLM v0.1) swap in
    only if the step preempted nothing."""
    for composition, swapped_in in (("mixed", True), ("separate", False)):
        sched, manager = flaky_scheduler("auto", composition)
        sched.add(make_group("a", range(4), max_tokens=8, arrival=0.0))
        sched.add(make_group("s", range(4), max_tokens=8, n=2, arrival=1.0))  # auto: swapped
        sched.add(make_group("r", range(4), max_tokens=8, arrival=2.0))  # auto: recomputed
        step(sched)
        manager.deny = {"s"}
        out, _ = step(sched)  # s preempts r (recompute), then itself (swap)
        assert ids(out.preempted) == ["r", "s"] and ids(sched.swapped) == ["s"]
        manager.deny = {"a"}
        out, _ = step(sched)  # a recompute-preempts itself, swapping nothing out
        assert ids(out.preempted) == ["a"] and not out.blocks_to_swap_out
        assert bool(out.blocks_to_swap_in) is swapped_in, composition
        assert ids(out.scheduled_groups) == (["s"] if swapped_in else [])


@pytest.mark.parametrize("system", ["orca_max", "orca_pow2", "orca_oracle"])
def test_orca_under_mixed_steps(system):
    """Orca shares the scheduler: prompts join running decodes, within the running sequences + prompt
    tokens budget and the memory its reservations leave; it never preempts."""
    cache = CacheConfig(num_gpu_blocks=32, block_size=4)  # 128 slots
    memory, cfg = build_system(
        system, cache, SchedulerConfig(max_num_batched_tokens=64, max_model_len=64, step_composition="mixed")
    )
    sched = Scheduler(cfg, memory)
    groups = [make_group(i, range(10 + 3 * i), max_tokens=5 + i, arrival=float(i)) for i in range(8)]
    now, pending, mixed = 0.0, list(groups), 0
    while pending or sched.has_unfinished:
        while pending and pending[0].arrival_time <= now:
            sched.add(pending.pop(0))
        running_before = sum(len(g.seqs) for g in sched.running)
        out, _ = step(sched, now)
        now += 1.0
        assert not out.preempted
        assert out.num_batched_tokens <= 64 or len(out.scheduled_groups) == 1
        if out.is_prefill and out.num_prefill_groups < len(out.scheduled_groups):
            mixed += 1
            assert out.num_seqs == len(out.scheduled_groups)  # n = 1: one sequence per group
            assert out.num_batched_tokens == running_before + sum(
                g.num_prompt_tokens for g in out.scheduled_groups[-out.num_prefill_groups :]
            )
    assert mixed > 0
    assert all(g.seqs[0].num_output_tokens == g.sampling_params.max_tokens for g in groups)
    assert memory.chunks == {} and memory.arena.num_free == 32


# ---------------------------------------------------------------- pricing a mixed step
@pytest.fixture(scope="module")
def cost_model():
    return CostModel(load_model("opt-13b"), load_hardware("a100-40gb"))


def test_the_mixed_cost_reduces_to_prefill_and_to_decode(cost_model):
    cm = cost_model
    seqs = [(100, 0), (37, 16)]
    assert cm.mixed(seqs, 0, 0) == cm.prefill(seqs)
    assert cm.mixed([], 12, 5000) == cm.decode(12, 5000)
    both = cm.mixed(seqs, 12, 5000)
    p, d = cm.prefill(seqs), cm.decode(12, 5000)
    # One pass over 137 + 12 tokens: the weights are read once, so cheaper than the two steps apart.
    assert both.total_ms < p.total_ms + d.total_ms
    assert both.attention == pytest.approx(p.attention + d.attention)
    assert both.overhead == pytest.approx(p.overhead + cm.per_seq_overhead_ms * 12)
    big = cm.prefill([(137 + 12, 0)])  # the token-count parts are those of a 149-token step
    assert (both.linear, both.norm, both.allreduce) == (big.linear, big.norm, big.allreduce)


def test_the_simulated_executor_prices_a_mixed_step_as_one_pass(cost_model):
    sched, _ = make_scheduler(step_composition="mixed")
    sched.add(make_group("a", range(20), max_tokens=5))
    step(sched)
    sched.add(make_group("b", range(30), max_tokens=5))
    out = sched.schedule(1.0)
    assert prompts(out) == ["b"] and ids(out.scheduled_groups) == ["a", "b"]
    assert prefill_shape(out) == [(30, 0)] and decode_shape(out) == (1, 21)
    ex = SimulatedExecutor(cost_model)
    assert ex.step_ms(out) == cost_model.mixed([(30, 0)], 1, 21).total_ms


# ---------------------------------------------------------------- the real engine
def real_greedy(model, composition, num_gpu_blocks=64, mode="auto"):
    """Greedy tokens of tests/test_model_runner.py's prompts, one more request joining at each step:
    under mixed steps each joins the running decodes' batch."""
    from paged import Engine, SamplingParams, SequenceGroup
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor
    from tests.test_model_runner import NEW_TOKENS, PROMPTS

    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=4, num_cpu_blocks=64, watermark=0.0)
    cfg = SchedulerConfig(
        max_num_batched_tokens=128, max_model_len=128, preemption_mode=mode, step_composition=composition
    )
    sched = Scheduler(cfg, BlockManager(cache, cfg.max_model_len))
    engine = Engine(sched, RealExecutor(ModelRunner(model, num_gpu_blocks, 4, 64)))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    groups = [SequenceGroup(str(i), p, params, arrival_time=float(i)) for i, p in enumerate(PROMPTS)]
    for i in range(1000):
        if i < len(groups):
            sched.add(groups[i])
        if not sched.has_unfinished:
            break
        engine.step()
    return [g.seqs[0].output_token_ids for g in groups], sched, engine


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_real_greedy_tokens_are_the_same_with_mixed_steps(family):
    """A mixed step runs its decodes as one-token prefills over their cached context: the same tokens
    as transformers and as separate steps, with and without preemption."""
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, hf_greedy, tiny

    model = tiny(family)
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    separate, _, _ = real_greedy(model, "separate")
    mixed, _, engine = real_greedy(model, "mixed")
    assert separate == mixed == expected
    # Steps 2 and 3 decoded earlier requests and prefilled the newcomer in one forward pass.
    assert [(r.is_prefill, r.num_groups, r.num_tokens) for r in engine.steps[:3]] == [
        (True, 1, len(PROMPTS[0])),
        (True, 2, 1 + len(PROMPTS[1])),
        (True, 3, 2 + len(PROMPTS[2])),
    ]
    for mode in ("recompute", "swap"):
        got, sched, _ = real_greedy(model, "mixed", num_gpu_blocks=8, mode=mode)
        assert sched.num_preemptions > 0 and got == expected, mode
