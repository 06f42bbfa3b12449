"""The FCFS iteration-level scheduler (paper section 4.5, vLLM v0.1 semantics)."""

from __future__ import annotations

import pytest

from paged import Engine, NullExecutor, SchedulerConfig, SequenceStatus
from tests.conftest import make_group, make_scheduler


def step(sched, executor=None, now=0.0):
    executor = executor or NullExecutor()
    out = sched.schedule(now)
    result = executor.execute(out)
    finished = sched.postprocess(out, result.outputs, now)
    return out, finished


def ids(groups):
    return [g.request_id for g in groups]


def test_admission_is_fcfs_and_stops_at_the_first_group_that_does_not_fit():
    sched, _ = make_scheduler(num_gpu_blocks=10, block_size=4)
    sched.add(make_group("a", range(16), max_tokens=4))  # 4 blocks
    sched.add(make_group("b", range(28), max_tokens=4))  # 7 blocks: 6 are free
    sched.add(make_group("c", range(8), max_tokens=4))  # 2 blocks: would fit, but waits behind b
    out, _ = step(sched)
    assert out.is_prefill and ids(out.scheduled_groups) == ["a"]
    assert ids(sched.waiting) == ["b", "c"]
    while "a" in ids(sched.running):
        out, _ = step(sched)
        assert not out.is_prefill
    out, _ = step(sched)  # a finished and freed its blocks: b, then c
    assert out.is_prefill and ids(out.scheduled_groups) == ["b", "c"]


def test_token_and_sequence_budgets_bound_a_prompt_step():
    sched, _ = make_scheduler(max_num_batched_tokens=40, max_model_len=32)
    for i in range(4):
        sched.add(make_group(i, range(15), max_tokens=2))
    out, _ = step(sched)
    assert ids(out.scheduled_groups) == ["0", "1"] and out.num_batched_tokens == 30
    sched2, _ = make_scheduler(max_num_seqs=3)
    sched2.add(make_group("a", range(4), n=2))
    sched2.add(make_group("b", range(4), n=2))
    out, _ = step(sched2)
    assert ids(out.scheduled_groups) == ["a"] and out.num_seqs == 2


def test_prompt_and_decode_never_mix():
    sched, _ = make_scheduler()
    sched.add(make_group("a", range(4), max_tokens=5))
    step(sched)
    sched.add(make_group("b", range(4), max_tokens=5))
    out, _ = step(sched)
    assert out.is_prefill and ids(out.scheduled_groups) == ["b"]
    out, _ = step(sched)
    assert not out.is_prefill and ids(out.scheduled_groups) == ["a", "b"]


def _fill_and_run(mode):
    # 8 blocks of 4: three 8-token prompts take 6; growing, they run out and someone is preempted.
    sched, manager = make_scheduler(num_gpu_blocks=8, block_size=4, preemption_mode=mode)
    for i, name in enumerate("abc"):
        sched.add(make_group(name, range(8), max_tokens=8, arrival=float(i)))
    step(sched)
    preempted = []
    for _ in range(4):
        out, _ = step(sched)
        preempted += out.preempted
        if preempted:
            return sched, manager, out, preempted
    raise AssertionError("expected a preemption")


def test_the_latest_arrival_is_preempted_first_by_recompute():
    sched, manager, out, preempted = _fill_and_run("recompute")
    assert ids(preempted) == ["c"]
    c = preempted[0]
    assert c.seqs[0].status is SequenceStatus.WAITING and sched.waiting[0] is c
    assert c.seqs[0].num_computed_tokens == 0 and c.seqs[0].seq_id not in manager.block_tables
    assert c.seqs[0].num_output_tokens > 0  # its generated tokens stay, to be recomputed
    assert out.blocks_to_swap_out == []


def test_swap_preemption_moves_the_group_to_host_and_blocks_admission():
    sched, manager, out, preempted = _fill_and_run("swap")
    c = preempted[0]
    assert c.seqs[0].status is SequenceStatus.SWAPPED and sched.swapped == [c]
    assert len(out.blocks_to_swap_out) == len(manager.block_tables[c.seqs[0].seq_id])
    sched.add(make_group("late", range(2), max_tokens=2, arrival=10.0))
    out, _ = step(sched)
    assert not out.is_prefill  # nothing is admitted while a group is swapped out
    # Once memory frees up, the swapped group returns before the waiting one is admitted.
    while sched.swapped:
        out, _ = step(sched)
        assert ids(sched.waiting) == ["late"]
    assert out.blocks_to_swap_in and c in sched.running


def test_auto_mode_swaps_multi_sequence_groups_and_recomputes_single_ones():
    sched, _ = make_scheduler(num_gpu_blocks=12, block_size=4, preemption_mode="auto")
    sched.add(make_group("single", range(8), max_tokens=12, arrival=0.0))
    sched.add(make_group("pair", range(8), max_tokens=12, n=2, arrival=1.0))
    seen = {}
    for _ in range(12):
        out, _ = step(sched)
        for g in out.preempted:
            seen[g.request_id] = g.seqs[0].status
    assert seen == {"pair": SequenceStatus.SWAPPED}
    sched2, _ = make_scheduler(num_gpu_blocks=12, block_size=4, preemption_mode="auto")
    sched2.add(make_group("pair", range(8), max_tokens=12, n=2, arrival=0.0))
    sched2.add(make_group("single", range(8), max_tokens=12, arrival=1.0))
    for _ in range(12):
        out, _ = step(sched2)
        for g in out.preempted:
            seen[g.request_id] = g.seqs[0].status
    assert seen["single"] is SequenceStatus.WAITING


def test_preemption_is_all_or_nothing_per_group():
    sched, manager = make_scheduler(num_gpu_blocks=12, block_size=4, preemption_mode="swap")
    sched.add(make_group("a", range(8), max_tokens=12, arrival=0.0))
    sched.add(make_group("b", range(8), max_tokens=12, n=3, arrival=1.0))
    for _ in range(12):
        out, _ = step(sched)
        for g in out.preempted:
            assert all(s.status is SequenceStatus.SWAPPED for s in g.seqs)
            return
    raise AssertionError("expected a preemption")


def test_swap_without_host_space_falls_back_to_recompute():
    sched, _ = make_scheduler(num_gpu_blocks=8, block_size=4, num_cpu_blocks=0, preemption_mode="swap")
    for i, name in enumerate("abc"):
        sched.add(make_group(name, range(8), max_tokens=8, arrival=float(i)))
    for _ in range(6):
        out, _ = step(sched)
        if out.preempted:
            assert out.preempted[0].seqs[0].status is SequenceStatus.WAITING
            return
    raise AssertionError("expected a preemption")


@pytest.mark.parametrize("mode", ["recompute", "swap", "auto"])
def test_preempted_requests_lose_no_tokens(mode):
    sched, manager = make_scheduler(num_gpu_blocks=10, block_size=4, preemption_mode=mode)
    groups = [make_group(i, range(5 + i), max_tokens=15, n=1 + i % 2, arrival=i * 0.5) for i in range(6)]
    engine = Engine(sched, NullExecutor(step_time_s=0.1))
    finished = engine.run(groups)
    assert sched.num_preemptions > 0
    assert len(finished) == 6
    for g in groups:
        assert g.reject_reason is None
        assert all(s.num_output_tokens == 15 for s in g.seqs)
        assert g.metrics.first_token_time >= g.metrics.first_scheduled_time >= g.arrival_time
        assert all(len(s.token_times) == 15 for s in g.seqs)
    assert manager.gpu.num_free == 10 and manager.cpu.num_free == 64


def test_rejections_carry_a_reason_and_never_stall():
    sched, _ = make_scheduler(num_gpu_blocks=8, block_size=4, max_model_len=64, max_num_seqs=4)
    groups = [
        make_group("too_long", range(65), max_tokens=1),
        make_group("never_fits", range(30), max_tokens=20),  # 49 tokens of KV: 13 blocks > 8
        make_group("too_many", range(4), n=5),
        make_group("fine", range(4), max_tokens=2),
    ]
    finished = Engine(sched, NullExecutor()).run(groups)
    reasons = {g.request_id: g.reject_reason for g in finished}
    assert "max_model_len=64" in reasons["too_long"]
    assert "usable blocks" in reasons["never_fits"]
    assert "max_num_seqs=4" in reasons["too_many"]
    assert reasons["fine"] is None
    assert all(s.status is SequenceStatus.FINISHED_REJECTED for g in groups[:3] for s in g.seqs)


def test_beam_search_forks_and_frees_through_the_scheduler():
    sched, manager = make_scheduler(num_gpu_blocks=64, block_size=2)
    g = make_group("beam", range(5), max_tokens=10, n=3, beam=True)
    Engine(sched, NullExecutor(seed=3)).run([g])
    assert len(g.seqs) == 3 and all(s.num_output_tokens == 10 for s in g.seqs)
    assert manager.block_tables == {} and manager.gpu.num_free == 64


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="raise max_num_batched_tokens"):
        SchedulerConfig(max_num_batched_tokens=100, max_model_len=2048)
    with pytest.raises(ValueError, match="preemption_mode"):
        SchedulerConfig(preemption_mode="evict")
    from paged import CacheConfig

    with pytest.raises(ValueError, match="block_size"):
        CacheConfig(num_gpu_blocks=10, block_size=0)


def test_memory_pinned_after_admission_rejects_instead_of_stalling():
    # Found by the property test: a request admitted before a shared prefix pinned a block can no
    # longer reach its full length. It must end rejected with a reason, not ping-pong forever.
    from paged import SharedPrefix

    for mode in ("swap", "recompute"):
        sched, manager = make_scheduler(
            num_gpu_blocks=7, block_size=4, num_cpu_blocks=8, preemption_mode=mode
        )
        long = make_group("long", [0], max_tokens=25)  # 25 tokens of KV: all 7 blocks
        prefixed = make_group("prefixed", [0, 0], max_tokens=1, prefix=SharedPrefix("p", [0]))
        finished = Engine(sched, NullExecutor()).run([long, prefixed])
        assert {g.request_id for g in finished} == {"long", "prefixed"}
        assert prefixed.reject_reason is None
        assert "shared prefixes" in long.reject_reason
        assert manager.gpu.num_used == 1  # only the prefix's block


def test_step_counts_sequences_and_tokens_of_the_batch():
    sched, _ = make_scheduler()
    sched.add(make_group("a", range(10), max_tokens=5, n=2))
    out, _ = step(sched)
    assert out.is_prefill and out.num_seqs == 2 and out.num_batched_tokens == 10
    sched.add(make_group("b", range(6), max_tokens=5))
    out, _ = step(sched)
    assert out.is_prefill and out.num_seqs == 1 and out.num_batched_tokens == 6  # b alone
    out, _ = step(sched)
    assert not out.is_prefill and out.num_seqs == 3 and out.num_batched_tokens == 3


def test_unknown_batching_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="batching must be one of iteration, request, got 'iter'"):
        SchedulerConfig(batching="iter")


def test_every_step_is_recorded_and_preemptions_add_up_to_the_scheduler_counter():
    """Engine.step records also the steps that ran nothing (a rejection alone), so the records'
    preemptions equal the scheduler's own counter and each schedule() has its record."""
    sched, manager = make_scheduler(num_gpu_blocks=12, block_size=4, preemption_mode="recompute")
    calls = []
    schedule = sched.schedule
    sched.schedule = lambda now: calls.append(now) or schedule(now)
    groups = [make_group("too-long", range(300), arrival=0.0)]  # > max_model_len: rejected alone
    groups += [make_group(i, range(8), max_tokens=24, arrival=0.5 + 0.01 * i) for i in range(4)]
    engine = Engine(sched, NullExecutor(step_time_s=0.01))
    finished = engine.run(groups)
    assert len(finished) == 5 and groups[0].reject_reason is not None
    assert len(engine.steps) == len(calls)
    first = engine.steps[0]
    assert not first.executed and first.num_rejected == 1 and first.duration_s == 0.0
    assert first.finished == [groups[0]]
    assert sched.num_preemptions > 0
    assert sum(r.num_preempted for r in engine.steps) == sched.num_preemptions
    assert engine.num_executed == sum(r.executed for r in engine.steps)
    assert manager.gpu.num_free == 12
