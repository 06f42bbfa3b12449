"""Real timestamped traces (docs/workloads.md, "Timestamped traces"): the Azure LLM inference and BurstGPT
formats, rescaling to a target mean rate, and the actual rate each point reports in points.csv."""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from harness.config import CONF_DIR, Config, register
from harness.experiment import ExperimentError, run_experiment, validate
from harness.results import POINT_COLUMNS, open_run_dir
from harness.traces import (
    detect_trace_format,
    load_azure_csv,
    load_burstgpt_csv,
    load_trace_csv,
    rescale_times,
    trace_workload,
)
from harness.workload import WorkloadError, mean_rate

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
BURSTGPT_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
register()


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def azure_rows(times_s: list[float], prompts: list[int], outputs: list[int]) -> list[str]:
    """Azure's rows: date-times with 7 fractional digits (100 ns ticks), from 2023-11-16 18:15:00."""
    rows = []
    for t, p, o in zip(times_s, prompts, outputs):
        ticks = round(t * 1e7)
        whole, frac = divmod(ticks, 10**7)
        minute, second = divmod(15 * 60 + whole, 60)
        hour, minute = divmod(18 * 60 + minute, 60)
        rows.append(f"2023-11-16 {hour:02d}:{minute:02d}:{second:02d}.{frac:07d},{p},{o}")
    return rows


def burstgpt_row(t: float, model: str, prompt: int, output: int, log_type: str = "Conversation log") -> str:
    return f"{t:g},{model},{prompt},{output},{prompt + output},{log_type}"


# ---------------------------------------------------------------------- the two formats
def test_azure_times_are_date_times_relative_to_the_first_row_to_100_ns(tmp_path):
    path = write(
        tmp_path / "AzureLLMInferenceTrace_conv.csv",
        AZURE_HEADER,
        [
            "2023-11-16 18:15:46.6805900,4808,10",
            "2023-11-16 18:15:50.1234567,3180,8",
            "2023-11-16 18:15:59.9999999,110,0",  # no output tokens: skipped and counted
            "2023-11-16 18:16:02,100,27",  # no fraction
            "2023-11-17T00:00:00.5000000+05:00,7,3",  # an offset: 2023-11-16 19:00:00.5 UTC
        ],
    )
    assert detect_trace_format(path) == "azure"
    w = load_azure_csv(path)
    assert [r.request_id for r in w.requests] == ["0", "1", "2", "3"]
    assert [(r.prompt_len, r.output_len) for r in w.requests] == [(4808, 10), (3180, 8), (100, 27), (7, 3)]
    times = [r.arrival_time for r in w.requests]
    assert times[0] == 0.0
    assert times[1] == pytest.approx(3.4428667, abs=1e-9)  # all 7 digits of the difference kept
    assert times[2] == pytest.approx(15.31941, abs=1e-9)
    assert times[3] == pytest.approx(44 * 60 + 13.81941, abs=1e-9)
    assert w.meta["format"] == "azure" and w.meta["num_skipped_failed"] == 1 and not w.meta["rescaled"]
    assert w.meta["num_trace_rows"] == 5


def test_burstgpt_skips_failed_requests_counts_them_and_filters_by_model(tmp_path, caplog):
    path = write(
        tmp_path / "BurstGPT_1.csv",
        BURSTGPT_HEADER,
        [
            burstgpt_row(5, "ChatGPT", 472, 18),
            burstgpt_row(45, "ChatGPT", 1087, 0),  # failed: Response tokens 0
            burstgpt_row(118, "GPT-4", 417, 276),
            burstgpt_row(119, "GPT-4", 30, 0),  # failed
            burstgpt_row(200, "ChatGPT", 100, 50, "API log"),
            burstgpt_row(260, "GPT-4", 90, 9),
        ],
    )
    assert detect_trace_format(path) == "burstgpt"
    with caplog.at_level(logging.INFO, logger="harness.traces"):
        w = load_burstgpt_csv(path)
    assert [(r.arrival_time, r.prompt_len, r.output_len) for r in w.requests] == [
        (0.0, 472, 18),
        (113.0, 417, 276),
        (195.0, 100, 50),
        (255.0, 90, 9),
    ]
    assert w.meta["num_skipped_failed"] == 2
    assert "skipped 2 of 6 rows: 2 failed (Response tokens 0)" in caplog.text
    gpt4 = load_burstgpt_csv(path, model="gpt-4")  # any case
    assert [(r.request_id, r.arrival_time) for r in gpt4.requests] == [("0", 0.0), ("1", 142.0)]
    assert gpt4.meta["num_skipped_failed"] == 1 and gpt4.meta["num_skipped_model"] == 3
    with pytest.raises(
        WorkloadError, match=r"no row has Model 'Claude' \(the file's models: ChatGPT \(3\), GPT-4"
    ):
        load_burstgpt_csv(path, model="Claude")
    with pytest.raises(WorkloadError, match="BurstGPT's Model column, but this file is in the azure format"):
        load_trace_csv(write(tmp_path / "az.csv", AZURE_HEADER, azure_rows([0], [1], [1])), model="GPT-4")


def test_the_format_is_told_by_the_header_or_named(tmp_path):
    newer = write(  # BurstGPT's later releases add two columns, which are not read
        tmp_path / "burst_v2.csv",
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type",
        ["0,1,2.5,ChatGPT,10,20,30,Conversation log", "3,1,1.0,ChatGPT,11,21,32,Conversation log"],
    )
    assert detect_trace_format(newer) == "burstgpt"
    assert [r.arrival_time for r in load_trace_csv(newer).requests] == [0.0, 3.0]
    own = write(tmp_path / "own.csv", "arrived_at,num_prefill_tokens,num_decode_tokens", ["0.5,10,20"])
    assert detect_trace_format(own) == "pagelab" and detect_trace_format(own, "pagelab") == "pagelab"
    bom = tmp_path / "bom.csv"  # a byte-order mark, as spreadsheet exports write
    bom.write_text("\ufeff" + AZURE_HEADER + "\n" + azure_rows([0.0], [5], [6])[0] + "\n")
    assert detect_trace_format(bom) == "azure"
    with pytest.raises(WorkloadError, match=r"own.csv:1: field 'Timestamp': missing from the header"):
        detect_trace_format(own, "burstgpt")
    with pytest.raises(WorkloadError, match="unknown trace format 'csv'"):
        detect_trace_format(own, "csv")
    other = write(tmp_path / "other.csv", "time,prompt,answer", ["1,2,3"])
    with pytest.raises(
        WorkloadError, match=r"other.csv:1: header 'time,prompt,answer' is no timestamped trace"
    ):
        load_trace_csv(other)


AZ, BG = AZURE_HEADER, BURSTGPT_HEADER
MALFORMED = [  # (header, rows, the error after "trace.csv")
    (
        AZ,
        ["2023-11-16 18:15:46.68,10,20", "16/11/2023 18:15,10,20"],
        r":3: field 'TIMESTAMP': expected a date-time",
    ),
    (
        AZ,
        ["2023-11-16 25:00:00,10,20"],
        r":2: field 'TIMESTAMP': expected a date-time like 2023-11-16 18:15:46.68",
    ),
    (AZ, ["2023-02-30 10:00:00,10,20"], r":2: field 'TIMESTAMP': expected a date-time"),
    (AZ, ["2023-11-16 18:15:46,ten,20"], r":2: field 'ContextTokens': expected a whole number of tokens"),
    (AZ, ["2023-11-16 18:15:46,10"], r":2: wrong number of fields for the header \(2, the header has 3\)"),
    (
        BG,
        [burstgpt_row(0, "ChatGPT", 1, 1), "-4,ChatGPT,1,1,2,API log"],
        r":3: field 'Timestamp': expected seconds >= 0",
    ),
    (BG, ["x,ChatGPT,1,1,2,API log"], r":2: field 'Timestamp': expected seconds, got 'x'"),
    (
        BG,
        ["0,ChatGPT,1,-1,0,API log"],
        r":2: field 'Response tokens': expected a whole number of tokens >= 0",
    ),
    (BG, ["0,ChatGPT,1,inf,1,API log"], r":2: field 'Response tokens': expected a whole number of tokens"),
    (BG, ["0,ChatGPT,1,0,1,API log"], r": no requests after the header \(1 skipped: no output tokens\)"),
    (BG, [], r": no requests after the header"),
]


@pytest.mark.parametrize("header, rows, message", MALFORMED)
def test_a_malformed_trace_fails_once_naming_file_line_and_field(tmp_path, header, rows, message):
    path = write(tmp_path / "trace.csv", header, rows)
    with pytest.raises(WorkloadError, match=r"trace.csv" + message):
        load_trace_csv(path)


# ---------------------------------------------------------------------- rescaling
def test_mean_rate_is_one_over_the_mean_gap():
    assert mean_rate([0.0, 0.5, 2.0]) == 1.0 == mean_rate([5.0, 3.0, 4.0])  # 2 gaps in 2 s; any order
    assert math.isnan(mean_rate([])) and math.isnan(mean_rate([2.0]))
    assert mean_rate([0.0, 0.0]) == math.inf  # all at once: offline


gaps = st.lists(st.floats(0.0, 1e4, allow_subnormal=False), min_size=1, max_size=60).filter(
    lambda g: sum(g) > 1e-3
)
rates = st.floats(1e-3, 1e3)


@settings(max_examples=300, deadline=None)
@given(gaps=gaps, start=st.floats(0.0, 1e3), rate=rates)
def test_rescaling_hits_the_target_mean_rate_and_keeps_order_and_gap_ratios(gaps, start, rate):
    times = start + np.concatenate([[0.0], np.cumsum(gaps)])
    scaled = rescale_times(times, rate)
    assert mean_rate(scaled) == pytest.approx(rate, rel=1e-9)
    assert np.all(np.diff(scaled) >= 0)  # the order
    k = (scaled[-1] - scaled[0]) / (times[-1] - times[0])  # one factor for every gap: the burst shape
    np.testing.assert_allclose(np.diff(scaled), k * np.diff(times), rtol=1e-9, atol=1e-9 * scaled[-1])


@settings(max_examples=40, deadline=None)
@given(
    times=st.lists(st.integers(0, 10_000), min_size=2, max_size=40).filter(lambda t: len(set(t)) > 1),
    rate=rates,
)
def test_a_rescaled_trace_file_keeps_the_file_order_of_ties_and_hits_the_rate(times, rate):
    with tempfile.TemporaryDirectory() as d:
        rows = [burstgpt_row(t, "ChatGPT", i + 1, 1) for i, t in enumerate(times)]  # unsorted, with ties
        w = load_trace_csv(write(Path(d) / "burst.csv", BURSTGPT_HEADER, rows), rate=rate)
    arrivals = np.array([r.arrival_time for r in w.requests])
    assert w.mean_rate() == pytest.approx(rate, rel=1e-9) and np.all(np.diff(arrivals) >= 0)
    expected = sorted(range(len(times)), key=lambda i: times[i])  # stable: ties in file order
    assert [int(r.request_id) for r in w.requests] == expected
    assert [r.prompt_len for r in w.requests] == [i + 1 for i in expected]
    np.testing.assert_allclose(arrivals, (np.sort(times) - min(times)) * w.meta["time_scale"], rtol=1e-9)


def test_a_rescaled_trace_is_cut_at_duration_or_just_ends(tmp_path, caplog):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(2.0, size=100))  # 0.5 req/s, ~200 s
    path = write(tmp_path / "az.csv", AZURE_HEADER, azure_rows(list(times), [10] * 100, [5] * 100))
    fast = trace_workload(path, rate=5.0, duration_s=10.0)  # rescaled by default: ~20 s long, cut at 10
    assert fast.meta["rescaled"] and 30 < len(fast) < 70
    assert all(r.arrival_time < 10.0 for r in fast.requests)
    assert fast.meta["trace_mean_rate"] == pytest.approx(mean_rate(times - times[0]))
    with caplog.at_level(logging.INFO, logger="harness.traces"):
        whole = trace_workload(path, rate=5.0, duration_s=60.0)
    assert len(whole) == 100 and whole.mean_rate() == pytest.approx(5.0)
    assert "the trace ends at" in caplog.text and "not looped" in caplog.text
    # The same requests, only closer together: the arrivals at 5 req/s are those at 1 req/s divided by 5.
    slow = trace_workload(path, rate=1.0, duration_s=1e4)
    np.testing.assert_allclose(
        [r.arrival_time for r in whole.requests], [r.arrival_time / 5 for r in slow.requests], rtol=1e-12
    )
    own = trace_workload(path, rate=5.0, duration_s=60.0, rescale=False)  # own times, cut at 60 s
    assert not own.meta["rescaled"] and own.requests[-1].arrival_time < 60.0
    np.testing.assert_allclose(
        [r.arrival_time for r in own.requests], (times - times[0])[: len(own)], atol=1e-6
    )


def test_pagelab_traces_keep_their_own_times_by_default_as_before(tmp_path):
    path = write(
        tmp_path / "trace.csv",
        "arrived_at,num_prefill_tokens,num_decode_tokens",
        ["0.5,10,20", "0.1,5,6", "7200,3,4"],  # past any duration: replayed, as before rescaling existed
    )
    w = trace_workload(path, rate=4.0, duration_s=60.0)
    assert [(r.request_id, r.arrival_time) for r in w.requests] == [("1", 0.1), ("0", 0.5), ("2", 7200.0)]
    assert not w.meta["rescaled"]
    assert [r.arrival_time for r in load_trace_csv(path).requests] == [0.1, 0.5, 7200.0]
    rescaled = trace_workload(path, rate=4.0, duration_s=60.0, rescale=True)  # as written, times k
    k = mean_rate([0.1, 0.5, 7200.0]) / 4.0
    assert [r.arrival_time for r in rescaled.requests] == pytest.approx([0.1 * k, 0.5 * k, 7200 * k])
    with pytest.raises(WorkloadError, match="mean rate is undefined"):
        trace_workload(write(tmp_path / "one.csv", AZURE_HEADER, azure_rows([0], [1], [1])), 1.0, 60.0)


# ---------------------------------------------------------------------- an experiment on a trace
def load(*overrides: str) -> tuple[Config, str]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)


def test_an_experiment_on_a_trace_reports_each_points_actual_rate_and_rejects_long_prompts(tmp_path):
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.exponential(1.0, size=30))
    prompts = [int(p) for p in rng.integers(20, 200, size=30)]
    prompts[3] = 3000  # longer than OPT-13B's 2048 positions: rejected and counted
    path = write(tmp_path / "azure.csv", AZURE_HEADER, azure_rows(list(times), prompts, [16] * 30))
    cfg, text = load(
        "exp=smoke",
        f"results_dir={tmp_path / 'results'}",
        "workers=1",
        "plots=false",
        "systems=[vllm]",
        "request_rates=[0.5,4.0]",
        "duration_s=20",
        "workload.kind=trace_csv",
        f"workload.path={path}",
    )
    run = run_experiment(cfg, text, progress=False)
    rows = {r["request_rate"]: r for r in csv.DictReader(open(run / "points.csv"))}
    assert "actual_request_rate" in POINT_COLUMNS and set(rows) == {"0.5", "4"}
    # 4 req/s: the whole trace (~7.5 s) fits in 20 s, so its mean rate is the target's.
    assert float(rows["4"]["actual_request_rate"]) == pytest.approx(4.0, rel=1e-5)
    assert int(rows["4"]["num_requests"]) == 30 and int(rows["4"]["num_rejected"]) == 1
    # 0.5 req/s: cut at 20 s; the rate is that of the arrivals replayed, read back from requests/.
    for rate, row in rows.items():
        arrivals = [
            float(r["arrival_time"]) for r in csv.DictReader(open(run / "requests" / f"vllm_rate={rate}.csv"))
        ]
        assert float(row["actual_request_rate"]) == pytest.approx(mean_rate(arrivals), rel=1e-5)
        assert max(arrivals) < 20 and int(row["num_requests"]) == len(arrivals)
    assert int(rows["0.5"]["num_requests"]) < 30


def test_trace_settings_need_the_trace_kind():
    cfg, _ = load("exp=smoke", "workload.rescale=true")
    with pytest.raises(ExperimentError, match="apply to workload.kind=trace_csv, not synthetic"):
        validate(cfg)


def test_an_unfinished_run_of_another_configuration_is_not_resumed_silently(tmp_path, capsys):
    old_config = "workload:\n  kind: trace_csv\n  path: a.csv\n"  # written before rescale existed
    first, resumed = open_run_dir(str(tmp_path), "exp", old_config, resume=True)
    assert not resumed
    again, resumed = open_run_dir(str(tmp_path), "exp", old_config, resume=True)
    assert again == first and resumed
    capsys.readouterr()
    new, resumed = open_run_dir(str(tmp_path), "exp", old_config + "  rescale: null\n", resume=True)
    assert new != first and not resumed
    out = capsys.readouterr().out
    assert f"not resuming {first}" in out and "'+  rescale: null'" in out
