"""Chunked prefill (`enable_chunked_prefill`, Sarathi-Serve): decodes first, then prompts cut to the
step's token budget. The shared property tests (tests/test_properties.py, test_step_contract.py,
test_fast_forward.py) run it on random workloads too; these are the step-by-step cases, the bad
configurations, and the real engine's tokens with and without chunking."""

from __future__ import annotations

import pytest

from paged import BlockManager, CacheConfig, Engine, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
from tests.conftest import make_group, make_manager
from tests.shadow import ShadowExecutor, check_contents, check_invariants, check_parked_blocks


def chunked(budget=4, caching=False, num_gpu_blocks=64, block_size=2, mode="recompute", **kw):
    cfg = SchedulerConfig(
        max_num_batched_tokens=budget,
        max_num_seqs=min(budget, 256),
        max_model_len=64,
        step_composition="mixed",
        enable_chunked_prefill=True,
        preemption_mode=mode,
        **kw,
    )
    manager = make_manager(num_gpu_blocks, block_size, 64, 0.0, caching, cfg.max_model_len)
    return Scheduler(cfg, manager), manager


def step(sched, executor, now=0.0):
    out = sched.schedule(now)
    finished = sched.postprocess(out, executor.execute(out).outputs, now)
    return out, finished


def test_a_long_prompt_spans_steps_and_samples_only_at_its_end():
    sched, manager = chunked(budget=4)
    ex = ShadowExecutor(manager)
    a = make_group("a", range(10), max_tokens=3)
    sched.add(a)
    seq = a.seqs[0]
    ranges = []
    for t in range(3):
        out, _ = step(sched, ex, float(t))
        ranges.append(out.prefill_ranges[seq.seq_id])
        assert out.num_batched_tokens == ranges[-1][1] - ranges[-1][0]
        check_contents(manager, ex, [a])
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    assert seq.num_output_tokens == 1 and a.metrics.first_token_time == 2.0
    assert seq.num_computed_tokens == 10


def test_decodes_go_first_and_the_prompt_takes_what_is_left():
    """Stall-free batching: a running request decodes in every step while a long prompt is
    prefilled beside it, never more than the budget per step."""
    sched, manager = chunked(budget=6)
    ex = ShadowExecutor(manager)
    a = make_group("a", [1, 2, 3], max_tokens=8)
    sched.add(a)
    step(sched, ex)  # a's prompt
    b = make_group("b", range(20), max_tokens=2, arrival=1.0)
    sched.add(b)
    chunks = []
    while b.seqs[0].num_output_tokens == 0:
        out, _ = step(sched, ex, 1.0)
        assert out.scheduled_groups[0] is a and out.num_batched_tokens <= 6
        assert out.compute_range(a.seqs[0])[1] - out.compute_range(a.seqs[0])[0] == 1  # a decodes
        r = out.prefill_ranges[b.seqs[0].seq_id]
        chunks.append(r[1] - r[0])
        check_contents(manager, ex, sched.running)
    assert chunks == [5, 5, 5, 5] and a.seqs[0].num_output_tokens == 5


def test_the_budget_left_after_a_finished_prompt_admits_the_next():
    sched, _ = chunked(budget=8)
    ex = ShadowExecutor(sched.memory)
    a, b = make_group("a", range(5)), make_group("b", range(6))
    sched.add(a)
    sched.add(b)
    out, _ = step(sched, ex)
    assert out.prefill_ranges[a.seqs[0].seq_id] == (0, 5)
    assert out.prefill_ranges[b.seqs[0].seq_id] == (0, 3) and out.partial_prefills == [b]
    out, _ = step(sched, ex)  # a decodes (1 token), b finishes its prompt (3)
    assert out.prefill_ranges[b.seqs[0].seq_id] == (3, 6) and out.num_batched_tokens == 4


def test_groups_of_several_sequences_are_prefilled_whole():
    """vLLM v0 chunks single-sequence groups only: n=2 waits for a budget that holds its prompt,
    or for an empty batch."""
    sched, _ = chunked(budget=4)
    ex = ShadowExecutor(sched.memory)
    g = make_group("g", range(9), max_tokens=2, n=2)
    sched.add(g)
    out, _ = step(sched, ex)
    assert out.prefill_ranges[g.seqs[0].seq_id] == (0, 9) and not out.partial_prefills


@pytest.mark.parametrize("how", ["abort", "recompute", "swap"])
def test_a_prompt_stopped_between_chunks_leaves_no_unwritten_block_in_the_prefix_cache(how, monkeypatch):
    """Its blocks were published at allocation; those past its computed tokens hold nothing. A later
    identical prompt must not map them (the shadow store would read another sequence's KV). The
    check fails without BlockManager._forget_unwritten."""

    def run():
        mode = "recompute" if how == "abort" else how
        sched, manager = chunked(budget=4, caching=True, block_size=2, num_gpu_blocks=9, mode=mode)
        ex = ShadowExecutor(manager)

        def go(t):
            step(sched, ex, t)
            check_invariants(manager)
            check_contents(manager, ex, sched.running + sched.swapped)
            check_parked_blocks(manager, ex)

        d = make_group("d", [9, 9, 9], max_tokens=14)  # grows until it preempts a
        a = make_group("a", list(range(12)), max_tokens=2, arrival=1.0)
        sched.add(d)
        go(0.0)
        sched.add(a)
        t = 1.0
        while True:
            go(t)
            t += 1
            if how == "abort":
                sched.abort("a", t)
                break
            if a.metrics.preemption_times:
                break
            assert t < 20, "a was never preempted"
        assert a.seqs[0].num_output_tokens == 0  # stopped between chunks
        sched.abort("d", t)
        sched.add(make_group("b", list(range(12)), max_tokens=2, arrival=t))
        while sched.has_unfinished:
            t += 1
            go(t)
            assert t < 100, "no progress"

    run()
    monkeypatch.setattr(BlockManager, "_forget_unwritten", lambda self, seq: None)
    with pytest.raises(AssertionError, match="another sequence's KV"):  # a hit on it, or parked
        run()


def test_a_prompt_swapped_out_between_chunks_comes_back_without_a_slot_appended():
    """Swap-in appends a slot for each sequence's next token, as a decode does; a prompt still in its
    chunks has no next token yet (its prompt's blocks are all allocated), so it gets none, as in
    _decode. The prompt then goes on from where it stopped."""
    sched, manager = chunked(budget=4, caching=True, block_size=2, num_gpu_blocks=9, mode="swap")
    ex = ShadowExecutor(manager)
    in_prompt = []
    append_slot = manager.append_slot

    def spy(seq):
        if len(seq.token_ids) - seq.num_computed_tokens > 1:
            in_prompt.append(seq.seq_id)
        return append_slot(seq)

    manager.append_slot = spy
    d = make_group("d", [9, 9, 9], max_tokens=14)  # grows until it swaps a out
    a = make_group("a", list(range(12)), max_tokens=2, arrival=1.0)
    sched.add(d)
    step(sched, ex, 0.0)
    sched.add(a)
    t = 1.0
    swapped_in_prompt = False
    while sched.has_unfinished:
        out, _ = step(sched, ex, t)
        check_invariants(manager)
        check_contents(manager, ex, sched.running + sched.swapped)
        if a in sched.swapped:
            swapped_in_prompt = swapped_in_prompt or a.seqs[0].num_output_tokens == 0
        t += 1
        assert t < 100, "no progress"
    assert swapped_in_prompt and a.metrics.num_swaps > 0  # swapped out between its prompt's chunks
    assert in_prompt == []
    assert a.seqs[0].num_output_tokens == 2 and d.seqs[0].num_output_tokens == 14


def test_bad_configurations_name_the_fix():
    with pytest.raises(ValueError, match="step_composition"):
        SchedulerConfig(enable_chunked_prefill=True)
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerConfig(enable_chunked_prefill=True, step_composition="mixed", max_num_batched_tokens=64)
    with pytest.raises(ValueError, match="enable chunked prefill"):
        SchedulerConfig(max_num_batched_tokens=512, max_model_len=2048)
    SchedulerConfig(
        enable_chunked_prefill=True, step_composition="mixed", max_num_batched_tokens=512, max_num_seqs=256
    )


def test_the_simulator_prices_each_chunk(cost_model_125m):
    from harness.sim.executor import SimulatedExecutor, prefill_shape

    sched, _ = chunked(budget=4)
    a = make_group("a", range(10))
    sched.add(a)
    out = sched.schedule(0.0)
    assert prefill_shape(out) == [(4, 0)]
    ex = SimulatedExecutor(cost_model_125m)
    assert ex.step_ms(out) == cost_model_125m.prefill([(4, 0)]).total_ms
    sched.postprocess(out, ex.execute(out).outputs, 0.0)
    out = sched.schedule(1.0)
    assert prefill_shape(out) == [(4, 4)]  # the second chunk attends to the first's KV


@pytest.fixture(scope="module")
def cost_model_125m():
    from harness.sim.cost_model import CostModel
    from harness.sim.hardware import load_hardware
    from paged.presets import load_model

    return CostModel(load_model("opt-125m"), load_hardware("a100_40gb"))


# ---------------------------------------------------------------- the real engine
def real_tokens(model, budget, caching=False, params=None, num_gpu_blocks=64, mode="auto"):
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor
    from tests.test_model_runner import NEW_TOKENS, PROMPTS

    cache = CacheConfig(
        num_gpu_blocks=num_gpu_blocks,
        block_size=4,
        num_cpu_blocks=64,
        watermark=0.0,
        enable_prefix_caching=caching,
    )
    cfg = SchedulerConfig(
        max_num_batched_tokens=budget or 128,
        max_num_seqs=min(budget or 128, 256),
        max_model_len=128,
        preemption_mode=mode,
        step_composition="mixed",
        enable_chunked_prefill=budget is not None,
    )
    sched = Scheduler(cfg, BlockManager(cache, cfg.max_model_len))
    engine = Engine(sched, RealExecutor(ModelRunner(model, num_gpu_blocks, 4, 64)))
    params = params or SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    # The prompts twice (the second time a prefix-cache hit), one joining at each step.
    prompts = PROMPTS + [p + [3, 4] for p in PROMPTS]
    groups = [SequenceGroup(str(i), p, params, arrival_time=float(i)) for i, p in enumerate(prompts)]
    for i in range(1000):
        if i < len(groups):
            sched.add(groups[i])
        if not sched.has_unfinished:
            break
        engine.step()
    partial = sum(1 for r in engine.steps if r.is_prefill)  # steps with prompts or chunks
    return [[s.output_token_ids for s in g.seqs] for g in groups], sched, partial


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_real_greedy_tokens_are_identical_with_and_without_chunking(family):
    """The same tokens as transformers whatever the chunk: each chunk writes its KV through the
    prefix-prefill path and attends to the chunks before it; with the prefix cache and preemption
    too."""
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, hf_greedy, tiny

    model = tiny(family)
    prompts = PROMPTS + [p + [3, 4] for p in PROMPTS]
    expected = [[hf_greedy(model, p, NEW_TOKENS)] for p in prompts]
    whole, _, steps_whole = real_tokens(model, None)
    assert whole == expected
    for budget in (3, 5, 8):
        for caching in (False, True):
            got, _, steps = real_tokens(model, budget, caching)
            assert got == expected, (budget, caching)
            assert steps > steps_whole  # the prompts really were cut
    for mode in ("recompute", "swap"):
        got, sched, _ = real_tokens(model, 5, num_gpu_blocks=10, mode=mode)
        assert sched.num_preemptions > 0 and got == expected, mode


def test_real_seeded_sampling_is_identical_with_and_without_chunking():
    """Seeded sampling gives the same tokens with and without chunking: a chunk that does not end its
    prompt samples nothing, so a request's seeded generator draws the same numbers either way."""
    from tests.test_model_runner import tiny

    model = tiny("llama")
    params = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.95, n=1, seed=7, ignore_eos=True)
    whole, _, _ = real_tokens(model, None, params=params)
    got, _, _ = real_tokens(model, 3, params=params)
    assert got == whole


def test_llm_api_with_chunked_prefill_gives_the_same_greedy_tokens(tmp_path, llm_engines):
    """`LLM(enable_chunked_prefill=True)` (vLLM's parameter) runs mixed steps with prompts cut to the
    step's budget, and greedy decoding gives the tokens it gives without chunking (and transformers');
    the budget defaults to vLLM's 512, at least max_num_seqs."""
    from paged.llm import LLM
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, hf_greedy, tiny

    model = tiny("llama")
    model.save_pretrained(tmp_path / "ckpt")
    engines = llm_engines
    kw = dict(model=str(tmp_path / "ckpt"), block_size=4, kv_cache_gib=0.01, seed=0)
    whole = LLM(**kw)
    chunked = LLM(**kw, enable_chunked_prefill=True, max_num_batched_tokens=4, max_num_seqs=4)
    cfg = chunked.scheduler_config
    assert cfg.enable_chunked_prefill and cfg.step_composition == "mixed" and cfg.max_num_batched_tokens == 4
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    assert [o.outputs[0].token_ids for o in whole.generate(PROMPTS, params)] == expected
    assert [o.outputs[0].token_ids for o in chunked.generate(PROMPTS, params)] == expected
    steps_whole, steps_chunked = (e.steps for e in engines)
    assert max(r.num_tokens for r in steps_chunked) <= 4 < max(len(p) for p in PROMPTS)
    assert sum(r.is_prefill for r in steps_chunked) > sum(r.is_prefill for r in steps_whole)
    # vLLM's default budget with chunking, raised to max_num_seqs where that is larger
    assert LLM(**kw, enable_chunked_prefill=True).scheduler_config.max_num_batched_tokens == 512
    big = LLM(**kw, enable_chunked_prefill=True, max_num_seqs=1024)
    assert big.scheduler_config.max_num_batched_tokens == 1024
