"""The artifact-style metric variants (docs/metrics.md, "As the artifact computes them") by hand on small
lists of StepRecords, the per-step series files, and the command that recomputes metrics from them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import CONF_DIR, register
from harness.experiment import run_experiment
from harness.metrics import (
    ARTIFACT_COLUMNS,
    artifact_metrics,
    series_step_metrics,
    step_metrics,
    step_series,
    window_mask,
)
from harness.step_series import load_series, main, recompute, save_series, series_path
from paged import MemoryUsage, SamplingParams, SequenceGroup, StepRecord

register()


def done_group(rid="g"):
    return SequenceGroup(rid, [1, 2], SamplingParams(max_tokens=1), 0.0)


def rejected_group():
    g = done_group("r")
    g.reject_reason = "too long"
    return g


def step(start, groups=0, running=0, duration=1.0, executed=True, swapped_out=0, finished=(), memory=None):
    return StepRecord(
        start, duration, executed=executed, is_prefill=False, num_groups=groups, num_running_groups=running,
        num_seqs=groups, num_tokens=groups, num_preempted=0, num_rejected=0,
        num_blocks_swapped_out=swapped_out, num_blocks_swapped_in=0, num_blocks_copied=0,
        finished=list(finished), memory=memory,
    )  # fmt: skip


def usage(token, reservation, internal, external, free, logical=0, physical=0):
    return MemoryUsage(
        total=token + reservation + internal + external + free,
        token_states=token,
        reservation=reservation,
        internal_fragmentation=internal,
        external_fragmentation=external,
        free=free,
        logical_blocks=logical,
        physical_blocks=physical,
    )


def test_batched_requests_counts_len_running_at_scheduling_on_recorded_steps():
    steps = [
        step(0.0, groups=2, running=5),  # a prompt step: 2 admitted, 3 more running
        step(1.0, groups=4, running=4, finished=[done_group(), rejected_group()]),  # counted before it left
        step(2.0, executed=False, finished=[rejected_group()]),  # rejection only: not recorded
        step(3.0, swapped_out=8),  # the lone group swapped itself out: recorded, 0 running
        step(4.0, groups=6, running=6),
    ]
    series = step_series(steps)
    assert list(series["num_running_groups"]) == [5, 4, 0, 0, 6]
    assert artifact_metrics(series)["batched_requests_artifact"] == pytest.approx((5 + 4 + 0 + 6) / 4)
    # pagelab's own: the groups each executed step computes
    assert step_metrics(steps)["avg_batched_requests"] == pytest.approx((2 + 4 + 0 + 6) / 4)
    # windows hold the steps whose start lies in [t0, t1], both ends included
    assert artifact_metrics(series, [1.0, 3.0])["batched_requests_artifact"] == pytest.approx(4 / 2)
    assert artifact_metrics(series, [4.0, 4.0])["batched_requests_artifact"] == 6
    assert np.isnan(artifact_metrics(series, [10, 20])["batched_requests_artifact"])


def test_figure2_classes_orca_style_plain_means_and_rest_over_all_slots():
    # 100 slots each; the second step lasts 3 s, which the artifact's plain mean ignores
    steps = [
        step(0.0, 1, 1, duration=1.0, memory=usage(20, 30, 10, 15, 25)),
        step(1.0, 1, 1, duration=3.0, memory=usage(40, 20, 10, 5, 25)),
        step(2.0, 1, 1),  # no memory sample: not in Figure 2's means
    ]
    m = artifact_metrics(step_series(steps, paged=False))
    assert m["kv_token_states_pct_artifact"] == pytest.approx(30.0)
    assert m["kv_reservation_pct_artifact"] == pytest.approx(25.0)
    assert m["kv_internal_frag_pct_artifact"] == pytest.approx(10.0)
    # "external fragmentation and others": the buddy round-up AND all free memory
    assert m["kv_external_frag_pct_artifact"] == pytest.approx(100 - 30 - 25 - 10)
    own = step_metrics(steps)  # pagelab's: time-weighted, free apart
    assert own["kv_token_states_pct"] == pytest.approx((20 + 40 * 3) / 4)
    assert own["kv_external_frag_pct"] == pytest.approx((15 + 5 * 3) / 4)
    assert own["kv_free_pct"] == pytest.approx(25.0)
    # the window keeps the second sample only
    w = artifact_metrics(step_series(steps), [0.5, 2.0])
    assert w["kv_token_states_pct_artifact"] == pytest.approx(40.0)
    assert w["kv_external_frag_pct_artifact"] == pytest.approx(30.0)


def test_figure2_denominator_is_every_slot_of_the_kv_space():
    # 200 slots, half of them free: token states are 10% of the space, not of the used half
    m = artifact_metrics(step_series([step(0.0, 1, 1, memory=usage(20, 40, 20, 20, 100))]))
    assert m["kv_token_states_pct_artifact"] == pytest.approx(10.0)
    assert m["kv_reservation_pct_artifact"] == pytest.approx(20.0)
    assert m["kv_external_frag_pct_artifact"] == pytest.approx(60.0)


def test_figure2_vllm_rule_splits_the_unallocated_share_between_reservation_and_internal():
    # paged: allocated (used blocks) = token + last blocks' empty slots; free elsewhere
    steps = [
        step(0.0, 1, 1, memory=usage(80, 3, 1, 0, 16)),  # allocated 84%
        step(1.0, 1, 1, memory=usage(90, 2, 2, 0, 6)),  # allocated 94%
    ]
    m = artifact_metrics(step_series(steps, paged=True))
    allocated = (84 + 94) / 2
    assert m["kv_token_states_pct_artifact"] == pytest.approx(85.0)
    assert m["kv_reservation_pct_artifact"] == pytest.approx((100 - allocated) / 2)
    assert m["kv_internal_frag_pct_artifact"] == pytest.approx((100 - allocated) / 2)
    # what is left: allocated - token states, the empty slots of the last blocks
    assert m["kv_external_frag_pct_artifact"] == pytest.approx(allocated - 85.0)
    # the same counts for a contiguous system: no rule, its own reservation and internal
    c = artifact_metrics(step_series(steps, paged=False))
    assert c["kv_reservation_pct_artifact"] == pytest.approx(2.5)
    assert c["kv_external_frag_pct_artifact"] == pytest.approx(100 - 85 - 2.5 - 1.5)


def test_sharing_saving_is_one_minus_the_inverse_mean_reference_count():
    steps = [
        step(0.0, 1, 1, memory=usage(10, 0, 0, 0, 90, logical=10, physical=5)),  # ratio 2
        step(1.0, 1, 1, memory=usage(10, 0, 0, 0, 90, logical=12, physical=3)),  # ratio 4
        step(2.0, 1, 1, memory=usage(0, 0, 0, 0, 100, logical=0, physical=0)),  # nothing held: skipped
    ]
    series = step_series(steps, paged=True)
    assert artifact_metrics(series)["sharing_saving_pct_artifact"] == pytest.approx(100 * (1 - 1 / 3))
    # pagelab's own: the mean of the per-step savings, 1/2 and 3/4
    assert series_step_metrics(series)["sharing_saving_pct"] == pytest.approx(62.5)
    assert artifact_metrics(series, [0, 0.5])["sharing_saving_pct_artifact"] == pytest.approx(50.0)
    assert np.isnan(artifact_metrics(series, [1.5, 3])["sharing_saving_pct_artifact"])


def test_a_bad_window_names_the_fix():
    series = step_series([step(0.0, 1, 1)])
    with pytest.raises(ValueError, match="start <= end"):
        window_mask(series, [5, 1])
    with pytest.raises(ValueError, match=r"\[start, end\]"):
        window_mask(series, [5])


def test_series_round_trip(tmp_path):
    steps = [
        step(0.0, 2, 2, duration=0.0123456, memory=usage(20, 30, 10, 15, 25, 7, 5)),
        step(0.0123456, 3, 4, duration=0.02, finished=[done_group()]),
        step(7.5, 70000, 70000, duration=0.031, swapped_out=5),  # after an idle gap; counts past 16 bits
    ]
    series = step_series(steps, paged=True)
    path = series_path(tmp_path, "vllm_rate=2")
    save_series(path, series, {"system": "vllm", "request_rate": 2.0, "block_size": 16})
    assert [p.name for p in path.parent.iterdir()] == ["vllm_rate=2.npz"]  # no temporary file left
    back, point = load_series(path)
    assert point == {"system": "vllm", "request_rate": 2.0, "block_size": 16}
    assert set(back) == set(series)
    for name, values in series.items():
        if name in ("start_time", "duration_s"):
            np.testing.assert_allclose(back[name], values, atol=1e-6)  # whole microseconds
        else:
            np.testing.assert_array_equal(back[name], values)  # NaN where not sampled, both sides
    assert back["num_groups"][2] == 70000 and bool(back["paged"])
    assert artifact_metrics(back) == pytest.approx(artifact_metrics(series), nan_ok=True)
    assert series_step_metrics(back) == pytest.approx(step_metrics(steps), nan_ok=True, rel=1e-6)
    with np.load(path) as z:  # narrow dtypes on disk
        assert z["num_seqs"].dtype == np.int64  # 70000 does not fit 16 bits: widened, not wrapped
        assert z["num_preempted"].dtype == np.uint16 and z["mem_free"].dtype == np.float32


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 20 s smoke run (two systems x two rates) with a metrics window."""
    results = tmp_path_factory.mktemp("results")
    overrides = [
        "exp=smoke",
        f"results_dir={results}",
        "duration_s=20",
        "workers=1",
        "plots=false",
        "metrics_window_s=[5,15]",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return run_experiment(OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True), progress=False)


def test_points_csv_carries_the_artifact_columns_and_each_point_its_series(tiny_run):
    rows = list(csv.DictReader(open(tiny_run / "points.csv")))
    assert len(rows) == 4 and set(ARTIFACT_COLUMNS) <= set(rows[0])
    for r in rows:
        assert float(r["batched_requests_artifact"]) > 0
        parts = [float(r[c]) for c in ARTIFACT_COLUMNS[1:5]]
        assert sum(parts) == pytest.approx(100.0, abs=1e-3) and min(parts) >= -1e-9
    assert len(list((tiny_run / "steps").glob("*.npz"))) == 4


def test_recompute_from_the_series_matches_the_run(tiny_run):
    """The files give back points.csv's step metrics (whole run) and artifact columns (its window)."""
    rows = {(r["system"], float(r["request_rate"])): r for r in csv.DictReader(open(tiny_run / "points.csv"))}
    own_keys = ["num_steps", "avg_batched_requests", "kv_token_states_pct", "kv_free_pct", "num_preemptions"]
    whole = recompute(tiny_run)
    windowed = recompute(tiny_run, [5, 15])
    assert len(whole) == len(windowed) == 4
    for w, win in zip(whole, windowed):
        row = rows[(w["system"], w["request_rate"])]
        for k in own_keys:
            assert w[k] == pytest.approx(float(row[k]), rel=1e-4)
        for k in ARTIFACT_COLUMNS:
            assert win[k] == pytest.approx(float(row[k]), rel=1e-4, abs=1e-4)
        assert win["num_steps"] < w["num_steps"]


def test_the_command_prints_and_writes_the_windowed_metrics(tiny_run, capsys):
    main([str(tiny_run), "--window", "5", "15"])
    out = capsys.readouterr().out
    assert "over [5, 15] s" in out and "batched_requests_artifact" in out
    rows = list(csv.DictReader(open(tiny_run / "windowed_5-15.csv")))
    assert len(rows) == 4 and {"system", "request_rate", *ARTIFACT_COLUMNS} <= set(rows[0])


def test_running_count_at_scheduling_equals_the_batch_of_a_decode_step(tiny_run):
    """The engine counts running groups when the step is scheduled (before post-processing drops the
    ones that finish): a decode step runs every running group, so the two counts agree there, also
    in steps where groups finish."""
    for path in sorted((tiny_run / "steps").glob("*.npz")):
        s, _ = load_series(path)
        decode = s["executed"] & ~s["is_prefill"]
        assert decode.sum() > 100 and s["num_finished"][decode].sum() > 0
        np.testing.assert_array_equal(s["num_running_groups"][decode], s["num_groups"][decode])


def test_a_resumed_run_keeps_the_finished_points_series(tmp_path, monkeypatch):
    import harness.experiment as experiment

    overrides = ["exp=smoke", f"results_dir={tmp_path}", "duration_s=10", "workers=1", "plots=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg, text = OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)
    real, calls = experiment.run_point, []

    def crash_after_two(c, point):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(point.slug)
        return real(c, point)

    monkeypatch.setattr(experiment, "run_point", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    run = (tmp_path / "smoke" / "latest").resolve()
    first = {p.stem: p.stat().st_mtime_ns for p in (run / "steps").glob("*.npz")}
    assert sorted(first) == sorted(calls)
    calls.clear()
    monkeypatch.setattr(experiment, "run_point", lambda c, p: (calls.append(p.slug), real(c, p))[1])
    assert run_experiment(cfg, text, progress=False) == run
    after = {p.stem: p.stat().st_mtime_ns for p in (run / "steps").glob("*.npz")}
    assert len(after) == 4 and not set(calls) & set(first)  # the finished points did not run again
    assert all(after[k] == first[k] for k in first)
