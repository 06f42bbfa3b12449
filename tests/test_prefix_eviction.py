"""Prefix-cache eviction policies (paged/prefix_cache.py): which parked block goes first under LRU,
LFU and radix (leaf) eviction, and the hit statistics. The shared property tests
(tests/test_properties.py) run every registered policy on random workloads against the shadow KV
store: no referenced block is evicted, and a hit maps the KV of exactly its tokens."""

from __future__ import annotations

import pytest

from paged import BlockManager, CacheConfig
from paged.prefix_cache import EVICTION_POLICIES, ROOT_HASH, PrefixCache, chain_hash
from tests.conftest import make_group, make_manager


def chain(cache, blocks, tokens):
    """Publish blocks as one chain (block i continues block i - 1); returns their hashes."""
    parent, hashes = ROOT_HASH, []
    for b, t in zip(blocks, tokens):
        h = chain_hash(parent, (t,))
        cache.insert(b, h, (t,), parent)
        hashes.append(h)
        parent = h
    return hashes


@pytest.mark.parametrize("name", sorted(EVICTION_POLICIES))
def test_every_policy_evicts_only_parked_blocks_and_each_once(name):
    cache = PrefixCache(name)
    chain(cache, [0, 1, 2], [5, 6, 7])
    chain(cache, [3, 4], [8, 9])
    for b in (2, 1, 0, 4, 3):  # tails first, as BlockManager.free releases a table
        cache.park(b)
    cache.revive(1)
    evicted = [cache.evict() for _ in range(4)]
    assert sorted(evicted) == [0, 2, 3, 4] and cache.num_evictable == 0 and cache.num_evictions == 4
    assert cache.is_cached(1) and not cache.is_cached(2)


def test_lru_evicts_the_least_recently_released():
    cache = PrefixCache("lru")
    chain(cache, [0], [1])
    chain(cache, [1], [2])
    cache.park(1)
    cache.park(0)
    assert cache.evict() == 1


def test_lfu_keeps_the_block_hit_most():
    cache = PrefixCache("lfu")
    chain(cache, [0], [1])
    chain(cache, [1], [2])
    cache.hit(0)
    cache.hit(0)
    cache.hit(1)
    cache.park(0)  # released first, but hit twice
    cache.park(1)
    assert cache.evict() == 1


def test_radix_never_evicts_a_prefix_before_the_blocks_that_continue_it():
    """Block 0 released before its child 1 (an order a duplicate prefix block can cause): LRU would
    evict the prefix and leave 1 cached but unreachable; radix evicts the leaf first."""
    for name, first in (("lru", 0), ("radix", 1)):
        cache = PrefixCache(name)
        chain(cache, [0, 1], [1, 2])
        cache.park(0)
        cache.park(1)
        assert cache.evict() == first, name
    cache = PrefixCache("radix")
    chain(cache, [0, 1, 2], [1, 2, 3])
    for b in (0, 1, 2):
        cache.park(b)
    assert [cache.evict() for _ in range(3)] == [2, 1, 0]  # each parent becomes a leaf in turn


def test_admissions_count_queried_and_hit_blocks():
    m = make_manager(num_gpu_blocks=16, block_size=4, caching=True)
    a = make_group("a", range(13))  # 3 full blocks a hit could serve (the 4th holds the last token)
    from tests.test_block_manager import admit, free_computed

    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group("b", list(range(8)) + [99, 98, 97])  # shares a's first 2 blocks
    admit(m, b)
    cache = m.prefix_cache
    assert (cache.num_queried_blocks, cache.num_hit_blocks) == (3 + 2, 2)


# ---------------------------------------------------------------- token-level matching (radix)
def cached(num_gpu_blocks, block_size, num_cpu_blocks, **kwargs) -> CacheConfig:
    """A cache config with prefix caching and no watermark (kwargs: eviction policy, host tier)."""
    return CacheConfig(
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        num_cpu_blocks=num_cpu_blocks,
        watermark=0.0,
        enable_prefix_caching=True,
        **kwargs,
    )


def _radix_manager(num_gpu_blocks=16):
    """(lru, radix) managers of the same shape."""
    m = make_manager(num_gpu_blocks=num_gpu_blocks, block_size=4, caching=True)
    return m, BlockManager(cached(num_gpu_blocks, 4, 16, prefix_eviction="radix"), 256)


def test_radix_copies_a_partially_matching_block_and_computes_only_past_the_match():
    """a's 2nd block holds 4..7; b shares 4, 5 of it, then differs. Block-level matching (lru) shares
    block 0 and computes from token 4; radix also copies a's 2nd block (copy-on-write) and computes
    from token 6. The hit statistics count the copied tokens as saved."""
    from tests.test_block_manager import admit, free_computed

    for m, computed in zip(_radix_manager(), (4, 6)):
        a = make_group("a", range(10))
        admit(m, a)
        a_table = list(m.block_tables[a.seqs[0].seq_id])
        free_computed(m, a.seqs[0])
        b = make_group("b", [0, 1, 2, 3, 4, 5, 99, 98, 97])
        plan, copies = admit(m, b)
        seq = b.seqs[0]
        assert seq.num_computed_tokens == computed and plan.num_new_tokens == 9 - computed
        table = m.block_tables[seq.seq_id]
        assert table[0] == a_table[0]
        if computed == 6:
            assert copies == [(a_table[1], table[1])] and a_table[1] != table[1]
            # the source is held until the step ran, then parked again, still cached
            assert m.gpu.ref_counts[a_table[1]] == 1 and m.copy_pins == [a_table[1]]
            m.end_step()
            assert m.gpu.ref_counts[a_table[1]] == 0 and m.prefix_cache.is_cached(a_table[1])
            assert a_table[1] in m.prefix_cache.evictable
        else:
            assert copies == []
        assert m.prefix_cache.num_hit_tokens == computed


def test_radix_leaves_the_last_token_to_compute_even_on_a_whole_cached_block():
    """b equals a's first 8 tokens: block-level matching shares block 0 only (block 1 holds b's last
    token); radix copies 3 of block 1's tokens and computes just the last."""
    from tests.test_block_manager import admit, free_computed

    _, m = _radix_manager()
    a = make_group("a", range(12))
    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group("b", range(8))
    plan, copies = admit(m, b)
    assert b.seqs[0].num_computed_tokens == 7 and plan.num_new_tokens == 1 and len(copies) == 1


def test_radix_never_copies_a_block_whose_kv_is_not_written_yet():
    """a and b are admitted in the same step: a's blocks are published at allocation but written
    only by this step's forward pass, after the step's copies. b may share a's full block 0 (read in
    the forward, after it is written) but must not copy a's block 1; once a's prompt ran, c may."""
    from tests.test_block_manager import admit, finish_step

    _, m = _radix_manager()
    a = make_group("a", range(10))
    admit(m, a)
    b = make_group("b", [0, 1, 2, 3, 4, 5, 99, 98])
    _, copies = admit(m, b)
    assert copies == [] and b.seqs[0].num_computed_tokens == 4
    finish_step(a)
    c = make_group("c", [0, 1, 2, 3, 4, 5, 77, 76])
    _, copies = admit(m, c)
    assert len(copies) == 1 and c.seqs[0].num_computed_tokens == 6


def test_a_parked_copy_source_counts_as_a_block_taken():
    """On a full cache whose only free blocks are parked, the copy's source is taken out of the
    evictable set for the step: the prompt needs one block more than its own new blocks, and its
    copy's destination is never the source."""
    from tests.test_block_manager import admit, free_computed

    _, m = _radix_manager(num_gpu_blocks=3)
    a = make_group("a", range(10), max_tokens=1)  # 3 blocks, all parked once freed
    admit(m, a)
    src = m.block_tables[a.seqs[0].seq_id][1]
    free_computed(m, a.seqs[0])
    b = make_group("b", [0, 1, 2, 3, 4, 5, 99], max_tokens=1)  # block 0 hit, block 1 copied
    _, copies = admit(m, b)
    assert copies and copies[0][0] == src and copies[0][1] != src
    assert m.gpu.num_free == 0


def test_the_real_engine_keeps_its_tokens_with_token_level_matches():
    """On the model runner with radix matching: prompts that share a prefix ending inside a block
    copy the cached block and compute the rest; every greedy token equals transformers', and so does
    its logprob (a tiny random model's greedy tokens barely depend on the context: the logprobs show
    a missing copy)."""
    import torch

    from paged import Engine, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor
    from tests.test_model_runner import tiny

    model = tiny("opt")
    base = [(5 * j) % 90 + 3 for j in range(22)]
    prompts = [base[:22], base[:14] + [40, 41, 42, 43, 44], base[:9] + [60, 61], base[:16]]
    memory = BlockManager(cached(24, 4, 8, prefix_eviction="radix"), 128)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=128, max_model_len=128), memory)
    engine = Engine(sched, RealExecutor(ModelRunner(model, 24, 4, 8)))
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, logprobs=0)
    never = model.config.vocab_size + 1
    for i, p in enumerate(prompts):
        g = SequenceGroup(str(i), p, params, arrival_time=float(i))
        engine.run([g])
        ref = model.generate(
            torch.tensor([p]), max_new_tokens=5, do_sample=False, eos_token_id=never, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        seq = g.seqs[0]
        assert seq.output_token_ids == ref.sequences[0, len(p) :].tolist()
        steps = zip(ref.logits, seq.output_token_ids)
        logprob = sum(float(torch.log_softmax(x[0].float(), -1)[t]) for x, t in steps)
        assert seq.cumulative_logprob == pytest.approx(logprob, abs=1e-5)
    # Block hits of 12, 8 and 12 tokens, plus partial copies of 2, 1 and 3 tokens.
    assert memory.prefix_cache.num_hit_tokens == 14 + 9 + 15


def test_an_unknown_eviction_policy_names_the_choices():
    with pytest.raises(ValueError, match="lfu, lru, radix|lru, lfu, radix"):
        CacheConfig(num_gpu_blocks=4, enable_prefix_caching=True, prefix_eviction="fifo")


# ---------------------------------------------------------------- the host tier (paged/host_tier.py)
def test_an_evicted_block_comes_back_from_the_host_tier():
    """Three prompts on a 6-block cache: a's blocks are evicted by b's and offloaded; c repeats a's
    prompt and gets them back by swap-in (host -> device) instead of computing them, reading back
    exactly a's KV (the shadow store)."""
    from paged import BlockManager, Scheduler, SchedulerConfig
    from tests.shadow import ShadowExecutor, check_contents, check_invariants, check_parked_blocks

    def serve(host_blocks):
        m = BlockManager(cached(6, 2, 4, num_host_cache_blocks=host_blocks), 64)
        sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_model_len=64), m)
        ex = ShadowExecutor(m)
        t, swapped_in = 0.0, 0
        for g in (
            make_group("a", range(9), 2),
            make_group("b", range(50, 59), 2),
            make_group("c", range(9), 2),
        ):
            sched.add(g)
            while sched.has_unfinished:
                out = sched.schedule(t)
                swapped_in += len(out.blocks_to_swap_in)
                assert all(h >= 4 for _, h in out.blocks_to_swap_out)  # after the swap space's blocks
                sched.postprocess(out, ex.execute(out).outputs, t)
                t += 1
                check_invariants(m)
                check_contents(m, ex, sched.running + sched.swapped)
                check_parked_blocks(m, ex)
        return m, swapped_in, g

    m, swapped_in, c = serve(8)
    assert m.host_tier.num_restores == swapped_in == 3 and m.host_tier.num_offloads >= 3
    assert m.prefix_cache.num_hit_blocks == 4  # one still on the device, three from the host
    m0, _, _ = serve(0)
    assert m0.host_tier is None and m0.prefix_cache.num_hit_blocks < 4


def test_the_host_tier_raises_the_hit_rate_in_the_simulator(tmp_path):
    """exp=smoke on the chatbot workload (multi-turn histories) with prefix caching: a 4 GiB host
    tier brings back blocks the device cache evicted."""
    import csv

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import CONF_DIR, register
    from harness.experiment import run_experiment

    register()
    rows = {}
    for gib in (0, 4):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = compose(
                config_name="config",
                overrides=[
                    "exp=smoke",
                    "systems=[vllm]",
                    "request_rates=[1.0]",
                    "workload.kind=chatbot",
                    "system.enable_prefix_caching=true",
                    f"system.host_cache_gib={gib}",
                    f"results_dir={tmp_path / str(gib)}",
                ],
            )
        run = run_experiment(OmegaConf.to_object(raw), OmegaConf.to_yaml(raw), progress=False)
        rows[gib] = next(csv.DictReader(open(run / "points.csv")))
    assert int(rows[0]["host_restores"]) == 0 and int(rows[4]["host_restores"]) > 0
    assert float(rows[4]["prefix_hit_rate"]) > float(rows[0]["prefix_hit_rate"])


def test_the_real_engine_restores_evicted_blocks_and_keeps_its_tokens():
    """On the model runner: prompts served one after another on a cache too small to keep them all,
    then again; the second time their blocks come back from the host tier (real copies into the
    device cache), and every greedy token equals transformers'."""
    from paged import (
        BlockManager,
        Engine,
        SamplingParams,
        Scheduler,
        SchedulerConfig,
        SequenceGroup,
    )
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor
    from tests.test_model_runner import hf_greedy, tiny

    model = tiny("llama")
    prompts = [[(7 * i + j) % 100 + 1 for j in range(17)] for i in range(4)]
    num_gpu, num_cpu, num_host = 12, 8, 32
    memory = BlockManager(cached(num_gpu, 4, num_cpu, num_host_cache_blocks=num_host), 128)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=128, max_model_len=128), memory)
    engine = Engine(sched, RealExecutor(ModelRunner(model, num_gpu, 4, num_cpu + num_host)))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    got = []
    for i, p in enumerate(prompts + prompts):
        g = SequenceGroup(str(i), p, params, arrival_time=float(i))
        engine.run([g])
        got.append(g.seqs[0].output_token_ids)
    assert memory.host_tier.num_restores > 0
    assert got == [hf_greedy(model, p, 4) for p in prompts + prompts]


def test_cache_aware_admission_takes_the_longest_cached_prefix_first():
    """policy="cache_aware": of two waiting requests, the one whose prompt is cached goes first even
    though it arrived later; without a prefix cache the order is arrival."""
    from paged import NullExecutor
    from tests.conftest import make_scheduler

    for caching, first in ((True, "hit"), (False, "miss")):
        sched, _ = make_scheduler(caching=caching, policy="cache_aware", max_num_seqs=1)
        warm = make_group("warm", range(40), max_tokens=1)
        sched.add(warm)
        while sched.has_unfinished:
            out = sched.schedule(0.0)
            sched.postprocess(out, NullExecutor().execute(out).outputs, 0.0)
        sched.add(make_group("miss", range(100, 140), max_tokens=1, arrival=1.0))
        sched.add(make_group("hit", range(40), max_tokens=1, arrival=2.0))
        out = sched.schedule(2.0)
        assert [g.request_id for g in out.scheduled_groups] == [first], caching


def test_overlapped_host_offloads_run_beside_the_step_and_preemption_swaps_do_not():
    """system.host_offload_overlap: the tier's offloads (the last num_host_offloads swap-outs) run
    beside the step's compute (LMCache) instead of adding to it; a preemption's swap-outs still add.
    The option reaches the simulated executor, and a run with it is faster."""
    from harness.prefix_workloads import multi_turn
    from harness.server import ServerConfig
    from harness.sim.cost_model import CostModel
    from harness.sim.executor import SimulatedExecutor
    from harness.sim.hardware import load_hardware
    from harness.simulate import SimConfig, simulate
    from paged import SchedulerOutput
    from paged.presets import load_model

    cm = CostModel(load_model("opt-13b"), load_hardware("a100_40gb"))
    ex = SimulatedExecutor(cm)
    out = SchedulerOutput(blocks_to_swap_out=[(i, 100 + i) for i in range(50)], num_host_offloads=40)
    compute = SimulatedExecutor(cm).step_ms(SchedulerOutput())
    assert ex.step_ms(out) == pytest.approx(compute + cm.swap_ms(50))
    ex.overlap_offloads = True
    assert ex.step_ms(out) == pytest.approx(max(compute + cm.swap_ms(10), cm.swap_ms(40)))

    w = multi_turn(rate=2.0, duration_s=300, seed=0)
    clocks = {}
    for overlap in (False, True):
        server = ServerConfig(enable_prefix_caching=True, host_cache_gib=4, host_offload_overlap=overlap)
        r = simulate(w, SimConfig(server=server))
        assert r.engine.executor.overlap_offloads is overlap
        assert r.engine.scheduler.memory.host_tier.num_offloads > 0
        clocks[overlap] = sum(s.duration_s for s in r.engine.records())
    assert clocks[True] < clocks[False]


def test_radix_admits_what_fits_when_only_a_parked_copy_source_would_not():
    """On a 4-block cache, b's prompt needs all 4 blocks. Copying 3 tokens from a's parked block 0
    would hold a fifth for the step: radix then places b without that copy, as lru does, instead of
    making it wait (in an idle cache: be rejected)."""
    from paged.memory import AllocStatus
    from tests.test_block_manager import admit, free_computed

    m = BlockManager(cached(4, 4, 4, prefix_eviction="radix"), 256)
    a = make_group("a", range(9), max_tokens=1)
    admit(m, a)
    free_computed(m, a.seqs[0])
    b = make_group("b", [0, 1, 2, *range(50, 63)], max_tokens=1)  # 16 tokens: 4 blocks
    plan = m.can_allocate(b)
    assert plan.status is AllocStatus.OK and not plan.detail.pins
    assert b.seqs[0].num_computed_tokens == 0 and plan.num_new_tokens == 16
