"""SLOs (docs/metrics.md, "SLOs and goodput"): attainment and goodput on hand-made requests, the SLO
capacity, the bisection on the request rate, and a capacity search end to end (docs/harness.md)."""

from __future__ import annotations

import csv
import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from harness.capacity import RateBisection, search_rate, slo_bracket, slo_capacity
from harness.config import CONF_DIR, Config, register
from harness.experiment import ExperimentError, search_points, validate
from harness.metrics import SLO_COLUMNS, request_metrics, slo_metrics
from harness.plots import pareto_front
from paged import SamplingParams, SequenceGroup, SequenceStatus

register()


def load(*overrides: str) -> tuple[Config, str]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)


def finished_group(rid, arrival, token_times, prompt_len=10):
    g = SequenceGroup(rid, [1] * prompt_len, SamplingParams(max_tokens=len(token_times)), arrival)
    for s in g.seqs:
        for t in token_times:
            s.append_token(2, 0.0, t)
        s.status = SequenceStatus.FINISHED_LENGTH_CAPPED
    g.metrics.first_scheduled_time = arrival
    g.metrics.first_token_time = token_times[0]
    g.metrics.finished_time = token_times[-1]
    return g


def requests():
    """Five requests: a 3-token one (TTFT 1 s, TPOT 1.5 s, E2E 4 s), a 1-token one (TTFT 0.5 s, no TPOT,
    E2E 0.5 s), a late one (TTFT 3 s, TPOT 0.5 s, E2E 4 s), one rejected and one never finished."""
    a = finished_group("a", 0.0, [1.0, 2.5, 4.0])
    one = finished_group("one", 1.0, [1.5])
    late = finished_group("late", 2.0, [5.0, 5.5, 6.0])
    rejected = SequenceGroup("r", [1] * 5000, SamplingParams(max_tokens=4), 0.5)
    rejected.reject_reason = "too long"
    unfinished = SequenceGroup("u", [1] * 10, SamplingParams(max_tokens=4), 3.0)
    return [a, one, late, rejected, unfinished]


def test_attainment_and_goodput_by_hand():
    groups = requests()
    duration = 6.0 - 0.0  # last finish - first arrival of the completed requests, as request_throughput
    m = slo_metrics(groups, ttft_s=1.0, tpot_s=2.0)
    # a meets both (TTFT exactly at its limit meets it, as vLLM's `slo >= value`); the 1-token request
    # has no TPOT and meets it; late misses TTFT; rejected and unfinished meet nothing but count.
    assert m["num_slo_met"] == 2 and m["slo_attainment"] == pytest.approx(2 / 5)
    assert m["request_goodput"] == pytest.approx(2 / duration)
    assert m["slo_ttft_attainment"] == pytest.approx(2 / 5)
    assert m["slo_tpot_attainment"] == pytest.approx(3 / 5)  # a, one, late
    assert math.isnan(m["slo_e2e_attainment"])  # not given: not checked
    assert set(m) == set(SLO_COLUMNS)

    m = slo_metrics(groups, tpot_s=1.0)  # a's 1.5 s misses; late's 0.5 s and the 1-token one meet
    assert m["num_slo_met"] == 2 and m["slo_attainment"] == pytest.approx(2 / 5)
    m = slo_metrics(groups, ttft_s=10.0, tpot_s=10.0, e2e_s=3.9)  # only the 1-token one within 3.9 s
    assert m["num_slo_met"] == 1 and m["slo_e2e_attainment"] == pytest.approx(1 / 5)
    # The latency percentiles still leave the 1-token request out of TPOT (vLLM's tpots list).
    assert request_metrics(groups)["mean_tpot_ms"] == pytest.approx((1500 + 500) / 2)


def test_slo_metrics_edge_cases():
    with pytest.raises(ValueError, match="at least one"):
        slo_metrics(requests())
    assert math.isnan(slo_metrics([], ttft_s=1.0)["slo_attainment"])
    rejected = requests()[3:]
    m = slo_metrics(rejected, ttft_s=1.0)
    assert m["slo_attainment"] == 0.0 and m["request_goodput"] == 0.0


def test_slo_capacity_interpolates_the_crossing():
    rates, att = [1, 2, 3, 4], [1.0, 0.95, 0.7, 0.2]
    assert slo_bracket(rates, att, 0.9) == (2, 3)
    assert slo_capacity(rates, att, 0.9) == pytest.approx(2 + (0.95 - 0.9) / (0.95 - 0.7))
    assert slo_capacity([1, 2], [0.9, 0.8], 0.9) == 1  # exactly at the target meets it
    assert slo_capacity([1, 2], [1.0, 0.95], 0.9) == 2  # never misses: the highest rate run
    assert slo_capacity([1, 2], [0.5, 0.4], 0.9) == 0.0  # even the lowest misses
    # Not monotone (noise): the first miss ends it, as capacity() does for latency.
    assert slo_bracket([1, 2, 3], [0.95, 0.5, 0.95], 0.9) == (1, 2)


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 30.0), (2.0, 20.0), (3.0, 25.0), (4.0, 40.0), (float("nan"), 50.0)]
    assert pareto_front(pts) == [(1.0, 10.0), (2.0, 30.0), (4.0, 40.0)]


@settings(max_examples=300, deadline=None)
@given(
    low=st.floats(0.05, 20),
    span=st.floats(1.2, 100),
    where=st.floats(-0.5, 1.5),
    target=st.floats(0.5, 0.99),
    rel_tol=st.floats(0.005, 0.3),
    abs_tol=st.one_of(st.just(0.0), st.floats(0.001, 1.0)),
    max_runs=st.integers(2, 30),
)
def test_bisection_finds_the_threshold_in_the_expected_runs(
    low, span, where, target, rel_tol, abs_tol, max_runs
):
    """A synthetic attainment, decreasing in the rate, that meets the target up to `c` and misses it
    above (`where` < 0 or > 1 puts `c` outside [low, high])."""
    high = low * span
    c = low + where * (high - low)

    def attainment(rate):
        smooth = min(1.0, target * math.exp(-(rate - c) / (0.1 * high)))
        return max(smooth, target) if rate <= c else min(smooth, math.nextafter(target, 0.0))

    search = RateBisection(low, high, target, rel_tol, abs_tol, max_runs)
    measured = search.run(attainment)
    low_r, high_r = search_rate(low), search_rate(high)
    assert len(measured) <= max_runs
    if c < low_r:
        assert list(measured) == [low_r]  # one run: the capacity is below low
        assert slo_capacity(list(measured), list(measured.values()), target) == 0.0
        return
    if c >= high_r:
        assert list(measured) == [low_r, high_r]  # two runs: the capacity is at least high
        return
    met, missed = slo_bracket(list(measured), list(measured.values()), target)
    assert met <= c < missed  # the threshold is bracketed
    cap = slo_capacity(list(measured), list(measured.values()), target)
    assert met <= cap <= missed
    # Each halving leaves the bracket within half the last plus the rounding of its rate to six
    # significant digits (search_rate), which adds up to at most 1e-5 x high over the whole search.
    tol_min = max(rel_tol * low_r, abs_tol) - 1e-5 * high_r
    expected = 2 + max(0, math.ceil(math.log2((high_r - low_r) / tol_min)))
    assert len(measured) <= min(expected, max_runs)
    if len(measured) < max_runs:  # ended by the tolerance, not the budget
        assert missed - met <= max(rel_tol * met, abs_tol)


def test_bisection_replays_from_any_prefix():
    """next_rate depends only on the rates measured: any prefix of a finished search continues it with
    the rate the whole search ran next."""
    search = RateBisection(0.5, 16, 0.9, rel_tol=0.02, max_runs=20)
    full = search.run(lambda r: 1.0 if r <= 3.3 else 0.5)
    order = list(full)
    for k in range(len(order)):
        assert search.next_rate({r: full[r] for r in order[:k]}) == order[k]
    assert search.next_rate(full) is None


def test_bad_settings_name_the_fix():
    cfg, _ = load("exp=smoke", "capacity_search.enabled=true")
    with pytest.raises(ExperimentError, match=r"capacity_search needs an SLO.*slo\.ttft_s"):
        validate(cfg)
    cfg, _ = load("exp=smoke", "slo.ttft_s=1", "capacity_search.enabled=true", "capacity_search.low=4")
    with pytest.raises(ExperimentError, match="low < high"):
        validate(cfg)  # high defaults to the grid's highest rate, 4
    cfg, _ = load("exp=smoke", "slo.ttft_s=1", "slo.target=90")
    with pytest.raises(ExperimentError, match="slo.target"):
        validate(cfg)
    cfg, _ = load("exp=smoke", "slo.tpot_s=0")
    with pytest.raises(ExperimentError, match="positive"):
        validate(cfg)
    for unknown in ("slo.ttft=1", "capacity_search.lo=1"):  # the schema rejects unknown keys
        with pytest.raises(ConfigCompositionException):
            load("exp=smoke", unknown)


SEARCH = (
    "exp=smoke",
    "systems=[vllm]",
    "duration_s=30",
    "workers=1",
    "slo.ttft_s=1",
    "slo.tpot_s=0.1",
    "capacity_search.enabled=true",
    "capacity_search.low=0.5",
    "capacity_search.high=16",
    "capacity_search.max_runs=6",
)


def test_a_capacity_search_writes_points_capacity_and_plots(tmp_path, capsys):
    from harness.experiment import run_experiment

    cfg, text = load(*SEARCH, "systems=[vllm,orca_oracle]", f"results_dir={tmp_path}")
    run = run_experiment(cfg, text, progress=False)
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert set(SLO_COLUMNS) <= set(rows[0]) and {"median_ttft_ms", "p99_ttft_ms", "p99_tpot_ms"} <= set(
        rows[0]
    )
    caps = {c["system"]: c for c in csv.DictReader(open(run / "capacity.csv"))}
    assert set(caps) == {"vllm", "orca_oracle"}
    for system, c in caps.items():
        pts = [r for r in rows if r["system"] == system]
        rates = [float(r["request_rate"]) for r in pts]
        assert rates[:2] == [0.5, 16.0] and len(pts) == int(c["slo_runs"]) <= 6
        att = [float(r["slo_attainment"]) for r in pts]
        assert float(c["slo_capacity_rps"]) == pytest.approx(slo_capacity(rates, att, 0.9), abs=1e-4)
        assert float(c["slo_rate_met"]) <= float(c["slo_capacity_rps"]) <= float(c["slo_rate_missed"])
    for name in ("throughput_vs_p99_tpot.png", "throughput_vs_p99_ttft.png", "slo_attainment.png"):
        assert (run / name).stat().st_size > 10_000, name
    out = capsys.readouterr().out
    assert "SLO capacity: highest rate with >= 90% of requests within TTFT <= 1 s, TPOT <= 0.1 s" in out


def test_an_interrupted_search_resumes_without_rerunning(tmp_path, monkeypatch):
    import harness.experiment as experiment
    from harness.experiment import run_experiment

    real, calls = experiment.run_point, []
    monkeypatch.setattr(experiment, "run_point", lambda c, p: (calls.append(p.rate), real(c, p))[1])
    cfg, text = load(*SEARCH, "plots=false", f"results_dir={tmp_path / 'whole'}")
    whole = run_experiment(cfg, text, progress=False)
    whole_rows = list(csv.DictReader(open(whole / "points.csv")))
    uninterrupted = list(calls)
    assert len(uninterrupted) == 6 and [float(r["request_rate"]) for r in whole_rows] == uninterrupted
    # The replay: each prefix of the finished points gives the point that was run next.
    for k in range(len(whole_rows)):
        assert [p.rate for p in search_points(cfg, whole_rows[:k])] == [uninterrupted[k]]
    assert search_points(cfg, whole_rows) == []

    calls.clear()

    def crash_after_three(c, point):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(point.rate)
        return real(c, point)

    monkeypatch.setattr(experiment, "run_point", crash_after_three)
    cfg, text = load(*SEARCH, "plots=false", f"results_dir={tmp_path / 'split'}")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    calls.clear()
    monkeypatch.setattr(experiment, "run_point", lambda c, p: (calls.append(p.rate), real(c, p))[1])
    run = run_experiment(cfg, text, progress=False)
    assert calls == uninterrupted[3:]  # only the points not yet in points.csv ran
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert [r["request_rate"] for r in rows] == [r["request_rate"] for r in whole_rows]
    assert [r["slo_attainment"] for r in rows] == [r["slo_attainment"] for r in whole_rows]
    assert (run / "capacity.csv").read_text() == (whole / "capacity.csv").read_text()


def test_a_grid_with_an_slo_reports_the_interpolated_capacity(tmp_path, capsys):
    from harness.experiment import run_experiment

    cfg, text = load(
        "exp=smoke", "systems=[vllm]", "duration_s=30", "workers=1", "plots=false", "slo.ttft_s=1",
        "request_rates=[1,2,4,8]", f"results_dir={tmp_path}",
    )  # fmt: skip
    run = run_experiment(cfg, text, progress=False)
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert [r["request_rate"] for r in rows] == ["1", "2", "4", "8"]  # the grid, not a search
    rates = [float(r["request_rate"]) for r in rows]
    att = [float(r["slo_attainment"]) for r in rows]
    (cap,) = list(csv.DictReader(open(run / "capacity.csv")))
    assert float(cap["slo_capacity_rps"]) == pytest.approx(slo_capacity(rates, att, 0.9), abs=1e-4)
    assert "interpolated between the rates run" in capsys.readouterr().out


def test_without_an_slo_nothing_changes(tmp_path):
    from harness.experiment import run_experiment

    cfg, text = load("exp=smoke", "systems=[vllm]", "duration_s=30", "workers=1", f"results_dir={tmp_path}")
    run = run_experiment(cfg, text, progress=False)
    header = open(run / "points.csv").readline()
    assert "slo_attainment" not in header and "slo_" not in open(run / "capacity.csv").readline()
    assert not (run / "slo_attainment.png").exists()
