"""Workloads: built-in length statistics, arrivals, saving, and loaders with their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.traces import load_lengths_csv, load_sharegpt_json, load_trace_csv
from harness.workload import (
    Workload,
    WorkloadError,
    arrival_times,
    chatbot,
    sample_lengths,
    shared_prefix,
    synthetic,
)


@pytest.mark.parametrize(
    "dataset, prompt_mean, output_mean", [("sharegpt_synthetic", 161.31, 337.99), ("alpaca", 19.31, 58.45)]
)
def test_builtin_means_match_the_paper_within_5_percent(dataset, prompt_mean, output_mean):
    p, o = sample_lengths(dataset, 50_000, np.random.default_rng(1))
    assert abs(p.mean() / prompt_mean - 1) < 0.05
    assert abs(o.mean() / output_mean - 1) < 0.05


def test_sharegpt_lengths_pass_vllms_filter():
    p, o = sample_lengths("sharegpt_synthetic", 20_000, np.random.default_rng(2))
    assert p.min() >= 4 and o.min() >= 4 and p.max() <= 1024 and (p + o).max() <= 2048


def test_chatbot_history_is_cut_to_1024_and_output_capped():
    w = chatbot(rate=5.0, duration_s=200, seed=0)
    assert max(r.prompt_len for r in w.requests) <= 1024
    assert max(r.output_len for r in w.requests) <= 1024


def test_poisson_and_gamma_arrivals():
    rng = np.random.default_rng(0)
    t = arrival_times(4.0, 5000.0, rng)
    assert abs(len(t) / 20_000 - 1) < 0.03 and t.max() < 5000 and np.all(np.diff(t) > 0)
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential: coefficient of variation 1
    bursty = np.diff(arrival_times(4.0, 5000.0, rng, burstiness=0.25))
    assert abs(bursty.mean() - 0.25) < 0.02 and bursty.std() / bursty.mean() > 1.8  # cv = 1/sqrt(0.25)
    with pytest.raises(WorkloadError, match="rate"):
        arrival_times(0.0, 10.0, rng)


def test_same_seed_same_workload_and_it_round_trips(tmp_path):
    a, b = (
        synthetic("sharegpt_synthetic", 2.0, 300, seed=7),
        synthetic("sharegpt_synthetic", 2.0, 300, seed=7),
    )
    assert (
        a.requests == b.requests and a.requests != synthetic("sharegpt_synthetic", 2.0, 300, seed=8).requests
    )
    path = tmp_path / "w.jsonl"
    a.save(path)
    assert Workload.load(path).requests == a.requests


def test_parallel_sampling_beam_and_shared_prefix_settings():
    w = synthetic("alpaca", 2.0, 60, seed=0, n=4, use_beam_search=True)
    groups = w.to_sequence_groups()
    assert all(len(g.seqs) == 4 and g.sampling_params.use_beam_search for g in groups)
    sp = shared_prefix(prefix_len=80, rate=2.0, duration_s=60, seed=0)
    groups = sp.to_sequence_groups()
    assert all(
        g.prefix is groups[0].prefix and g.prompt_token_ids[:80] == groups[0].prefix.token_ids for g in groups
    )
    assert all(r.prompt_len == len(g.prompt_token_ids) for r, g in zip(sp.requests, groups))


def test_lengths_csv_and_its_errors(tmp_path):
    good = tmp_path / "lens.csv"
    good.write_text("num_prefill_tokens,num_decode_tokens\n10,20\n30,40\n")
    w = load_lengths_csv(good, rate=1.0)
    assert [(r.prompt_len, r.output_len) for r in w.requests] == [(10, 20), (30, 40)]
    bad = tmp_path / "bad.csv"
    bad.write_text("num_prefill_tokens,num_decode_tokens\n10,20\n30,lots\n")
    with pytest.raises(WorkloadError, match=r"bad.csv:3: field 'num_decode_tokens'"):
        load_lengths_csv(bad, rate=1.0)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("prompt,answer\n10,20\n")
    with pytest.raises(WorkloadError, match=r"wrong.csv:2: field 'num_prefill_tokens': missing"):
        load_lengths_csv(wrong, rate=1.0)
    with pytest.raises(WorkloadError, match="no such file"):
        load_lengths_csv(tmp_path / "none.csv", rate=1.0)


def test_trace_csv_and_its_errors(tmp_path):
    good = tmp_path / "trace.csv"
    good.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,10,20\n0.1,5,6\n")
    w = load_trace_csv(good)
    assert [r.arrival_time for r in w.requests] == [0.1, 0.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n-1,10,20\n")
    with pytest.raises(WorkloadError, match=r"bad.csv:2: field 'arrived_at'"):
        load_trace_csv(bad)
    short = tmp_path / "short.csv"
    short.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n1,2\n")
    with pytest.raises(WorkloadError, match=r"short.csv:2: wrong number of fields"):
        load_trace_csv(short)


def test_sharegpt_json_with_a_tokenizer_and_its_errors(tmp_path):
    convs = [
        {"conversations": [{"from": "human", "value": "a b c d e"}, {"from": "gpt", "value": "f g h i"}]},
        {"conversations": [{"from": "human", "value": "short"}, {"from": "gpt", "value": "x y z w v"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(convs))
    w = load_sharegpt_json(path, tokenize=str.split, rate=1.0)
    assert [(r.prompt_len, r.output_len) for r in w.requests] == [(5, 4)]  # "short" fails prompt >= 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}]))
    with pytest.raises(WorkloadError, match=r"entry 0: field 'conversations\[0\].value'"):
        load_sharegpt_json(bad, tokenize=str.split, rate=1.0)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"conversations": [}')
    with pytest.raises(WorkloadError, match=r"broken.json:1: not valid JSON"):
        load_sharegpt_json(broken, tokenize=str.split, rate=1.0)


def test_workload_file_errors_name_the_line(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text(
        '{"meta": {}}\n{"request_id": "0", "arrival_time": 0, "prompt_len": 3, "output_len": 2}\n{oops\n'
    )
    with pytest.raises(WorkloadError, match=r"w.jsonl:3: not valid JSON"):
        Workload.load(path)


def test_a_faster_rate_replays_the_same_requests_closer_together():
    slow, fast = (
        synthetic("sharegpt_synthetic", 1.0, 600, seed=5),
        synthetic("sharegpt_synthetic", 2.0, 600, seed=5),
    )
    assert len(fast) > len(slow)
    for a, b in zip(slow.requests, fast.requests):
        assert (a.prompt_len, a.output_len) == (b.prompt_len, b.output_len)
        assert b.arrival_time == pytest.approx(a.arrival_time / 2)
