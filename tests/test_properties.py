"""Property tests: random workloads through the real scheduler and block manager, checked after every
step against a shadow KV store (tests/shadow.py).

Random interleavings of allocate / append / fork / free / swap / preempt come from random requests
(lengths, n, beam search, arrival times, shared prefixes) on caches small enough to force preemption by
swap and by recompute. After every step: free + used = total, each block's count equals the tables
holding it, no write into a block with count > 1 but a first fill, every sequence reads back its own
history (so swap out then in restored it), the Figure 2 classes match a block-by-block count. At the
end: every request finished with all its tokens, and every block is free again.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paged import (
    BlockManager,
    CacheConfig,
    Engine,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SequenceGroup,
    SequenceStatus,
    SharedPrefix,
)
from paged.policy import POLICIES
from paged.preemption import MeasuredCosts
from paged.prefix_cache import EVICTION_POLICIES
from paged.sequence import FINISHED
from tests.shadow import (
    ShadowExecutor,
    brute_force_usage,
    check_contents,
    check_invariants,
    check_parked_blocks,
)

request = st.fixed_dictionaries(
    {
        "prompt": st.lists(st.integers(0, 3), min_size=1, max_size=24),
        "max_tokens": st.integers(1, 24),
        "n": st.sampled_from([1, 1, 1, 2, 3]),
        "beam": st.booleans(),
        "arrival_step": st.integers(0, 8),
        "use_prefix": st.booleans(),
        "abort_step": st.one_of(st.none(), st.none(), st.integers(0, 30)),  # a client going away
        "priority": st.integers(0, 2),  # used under policy="priority"
    }
)

setup = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([1, 2, 4, 8]),
        "num_gpu_blocks": st.integers(8, 48),
        "num_cpu_blocks": st.sampled_from([0, 16, 128]),
        "watermark": st.sampled_from([0.0, 0.01, 0.1]),
        "prefix_caching": st.booleans(),
        "eviction": st.sampled_from(sorted(EVICTION_POLICIES)),  # every registered one
        "host_blocks": st.sampled_from([0, 0, 3, 16]),  # the prefix cache's host tier
        "mode": st.sampled_from(["auto", "recompute", "swap", "cost"]),
        # preemption_mode="cost": seconds per swapped block (out and in) vs per recomputed token
        "swap_cost": st.sampled_from([0.001, 0.01, 0.1]),
        "max_num_seqs": st.sampled_from([2, 4, 256]),
        # chunked: mixed steps with chunked prefill under a budget of `budget` tokens
        "composition": st.sampled_from(["separate", "mixed", "chunked", "chunked"]),
        "budget": st.sampled_from([4, 7, 16]),
        "policy": st.sampled_from(sorted(POLICIES)),  # every registered policy (paged/policy.py)
        "prefix": st.lists(st.integers(0, 3), min_size=1, max_size=12),
    }
)


def run_workload(cfg, requests, check_every_step=True):
    cache = CacheConfig(
        num_gpu_blocks=cfg["num_gpu_blocks"],
        block_size=cfg["block_size"],
        num_cpu_blocks=cfg["num_cpu_blocks"],
        watermark=cfg["watermark"],
        enable_prefix_caching=cfg["prefix_caching"],
        prefix_eviction=cfg.get("eviction", "lru"),
        num_host_cache_blocks=cfg.get("host_blocks", 0) if cfg["prefix_caching"] else 0,
    )
    chunked = cfg.get("composition") == "chunked"
    sched_cfg = SchedulerConfig(
        max_num_batched_tokens=cfg["budget"] if chunked else 64,
        max_num_seqs=min(cfg["max_num_seqs"], cfg["budget"]) if chunked else cfg["max_num_seqs"],
        max_model_len=64,
        preemption_mode=cfg["mode"],
        step_composition="mixed" if chunked else cfg.get("composition", "separate"),
        enable_chunked_prefill=chunked,
        policy=cfg.get("policy", "fcfs"),
    )
    manager = BlockManager(cache, sched_cfg.max_model_len)
    scheduler = Scheduler(sched_cfg, manager)
    scheduler.preemption_costs = MeasuredCosts(cfg.get("swap_cost", 0.01), 0.005)
    executor = ShadowExecutor(manager, seed=1)
    engine = Engine(scheduler, executor, track_memory=True)
    prefix = SharedPrefix("p", cfg["prefix"])
    groups = []
    for i, r in enumerate(requests):
        use_prefix = r["use_prefix"]
        prompt = (cfg["prefix"] + r["prompt"]) if use_prefix else r["prompt"]
        params = SamplingParams(
            max_tokens=r["max_tokens"], n=r["n"], use_beam_search=r["beam"], ignore_eos=True
        )
        groups.append(
            SequenceGroup(
                str(i),
                prompt,
                params,
                arrival_time=r["arrival_step"],
                prefix=prefix if use_prefix else None,
                priority=r.get("priority", 0),
            )
        )
    pending = sorted(groups, key=lambda g: g.arrival_time)
    finished = []
    step = 0
    aborts, aborted = {}, set()
    for g, r in zip(groups, requests):
        if r.get("abort_step") is not None:
            aborts.setdefault(r["abort_step"], []).append(g.request_id)
    while pending or scheduler.has_unfinished:
        while pending and pending[0].arrival_time <= step:
            scheduler.add(pending.pop(0))
        for request_id in aborts.get(step, []):
            dropped = scheduler.abort(request_id, float(step))
            if dropped:
                aborted.add(dropped[0].request_id)
            finished += dropped
        engine.clock = float(step)
        finished += engine.step().finished
        step += 1
        assert step < 20_000, "no progress"
        if check_every_step:
            check_invariants(manager)
            check_contents(manager, executor, scheduler.running + scheduler.swapped)
            check_parked_blocks(manager, executor)
            usage = manager.usage(scheduler.running)
            usage.check()
            assert (usage.token_states, usage.reservation, usage.internal_fragmentation) == (
                brute_force_usage(manager, scheduler.running)
            )
    return groups, finished, manager, scheduler, aborted


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cfg=setup, requests=st.lists(request, min_size=1, max_size=16))
def test_random_workloads_keep_the_books_exact(cfg, requests):
    groups, finished, manager, scheduler, aborted = run_workload(cfg, requests)
    assert sorted(g.request_id for g in finished) == sorted(g.request_id for g in groups)
    for g in groups:
        if g.reject_reason is not None:
            assert all(s.status is SequenceStatus.FINISHED_REJECTED for s in g.seqs)
            continue
        if g.request_id in aborted:  # its client went away: nothing of it is left running
            assert all(s.status in FINISHED for s in g.seqs) and g.metrics.finished_time is not None
            continue
        # Nothing lost to preemption: every surviving sequence has its prompt and all its tokens.
        for s in g.seqs:
            assert s.status is SequenceStatus.FINISHED_LENGTH_CAPPED
            assert s.prompt_token_ids == g.prompt_token_ids
            assert s.num_output_tokens == min(g.sampling_params.max_tokens, 64 - g.num_prompt_tokens)
        assert len(g.seqs) == g.sampling_params.n
    # Every block is free again, but for those a shared prefix keeps.
    for prefix in list(manager.prefixes):
        manager.release_prefix(prefix)
    assert manager.block_tables == {}
    assert manager.gpu.num_free == manager.gpu.num_blocks
    assert manager.cpu.num_free == manager.cpu.num_blocks
    check_invariants(manager)


def test_shadow_catches_a_missing_copy_on_write(monkeypatch):
    """The property test can fail: with copy-on-write disabled, siblings overwrite each other."""
    import pytest

    def append_without_cow(self, seq):
        table = self.block_tables[seq.seq_id]
        if len(table) * self.block_size < len(seq.token_ids):
            table.append(self.gpu.allocate())
        return None

    monkeypatch.setattr(BlockManager, "append_slot", append_without_cow)
    cfg = dict(
        block_size=4,
        num_gpu_blocks=40,
        num_cpu_blocks=0,
        watermark=0.0,
        prefix_caching=False,
        mode="auto",
        max_num_seqs=256,
        prefix=[1],
    )
    req = dict(prompt=[1, 2, 3, 1, 2], max_tokens=4, n=2, beam=False, arrival_step=0, use_prefix=False)
    with pytest.raises(AssertionError):
        run_workload(cfg, [req])
