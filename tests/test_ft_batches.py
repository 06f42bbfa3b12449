"""FasterTransformer's batches as the paper's artifact formed them (docs/baselines.md): the
prompt + output length limit, padding, and every member finishing when its batch ends."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from baselines import build_system
from harness.server import ServerConfig
from harness.sim.cost_model import CostModel
from harness.sim.executor import SimulatedExecutor
from harness.sim.hardware import load_hardware
from harness.simulate import SimConfig, build
from paged import CacheConfig, Engine, NullExecutor, Scheduler, SchedulerConfig
from paged.presets import load_model
from tests.conftest import make_group


def ft_scheduler(batch=4, max_total_len=2040, pad=True, num_gpu_blocks=1024, max_model_len=2048):
    cache = CacheConfig(num_gpu_blocks=num_gpu_blocks, block_size=16)  # enough for 8 x 2048 slots
    sched = SchedulerConfig(max_num_batched_tokens=max_model_len, max_model_len=max_model_len)
    memory, cfg = build_system("fastertransformer", cache, sched, batch, max_total_len, pad)
    return Scheduler(cfg, memory), memory


class Recording(NullExecutor):
    def __init__(self, inner=None):
        super().__init__(step_time_s=1.0)
        self.inner = inner
        self.outs, self.ms = [], []

    def execute(self, out):
        self.outs.append(out)
        if self.inner is not None:
            self.ms.append(self.inner.step_ms(out))
        return super().execute(out)


def run(sched, groups, executor=None):
    executor = executor or Recording()
    for g in groups:
        sched.add(g)
    engine = Engine(sched, executor)
    while sched.has_unfinished:
        engine.step()
    batches = [
        [g.request_id for g in o.scheduled_groups[len(o.scheduled_groups) - o.num_prefill_groups :]]
        for o in executor.outs
        if o.is_prefill
    ]
    return batches, engine, executor


REQUESTS = [  # (prompt, output)
    (1000, 500),  # batch 1: longest prompt 1000 + longest output 500
    (200, 1000),  # 1000 + 1000 = 2000
    (1030, 10),  # 1030 + 1000 = 2030
    (100, 1011),  # 1030 + 1011 = 2041 > 2040: starts batch 2
    (50, 50),  # 100 + 1011
    (1029, 5),  # 1029 + 1011 = 2040: fits exactly
    (10, 10),  # still 2040: the 4th member
    (10, 10),  # B = 4 is full: batch 3
]


def requests():
    return [make_group(i, range(p), max_tokens=o, arrival=0.0) for i, (p, o) in enumerate(REQUESTS)]


def test_the_2040_rule_and_b_form_the_batches():
    sched, _ = ft_scheduler()
    batches, _, _ = run(sched, requests())
    assert batches == [["0", "1", "2"], ["3", "4", "5", "6"], ["7"]]
    # Without the rule only B (4) bounds a batch.
    sched, _ = ft_scheduler(max_total_len=None)
    batches, _, _ = run(sched, requests())
    assert batches == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]


def test_a_request_over_the_limit_alone_still_runs():
    sched, _ = ft_scheduler()
    groups = [make_group("big", range(1500), max_tokens=547), make_group("small", range(4), max_tokens=2)]
    batches, _, _ = run(sched, groups)
    assert batches == [["big"], ["small"]]  # 2047 > 2040: alone, then the next batch


def test_every_member_finishes_when_its_batch_ends():
    sched, _ = ft_scheduler()
    groups = requests()
    run(sched, groups)
    # One step per token on the NullExecutor's clock: a batch lasts its longest output.
    ends = [1000.0, 1000.0 + 1011.0, 2011.0 + 10.0]
    for g in groups:
        batch = 0 if int(g.request_id) < 3 else 1 if int(g.request_id) < 7 else 2
        assert g.metrics.finished_time == ends[batch]
        assert g.metrics.first_scheduled_time == (0.0 if batch == 0 else ends[batch - 1])
        assert g.seqs[0].num_output_tokens == g.sampling_params.max_tokens  # no extra tokens
    # Unpadded (today's default): each request finishes with its own last token.
    sched, _ = ft_scheduler(pad=False)
    groups = requests()
    run(sched, groups)
    assert [g.metrics.finished_time for g in groups[:3]] == [500.0, 1000.0, 10.0]


def test_finished_members_are_reported_with_the_batch_and_memory_is_freed_then():
    sched, memory = ft_scheduler(num_gpu_blocks=512)  # 4 chunks of 2048 slots
    a, b = make_group("a", range(8), max_tokens=2), make_group("b", range(8), max_tokens=5)
    sched.add(a)
    sched.add(b)
    engine = Engine(sched, NullExecutor(step_time_s=1.0))
    reported = []
    while sched.has_unfinished:
        record = engine.step()
        reported.append([g.request_id for g in record.finished])
        if len(reported) == 3:  # a is done (2 tokens), b is not: a still holds its chunk
            assert sched.running == [b] and memory.arena.num_free == 512 - 2 * 128
    assert reported == [[], [], [], [], ["a", "b"]]
    assert memory.chunks == {} and memory.arena.num_free == 512


@pytest.fixture(scope="module")
def cost_model():
    return CostModel(load_model("opt-13b"), load_hardware("a100-40gb"))


def test_padded_steps_are_priced_at_the_batch_shape(cost_model):
    cm = cost_model
    sched, _ = ft_scheduler(pad=True)
    groups = [make_group(i, range(p), max_tokens=o) for i, (p, o) in enumerate([(5, 2), (9, 4), (7, 3)])]
    _, _, ex = run(sched, groups, Recording(SimulatedExecutor(cm)))
    assert [o.padded_batch for o in ex.outs] == [(3, 9)] * 4
    assert ex.ms[0] == cm.prefill([(9, 0)] * 3).total_ms  # three rows of the longest prompt
    # Decode steps: all three rows until the longest output (4 tokens) is done, at 9 + tokens so far,
    # although the first member has finished after step 2 and the third after step 3.
    assert ex.ms[1:] == [cm.decode_ms(3, 3 * (9 + g)) for g in (1, 2, 3)]
    # Unpadded: the real shapes, members leaving as they finish.
    sched, _ = ft_scheduler(pad=False)
    groups = [make_group(i, range(p), max_tokens=o) for i, (p, o) in enumerate([(5, 2), (9, 4), (7, 3)])]
    _, _, ex = run(sched, groups, Recording(SimulatedExecutor(cm)))
    assert all(o.padded_batch is None for o in ex.outs)
    assert ex.ms[0] == cm.prefill([(5, 0), (9, 0), (7, 0)]).total_ms
    assert ex.ms[1:] == [cm.decode_ms(3, 6 + 10 + 8), cm.decode_ms(2, 11 + 9), cm.decode_ms(1, 12)]


def test_settings_are_validated_and_wired_from_the_server_config():
    with pytest.raises(ValueError, match="batching"):
        SchedulerConfig(pad_batch=True)
    with pytest.raises(ValueError, match="batching"):
        SchedulerConfig(max_batch_total_len=2040)
    with pytest.raises(ValueError, match="ft_max_total_len"):
        ServerConfig(ft_max_total_len=0)
    engine, _, _ = build(
        SimConfig(system="fastertransformer", server=ServerConfig(ft_max_total_len=2040, ft_pad_batch=True))
    )
    cfg = engine.scheduler.config
    assert cfg.batching == "request" and cfg.max_batch_total_len == 2040 and cfg.pad_batch
    engine, _, _ = build(SimConfig(system="fastertransformer"))  # defaults: today's FT
    cfg = engine.scheduler.config
    assert cfg.max_batch_total_len is None and not cfg.pad_batch
    engine, _, _ = build(SimConfig(system="vllm", server=ServerConfig(ft_pad_batch=True)))  # FT only
    assert not engine.scheduler.config.pad_batch


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(1, 40), st.integers(1, 30), st.sampled_from([1, 1, 2]), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    batch=st.integers(1, 5),
    limit=st.sampled_from([None, 20, 50]),
    composition=st.sampled_from(["separate", "mixed"]),
)
@example(requests=[(35, 30, 1, False)], batch=1, limit=None, composition="separate")  # length-capped
def test_random_padded_batches_leak_nothing(requests, batch, limit, composition):
    cache = CacheConfig(num_gpu_blocks=64, block_size=4)  # 4 chunks of 64 slots
    sched_cfg = SchedulerConfig(max_num_batched_tokens=64, max_model_len=64, step_composition=composition)
    memory, cfg = build_system("fastertransformer", cache, sched_cfg, batch, limit, True)
    sched = Scheduler(cfg, memory)
    groups = [
        make_group(i, range(p), max_tokens=o, n=n, beam=b, arrival=float(i))
        for i, (p, o, n, b) in enumerate(requests)
    ]
    finished = Engine(sched, Recording()).run(groups)
    assert sorted(g.request_id for g in finished) == sorted(g.request_id for g in groups)
    assert memory.chunks == {} and memory.arena.num_free == 64 and not sched._held
    ends = {}
    for g in finished:
        if g.reject_reason is None:
            expected = min(g.sampling_params.max_tokens, 64 - g.num_prompt_tokens)  # max_model_len
            assert all(s.num_output_tokens == expected for s in g.seqs)
            # Members admitted together finish together.
            ends.setdefault(g.metrics.first_scheduled_time, set()).add(g.metrics.finished_time)
    assert all(len(times) == 1 for times in ends.values())
