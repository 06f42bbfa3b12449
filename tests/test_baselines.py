"""The contiguous-allocation baselines: buddy allocator, reservation rules, FasterTransformer's
batching, and the Figure 2 accounting of every system."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines import (
    ALL_SYSTEMS,
    SYSTEMS,
    BuddyAllocator,
    FasterTransformer,
    OrcaMax,
    OrcaOracle,
    OrcaPow2,
    build_system,
)
from harness.simulate import SimConfig, simulate
from harness.workload import synthetic
from paged import AllocStatus, CacheConfig, Engine, NullExecutor, Scheduler, SchedulerConfig, SequenceStatus
from tests.conftest import make_group


# ---------------------------------------------------------------- buddy allocator
def free_structure(b: BuddyAllocator):
    return [sorted(s) for s in b.free_lists]


@settings(max_examples=300, deadline=None)
@given(
    num_units=st.integers(1, 100),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 10**6)), max_size=60),
)
def test_buddy_never_overlaps_and_merges_back(num_units, ops):
    b = BuddyAllocator(num_units, max_order=4)
    initial = free_structure(b)
    live: dict[int, int] = {}
    for is_alloc, order, pick in ops:
        if is_alloc or not live:
            address = b.allocate(order)
            if address is None:
                assert not b.can_allocate(order)
                continue
            assert address % (1 << order) == 0 and address + (1 << order) <= num_units  # aligned, inside
            live[address] = order
        else:
            address = sorted(live)[pick % len(live)]
            del live[address]
            b.free(address)
        # No two chunks, allocated or free, overlap; together they cover the arena exactly.
        cells = [0] * num_units
        for a, k in list(live.items()) + b.free_chunks():
            for u in range(a, a + (1 << k)):
                cells[u] += 1
        assert cells == [1] * num_units
        assert b.num_free == sum(1 << k for _, k in b.free_chunks())
    for address in list(live):
        b.free(address)
    assert free_structure(b) == initial  # every split merged back


def test_buddy_split_and_merge_by_hand():
    b = BuddyAllocator(8, max_order=3)
    assert [b.allocate(0), b.allocate(0), b.allocate(1)] == [0, 1, 2]
    assert free_structure(b) == [[], [], [4], []]
    b.free(0)
    assert free_structure(b) == [[0], [], [4], []]  # buddy 1 still in use
    b.free(1)
    assert free_structure(b) == [[], [0], [4], []]
    b.free(2)
    assert free_structure(b) == [[], [], [], [0]]


# ---------------------------------------------------------------- reservation rules (Figure 3)
def contiguous(cls, num_slots=4096, max_model_len=2048):
    return cls(CacheConfig(num_gpu_blocks=num_slots, block_size=1), max_model_len)


def run_prompt_and_one_token(manager, prompt_len, max_tokens):
    """Admit a request, run its prompt step and one decode step: its KV then covers prompt + 1."""
    g = make_group("r", range(prompt_len), max_tokens=max_tokens)
    plan = manager.can_allocate(g)
    assert plan.status is AllocStatus.OK
    manager.allocate(g, plan)
    seq = g.seqs[0]
    seq.status = SequenceStatus.RUNNING
    seq.num_computed_tokens = prompt_len + 1
    seq.token_ids += [1, 2]
    return g


@pytest.mark.parametrize(
    "cls, chunk, reservation, internal, round_up",
    [
        # Paper Figure 3, request A: 7 prompt tokens, 1 generated, 2 more to come, max length 2048:
        # 2 reserved slots, 2038 never used.
        (OrcaMax, 2048, 2, 2038, 0),
        # Pow2 reserves 4 output tokens: 11 slots, a 16-slot chunk.
        (OrcaPow2, 16, 2, 1, 5),
        # Oracle reserves exactly 4: 11 slots (the last token's KV is never stored), a 16-slot chunk.
        (OrcaOracle, 16, 2, 1, 5),
    ],
)
def test_reservation_rules_on_figure_3_request_a(cls, chunk, reservation, internal, round_up):
    m = contiguous(cls)
    g = run_prompt_and_one_token(m, prompt_len=7, max_tokens=4)
    assert len(m.get_block_table(g.seqs[0])) == chunk
    u = m.usage([g])
    assert (u.token_states, u.reservation, u.internal_fragmentation) == (8, reservation, internal)
    assert u.external_fragmentation == round_up
    assert u.token_states + u.reservation + u.internal_fragmentation + u.external_fragmentation == chunk
    u.check()


def test_figure_3_request_b_with_a_512_token_limit():
    m = contiguous(OrcaMax, max_model_len=512)
    g = run_prompt_and_one_token(m, prompt_len=4, max_tokens=2)  # "You only live once"
    u = m.usage([g])
    assert (u.token_states, u.reservation, u.internal_fragmentation) == (5, 0, 507)


def test_external_fragmentation_is_free_space_too_scattered_to_use():
    m = contiguous(OrcaOracle, num_slots=8, max_model_len=8)
    groups = []
    for i in range(4):
        g = make_group(i, [1], max_tokens=1)  # 2 slots each, at 0, 2, 4, 6
        m.allocate(g, m.can_allocate(g))
        groups.append(g)
    m.free(groups[0].seqs[0])
    m.free(groups[2].seqs[0])  # four free slots, in two chunks whose buddies are in use
    wants_four = make_group("w", [1, 2], max_tokens=2)
    assert m.can_allocate(wants_four).status is AllocStatus.LATER
    u = m.usage([])
    assert u.external_fragmentation == 4 and u.free == 0


def test_a_reservation_that_can_never_fit_is_rejected():
    m = contiguous(OrcaMax, num_slots=1024)  # no 2048-slot chunk exists
    plan = m.can_allocate(make_group("x", range(10), max_tokens=10))
    assert plan.status is AllocStatus.NEVER and "cannot fit" in plan.reason


# ---------------------------------------------------------------- FasterTransformer
def test_fastertransformer_batches_are_static():
    cache = CacheConfig(num_gpu_blocks=64, block_size=16)  # 1024 slots: 4 requests of 256
    memory, cfg = build_system(
        "fastertransformer", cache, SchedulerConfig(max_num_batched_tokens=256, max_model_len=256)
    )
    assert isinstance(memory, FasterTransformer) and cfg.batching == "request" and cfg.max_num_seqs == 4
    sched = Scheduler(cfg, memory)
    lengths = [2, 20, 3, 4, 5, 6]
    groups = [make_group(i, range(10), max_tokens=n, arrival=0.0) for i, n in enumerate(lengths)]
    for g in groups:
        sched.add(g)
    executed = []  # every SchedulerOutput the executor receives

    class Recording(NullExecutor):
        def execute(self, out):
            executed.append(out)
            return super().execute(out)

    engine = Engine(sched, Recording(step_time_s=1.0))
    admitted = []
    while sched.has_unfinished:
        engine.step()
        out = executed[-1]
        if out.is_prefill:
            admitted.append([g.request_id for g in out.scheduled_groups])
            assert not [g for g in sched.running if g not in out.scheduled_groups]  # nobody mid-batch
    assert admitted == [["0", "1", "2", "3"], ["4", "5"]]  # B = 4, then the rest
    # The second batch starts only once the slowest member of the first (20 tokens) has finished.
    first_batch_end = max(g.metrics.finished_time for g in groups[:4])
    assert groups[4].metrics.first_scheduled_time >= first_batch_end == groups[1].metrics.finished_time


def test_fastertransformer_holds_memory_until_the_batch_ends():
    m = FasterTransformer(CacheConfig(num_gpu_blocks=64, block_size=16), 256)
    a, b = make_group("a", range(4), max_tokens=2), make_group("b", range(4), max_tokens=9)
    for g in (a, b):
        m.allocate(g, m.can_allocate(g))
    m.free(a.seqs[0])
    assert m.arena.num_free == 64 - 32  # a's chunk is still held
    u = m.usage([b])
    assert u.internal_fragmentation >= 256  # held, never to be used again
    m.free(b.seqs[0])
    assert m.arena.num_free == 64


# ---------------------------------------------------------------- every system, one workload
@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "sharegpt.jsonl"
    synthetic("sharegpt_synthetic", rate=1.5, duration_s=120, seed=3).save(path)
    return path


@pytest.mark.parametrize("system", ALL_SYSTEMS)
def test_every_system_runs_and_its_waste_sums_to_the_cache(system, workload):
    from harness.workload import Workload

    w = Workload.load(workload)
    r = simulate(w, SimConfig(system=system))
    assert r.metrics["num_completed"] == len(w)
    for step in r.engine.records():  # fast-forwarded stretches expanded
        step.memory.check()  # five classes sum to the KV space at every step
    for req, g in zip(w.requests, r.groups):
        assert g.seqs[0].num_output_tokens == req.output_len


def test_the_paper_ordering_of_memory_efficiency(workload):
    from harness.workload import Workload

    w = Workload.load(workload)
    tokens = {s: simulate(w, SimConfig(system=s)).metrics for s in SYSTEMS}
    used = {s: m["kv_token_states_pct"] / (100 - m["kv_free_pct"]) for s, m in tokens.items()}
    # Token states as a share of used memory: paging wastes least, reserving the maximum most.
    assert used["vllm"] > 0.9
    assert used["vllm"] > used["orca_oracle"] > used["orca_pow2"] > used["orca_max"]


def test_beam_search_on_orca_copies_on_fork():
    memory, cfg = build_system(
        "orca_oracle",
        CacheConfig(num_gpu_blocks=64, block_size=4),
        SchedulerConfig(max_num_batched_tokens=256, max_model_len=256),
    )
    sched = Scheduler(cfg, memory)
    g = make_group("beam", range(5), max_tokens=10, n=3, beam=True)
    Engine(sched, NullExecutor(seed=3)).run([g])
    assert len(g.seqs) == 3 and all(s.num_output_tokens == 10 for s in g.seqs)
    assert memory.chunks == {} and memory.arena.num_free == 64


# ---------------------------------------------------------------- random workloads, every baseline
@settings(max_examples=150, deadline=None)
@given(
    system=st.sampled_from(["orca_max", "orca_pow2", "orca_oracle", "fastertransformer"]),
    num_blocks=st.integers(16, 80),
    requests=st.lists(
        st.tuples(
            st.integers(1, 20),
            st.integers(1, 20),
            st.sampled_from([1, 1, 2, 3]),
            st.booleans(),
            st.integers(0, 6),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_random_workloads_on_the_baselines(system, num_blocks, requests):
    from tests.shadow import ShadowExecutor

    cache = CacheConfig(num_gpu_blocks=num_blocks, block_size=2)
    memory, cfg = build_system(system, cache, SchedulerConfig(max_num_batched_tokens=64, max_model_len=64))
    sched = Scheduler(cfg, memory)
    executor = ShadowExecutor(memory, check_before_forward=True, seed=0)
    engine = Engine(sched, executor, track_memory=True)
    groups = [
        make_group(i, range(p), max_tokens=o, n=n, beam=b, arrival=t)
        for i, (p, o, n, b, t) in enumerate(requests)
    ]
    pending = sorted(groups, key=lambda g: g.arrival_time)
    step = 0
    while pending or sched.has_unfinished:
        while pending and pending[0].arrival_time <= step:
            sched.add(pending.pop(0))
        engine.clock = float(step)
        engine.step()
        step += 1
        assert step < 5000
        if engine.steps and engine.steps[-1].memory is not None:
            engine.steps[-1].memory.check()
    for g in groups:
        if g.reject_reason is None:
            assert all(s.num_output_tokens == g.sampling_params.max_tokens for s in g.seqs)
    assert memory.chunks == {} and memory.arena.num_free == num_blocks


# ---------------------------------------------------------------- vAttention (baselines/vattention.py)
def test_vattention_pages_hold_whole_tokens_and_waste_at_most_a_page_per_request(workload):
    """OPT-13B keeps 10 KiB of keys per token and layer: a 64 KiB page holds 6 tokens, 2 MiB 204.
    Internal fragmentation and reservation never pass one page per running request, and its decode
    reads contiguous memory (no paged-kernel overhead)."""
    from baselines.vattention import tokens_per_page
    from harness.sim.cost_model import CostModel
    from harness.sim.hardware import load_hardware
    from harness.workload import Workload
    from paged.presets import load_model

    model, gpu = load_model("opt-13b"), load_hardware("a100_40gb")
    assert tokens_per_page(model, 64) == 6 and tokens_per_page(model, 2048) == 204
    paged, contiguous = (
        CostModel(model, gpu, block_size=16),
        CostModel(model, gpu, block_size=6, contiguous=True),
    )
    assert contiguous.decode_ms(32, 32 * 500) < paged.decode_ms(32, 32 * 500)
    w = Workload.load(workload)
    for system, page in (("vattention", 6), ("vattention_2m", 204)):
        r = simulate(w, SimConfig(system=system))
        assert r.engine.scheduler.memory.block_size == page
        for step in r.engine.records():
            if step.memory is not None:
                waste = step.memory.internal_fragmentation + step.memory.reservation
                assert waste <= page * max(1, step.num_running_groups)


def test_vattention_is_a_simulator_baseline_without_a_prefix_cache():
    from harness.server import ServerConfig

    with pytest.raises(ValueError, match="no prefix cache"):
        simulate(
            synthetic("sharegpt_synthetic", rate=1.0, duration_s=5, seed=1),
            SimConfig(system="vattention", server=ServerConfig(enable_prefix_caching=True)),
        )
    from harness.simulate import build

    with pytest.raises(ValueError, match="backend=sim"):
        build(SimConfig(system="vattention", backend="real", model="opt-125m"))


def test_vattention_prices_each_mapped_page_hidden_behind_compute_or_not():
    """Every device block vAttention allocates maps a page per layer and K or V tensor, at the
    hardware preset's page_map_us (the public A100 figure): overlapped with the step's compute the
    step lasts the longer of the two, synchronous the sum. Stepped (no fast-forward), and with
    mapping free the run equals the unpriced one."""
    from dataclasses import replace

    from harness.server import ServerConfig
    from harness.sim.hardware import load_hardware

    gpu = load_hardware("a100_40gb")
    assert gpu.page_map_us == pytest.approx(37.44)
    with pytest.raises(ValueError, match="page_map_us must be >= 0"):
        replace(gpu, page_map_us=-1.0)
    w = synthetic("sharegpt_synthetic", rate=2.0, duration_s=20, seed=1)
    durations = {}
    for name, overlap, hardware in (
        ("free", True, replace(gpu, page_map_us=0.0)),
        ("overlap", True, gpu),
        ("sync", False, gpu),
    ):
        cfg = SimConfig(system="vattention", hardware=hardware, server=ServerConfig(page_map_overlap=overlap))
        r = simulate(w, cfg)
        memory, executor = r.engine.scheduler.memory, r.engine.executor
        assert memory.count_maps == (name != "free")
        if memory.count_maps:
            assert memory.take_page_ops() == (0, 0)  # every step took its count
        durations[name] = sum(s.duration_s for s in r.engine.records())
    assert durations["free"] <= durations["overlap"] < durations["sync"]
    # A price by hand: 10 pages mapped and 3 unmapped in each of OPT-13B's 40 layers' K and V.
    cm = executor.cost_model
    assert cm.page_map_ms(10, 3) == pytest.approx(2 * 40 * (10 * 37.44 + 3 * 25.63) / 1e3)


def test_vattention_maps_pages_by_slot_with_deferred_reclamation():
    """A request maps its slot's pages as its table grows; a finished request's slot keeps its pages
    and the next request takes the idle slot with the most, mapping only past them; when the slots'
    pages would exceed the pool, idle slots' pages are unmapped first. Explicit shared prefixes are
    rejected with the reason."""
    from baselines.vattention import VAttention
    from paged import CacheConfig, SharedPrefix
    from paged.memory import AllocStatus
    from tests.conftest import make_group
    from tests.test_block_manager import admit, finish_step, free_computed

    m = VAttention(CacheConfig(num_gpu_blocks=8, block_size=4, num_cpu_blocks=8, watermark=0.0), 256)
    a = make_group("a", range(12), max_tokens=2)  # 3 pages
    admit(m, a)
    assert m.take_page_ops() == (3, 0)
    finish_step(a)  # its 13th token needs a 4th page
    m.append_slot(a.seqs[0])
    assert m.take_page_ops() == (1, 0)
    b = make_group("b", range(5))  # 2 pages
    admit(m, b)
    free_computed(m, a.seqs[0])
    free_computed(m, b.seqs[0])
    assert m.take_page_ops() == (2, 0) and sorted(m.idle_slots) == [2, 4] and m.num_mapped == 6
    c = make_group("c", range(30), max_tokens=1)  # 8 pages: a's slot (4) plus 4, 2 over the pool
    admit(m, c)
    assert m.take_page_ops() == (4, 2) and m.idle_slots == [] and m.num_mapped == 8
    prefix = SharedPrefix("p", list(range(4)))
    plan = m.can_allocate(make_group("e", range(8), prefix=prefix))
    assert plan.status is AllocStatus.NEVER and "prefix" in plan.reason


def test_vattention_siblings_map_their_own_pages_but_hold_the_pool_once():
    """n = 4 samples of one prompt share its blocks: each sequence's slot maps them (priced four
    times), but physical pages count once, so nothing is unmapped while the pool holds them."""
    from baselines.vattention import VAttention
    from paged import CacheConfig
    from tests.conftest import make_group
    from tests.test_block_manager import admit, finish_step

    m = VAttention(CacheConfig(num_gpu_blocks=8, block_size=4, num_cpu_blocks=8, watermark=0.0), 256)
    g = make_group("a", range(16), max_tokens=2, n=4)
    admit(m, g)
    assert m.take_page_ops() == (16, 0)
    finish_step(g)
    for seq in g.seqs:
        m.append_slot(seq)
    assert m.take_page_ops() == (4, 0) and m.num_spare == 0 and m.num_idle == 0
