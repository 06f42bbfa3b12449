"""The exact fast-forward (paged/fast_forward.py): a simulated run with it is the run without it.

Equality is bit for bit: every request's timestamps and tokens, every sequence's status, the final
free lists of the memory policy, and every column of the per-step series (so points.csv, the Figure 2
breakdown and the artifact-style metrics), on random workloads of every system, step composition,
preemption mode, block size, parallel sampling, beam search, shared prefixes and the prefix cache, and
on every experiment preset at a smoke size. Also: the overload early stop (harness/overload.py).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paged.sequence as sequence_module
from baselines import ALL_SYSTEMS, SYSTEMS
from harness.metrics import step_series
from harness.overload import OverloadStop
from harness.simulate import ServerConfig, SimConfig, build, simulate
from harness.workload import synthetic
from paged import DecodeRun, SamplingParams, SequenceGroup, SharedPrefix
from paged.policy import POLICIES


def _fresh_ids(monkeypatch) -> None:
    """Sequence ids from 0, so that two runs' sequences (whose simulated tokens derive from their
    ids) are the same sequences."""
    monkeypatch.setattr(sequence_module, "_seq_ids", itertools.count())


def assert_same_run(off, on) -> None:
    """Two engines that ran the same requests: identical outcome."""
    (e_off, g_off), (e_on, g_on) = off, on
    assert e_off.clock == e_on.clock
    assert (
        e_off.num_executed
        == e_on.num_executed
        == e_on.num_steps - sum(not r.executed for r in e_on.steps if type(r) is not DecodeRun)
    )
    for a, b in zip(g_off, g_on, strict=True):
        assert a.metrics == b.metrics, a.request_id
        assert a.reject_reason == b.reject_reason
        for sa, sb in zip(a.seqs, b.seqs, strict=True):
            assert sa.seq_id == sb.seq_id and sa.status is sb.status
            assert sa.token_ids == sb.token_ids and sa.token_times == sb.token_times
            assert sa.num_computed_tokens == sb.num_computed_tokens
    m_off, m_on = e_off.scheduler.memory, e_on.scheduler.memory
    if hasattr(m_off, "gpu"):  # paged: the free list in the same order, the same reference counts
        assert list(m_off.gpu.free_ids) == list(m_on.gpu.free_ids)
        assert m_off.gpu.ref_counts == m_on.gpu.ref_counts
        assert list(m_off.cpu.free_ids) == list(m_on.cpu.free_ids)
    else:
        assert m_off.arena.free_lists == m_on.arena.free_lists
    s_off, s_on = step_series(e_off.steps), step_series(e_on.steps)
    for key in s_off:
        assert np.array_equal(s_off[key], s_on[key], equal_nan=s_off[key].dtype.kind == "f"), key
    assert len(e_off.records()) == len(e_on.records())


def _run(groups_factory, cfg: SimConfig, monkeypatch):
    _fresh_ids(monkeypatch)
    engine, _, _ = build(cfg)
    groups = groups_factory()
    engine.run(groups)
    return engine, groups


requests = st.lists(
    st.tuples(
        st.floats(0.0, 2.0, allow_subnormal=False),  # gap to the previous arrival, s
        st.integers(1, 120),  # prompt tokens
        st.integers(1, 90),  # max_tokens
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=60,
    deadline=None,
    # monkeypatch only resets the sequence-id counter, which every example sets again itself
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    reqs=requests,
    system=st.sampled_from(ALL_SYSTEMS),
    composition=st.sampled_from(["separate", "mixed", "chunked"]),
    preemption=st.sampled_from(["auto", "recompute", "swap"]),
    block_size=st.sampled_from([1, 4, 16, 256]),  # 256: a first step whose append finds no block
    n=st.sampled_from([1, 1, 2, 3]),
    beam=st.booleans(),
    kv_gib=st.sampled_from([0.004, 0.01, 0.05]),
    sharing=st.sampled_from(["none", "prefix", "cache"]),
    memory_every=st.sampled_from([1, 3]),
    policy=st.sampled_from(sorted(POLICIES)),  # every registered policy (paged/policy.py),
)
def test_fast_forward_equals_stepping(
    monkeypatch,
    reqs,
    system,
    composition,
    preemption,
    block_size,
    n,
    beam,
    kv_gib,
    sharing,
    memory_every,
    policy,
):
    """Random workloads on a small cache (so that runs preempt, swap and queue): identical outcome."""
    if system != "vllm":
        sharing = "none"  # prefixes and the prefix cache are the paged manager's
    prefix = SharedPrefix("p", list(range(1000, 1037))) if sharing == "prefix" else None

    def groups():
        t = 0.0
        out = []
        for i, (gap, prompt, max_tokens) in enumerate(reqs):
            t += gap
            tokens = [(i * 13 + j) % 7 for j in range(prompt)]  # repeats: the prefix cache finds hits
            if prefix is not None and i % 2:
                tokens = prefix.token_ids + tokens
            params = SamplingParams(
                n=n, max_tokens=max_tokens, ignore_eos=True, use_beam_search=beam and n > 1
            )
            group = SequenceGroup(str(i), tokens, params, t, prefix if prefix and i % 2 else None)
            group.priority = (i * 7) % 3
            out.append(group)
        return out

    server = ServerConfig(
        block_size=block_size,
        kv_cache_gib=kv_gib,
        swap_space_gib=0.01,
        step_composition="mixed" if composition == "chunked" else composition,
        enable_chunked_prefill=composition == "chunked",
        max_num_batched_tokens=32 if composition == "chunked" else 2560,
        preemption_mode=preemption,
        enable_prefix_caching=sharing == "cache",
        max_num_seqs=16,
        scheduling_policy=policy,
    )

    def cfg(ff: bool) -> SimConfig:
        return SimConfig(
            system=system, model="opt-125m", server=server, memory_every=memory_every, fast_forward=ff
        )

    off = _run(groups, cfg(False), monkeypatch)
    if prefix is not None:
        prefix.block_ids, prefix.computed = None, False  # the second run starts it afresh
    on = _run(groups, cfg(True), monkeypatch)
    assert_same_run(off, on)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("composition", ["separate", "mixed"])
def test_fast_forward_skips_most_steps(monkeypatch, system, composition):
    """A realistic load: identical, and most steps are advanced in runs (the speed: benchmarks)."""
    w = synthetic("sharegpt_synthetic", rate=1.0, duration_s=120, seed=3)
    server = ServerConfig(step_composition=composition)
    runs = []
    for ff in (False, True):
        _fresh_ids(monkeypatch)
        r = simulate(w, SimConfig(system=system, server=server, fast_forward=ff))
        runs.append((r.engine, r.groups))
    assert_same_run(*runs)
    engine = runs[1][0]
    fast = sum(len(r) for r in engine.steps if type(r) is DecodeRun)
    assert fast > 0.5 * engine.num_steps


def test_records_expand_runs(monkeypatch):
    """Engine.records() gives one StepRecord per step, memory classes summing to the total."""
    w = synthetic("sharegpt_synthetic", rate=1.0, duration_s=60, seed=0)
    _fresh_ids(monkeypatch)
    on = simulate(w, SimConfig(fast_forward=True)).engine
    _fresh_ids(monkeypatch)
    off = simulate(w, SimConfig(fast_forward=False)).engine
    a, b = off.records(), on.records()
    assert len(a) == len(b) == on.num_steps
    for x, y in zip(a, b):
        assert (x.start_time, x.duration_s, x.num_seqs, x.num_groups, len(x.finished)) == (
            y.start_time,
            y.duration_s,
            y.num_seqs,
            y.num_groups,
            len(y.finished),
        )
        assert (x.memory is None) == (y.memory is None)
        if y.memory is not None:
            y.memory.check()
            assert x.memory.percentages() == y.memory.percentages()


# ---------------------------------------------------------------------------------- every preset
CONF = Path(__file__).resolve().parents[1] / "harness" / "conf" / "exp"
PRESETS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "smoke_real")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_identical_at_smoke_size(monkeypatch, preset):
    """Each preset's points at a smoke size (30 s, its lowest and highest rate per system): the same
    points.csv row (but wall time) and the same per-step series with and without fast-forward."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import CONF_DIR, register
    from harness.datasets import ARTIFACT_SHAREGPT, ETALON_SHAREGPT, find_data_file
    from harness.experiment import points, run_point

    register()
    overrides = [f"exp={preset}", "duration_s=30"]
    from harness.datasets import WorkloadError

    try:
        find_data_file(ARTIFACT_SHAREGPT)
        find_data_file(ETALON_SHAREGPT)
    except WorkloadError:
        # The real data is not on this machine: the presets' stand-in workloads instead.
        overrides += ["workload.dataset=sharegpt_synthetic", "workload.new_conversation_prob=null"]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=overrides))
    grid = points(cfg)
    picked = {}
    for p in grid:  # per system and sweep value: the lowest and the highest rate
        key = (p.system, p.params)
        lo, hi = picked.get(key, (p, p))
        picked[key] = (min(lo, p, key=lambda q: q.rate), max(hi, p, key=lambda q: q.rate))
    for lo, hi in picked.values():
        for point in {lo, hi}:
            results = []
            for ff in (False, True):
                cfg.fast_forward = ff
                _fresh_ids(monkeypatch)
                try:
                    row, requests, series = run_point(cfg, point)
                except WorkloadError as e:  # a preset whose workload needs data not on this machine
                    pytest.skip(str(e))
                row.pop("wall_s")
                results.append((row, requests, series))
            (row_a, req_a, ser_a), (row_b, req_b, ser_b) = results
            assert row_a.keys() == row_b.keys()
            for k in row_a:
                a, b = row_a[k], row_b[k]
                assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (point, k)
            assert req_a == req_b
            for k in ser_a:
                assert np.array_equal(ser_a[k], ser_b[k], equal_nan=ser_a[k].dtype.kind == "f"), (point, k)


# ---------------------------------------------------------------------------------- early stop
def test_early_stop_ends_an_overloaded_point_and_marks_it():
    w = synthetic("sharegpt_synthetic", rate=8.0, duration_s=1200, seed=0)
    full = simulate(w, SimConfig(system="orca_max"))
    assert full.metrics["normalized_latency"] > 5.0 and not full.metrics["early_stopped"]
    stop = OverloadStop(max_latency=5.0, window_s=120, check_every_s=60)
    r = simulate(w, SimConfig(system="orca_max", early_stop=stop))
    m = r.metrics
    assert m["early_stopped"] and 120 <= m["stopped_at_s"] < 0.8 * full.engine.clock
    assert m["num_completed"] < len(w)
    assert m["normalized_latency"] < full.metrics["normalized_latency"]  # a lower bound of it


def test_early_stop_never_stops_a_point_below_its_limit():
    """The rule stops only runs certain to end above its limit: a limit just above an overloaded
    run's full-run latency never stops it, while a third of it does."""
    w = synthetic("sharegpt_synthetic", rate=1.5, duration_s=1200, seed=0)
    full = simulate(w, SimConfig(system="orca_max")).metrics["normalized_latency"]
    assert full > 1.0  # overloaded: the queue grows
    above = simulate(
        w, SimConfig(system="orca_max", early_stop=OverloadStop(full * 1.001, window_s=60, check_every_s=60))
    )
    assert not above.metrics["early_stopped"] and above.metrics["normalized_latency"] == full
    below = simulate(
        w, SimConfig(system="orca_max", early_stop=OverloadStop(full / 3, window_s=60, check_every_s=60))
    )
    assert below.metrics["early_stopped"]


def test_early_stop_leaves_the_capacity_table_unchanged(tmp_path):
    """A short Figure 12(a)-like grid: the same capacities with and without the early stop."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import CONF_DIR, register
    from harness.experiment import capacity_table, points, run_point

    register()
    overrides = [
        "exp=sharegpt_opt13b",
        "workload.dataset=sharegpt_synthetic",
        "duration_s=900",
        "rates_by_system={}",
        "request_rates=[0.1,0.25,0.5,0.75,1.0,8.0]",
        "systems=[orca_max,fastertransformer]",
        "early_stop_window_s=120",
        "early_stop_factor=4",  # 2 s/token: a 900 s trace reaches it
    ]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_object(compose("config", overrides=overrides))
    cfg.rates_by_system = {}
    tables = []
    stopped = 0
    for early in (False, True):
        cfg.early_stop = early
        rows = [run_point(cfg, p)[0] for p in points(cfg)]
        stopped += sum(bool(r["early_stopped"]) for r in rows)
        if not early:
            full = rows
        tables.append(capacity_table(rows, cfg))
    assert stopped > 0  # the grid does reach far past capacity
    # The guarantee's premise (harness/overload.py): each system's first point above the threshold
    # lies below the stop's limit in the full run.
    for system in cfg.systems:
        above = [r for r in sorted(full, key=lambda r: r["request_rate"]) if r["system"] == system]
        above = [r for r in above if r["normalized_latency"] >= cfg.capacity_threshold]
        assert not above or above[0]["normalized_latency"] < 2.0
    assert [(t["system"], t["capacity_rps"]) for t in tables[0]] == [
        (t["system"], t["capacity_rps"]) for t in tables[1]
    ]


def test_an_executor_that_cannot_price_told_decodes_is_stepped():
    """A mixed step inside the batch hands the executor decodes it does not see in `out`
    (execute(out, decode=...)); an executor whose execute takes only `out` must be stepped."""
    from paged.executor import NullExecutor
    from paged.fast_forward import supports_fast_forward

    class Legacy(NullExecutor):
        def execute(self, out):
            return super().execute(out)

    engine, _, _ = build(SimConfig(fast_forward=True))
    memory = engine.scheduler.memory
    assert supports_fast_forward(engine.executor, memory)
    assert supports_fast_forward(NullExecutor(), memory)
    assert not supports_fast_forward(Legacy(), memory)


def test_early_stop_template_is_not_shared_between_runs():
    """simulate() copies the rule per run (dataclasses.replace): the copy's history is its own."""
    from dataclasses import replace

    template = OverloadStop(max_latency=5.0, window_s=120, check_every_s=60)
    run = replace(template, num_requests=10)
    run._queue.append((120.0, 3))
    run._finished_sum += 1.0
    assert template._queue == [] and template._finished_sum == 0.0
    assert run.next_check == run.window_s and run.stopped_at is None
