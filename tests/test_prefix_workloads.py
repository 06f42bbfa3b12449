"""Workloads whose prompts share content, for the automatic prefix cache (docs/workloads.md, "Prefix
reuse"): content-addressed prompts (Request.segments), shared system prompts, multi-turn conversations,
Mooncake traces, and a simulated run whose prefix cache finds them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import CONF_DIR, Config, register
from harness.experiment import ExperimentError, Point, run_experiment, run_point, validate
from harness.prefix_workloads import conversation_turns, multi_turn, system_prompts, zipf_probabilities
from harness.traces import load_mooncake, mooncake_segments
from harness.workload import Request, Workload, WorkloadError, segment_tokens, synthetic

register()


# ---------------------------------------------------------------------- segments
def test_a_segments_tokens_depend_only_on_the_seed_and_its_id():
    a = segment_tokens("sys0", 1200, seed=3)
    assert len(a) == 1200 and a.min() >= 1 and a.max() < 50_000
    assert np.array_equal(segment_tokens("sys0", 700, seed=3), a[:700])  # a shorter use is a prefix
    assert not np.array_equal(segment_tokens("sys0", 1200, seed=4), a)
    assert not np.array_equal(segment_tokens("sys1", 1200, seed=3), a)
    assert not np.array_equal(segment_tokens(7, 50), segment_tokens("7", 50))  # int and str ids differ


def test_requests_naming_the_same_segments_get_the_same_tokens():
    w = Workload(
        [
            Request("0", 0.0, 40, 4, segments=[("shared", 32), ("a", 8)]),
            Request("1", 1.0, 20, 4, segments=[("shared", 16), (5, 4)]),
            Request("2", 2.0, 24, 4, prefix_id="p", prefix_len=4, segments=[(5, 20)]),
        ]
    )
    g = [x.seqs[0].token_ids for x in w.to_sequence_groups(seed=1)]
    # the shared segment's first 16 tokens, then different segments (equal-length slices)
    assert g[0][:16] == g[1][:16] and g[0][16:20] != g[1][16:20] and g[0][32:36] != g[1][16:20]
    assert g[1][16:] == g[2][4:8]  # segment 5 after the explicit prefix
    again = [x.seqs[0].token_ids for x in w.to_sequence_groups(seed=1)]
    assert again == g and [x.seqs[0].token_ids for x in w.to_sequence_groups(seed=2)] != g


def test_a_workload_without_segments_keeps_its_tokens():
    """The random stream of requests without segments is as before segments existed."""
    w = synthetic("sharegpt_synthetic", 2.0, 30, seed=0)
    rng = np.random.default_rng(5)
    expected = [rng.integers(1, 50_000, size=r.prompt_len).tolist() for r in w.requests]
    assert [g.seqs[0].token_ids for g in w.to_sequence_groups(seed=5)] == expected


def test_segments_round_trip_and_files_without_them_load(tmp_path):
    w = system_prompts("sharegpt_synthetic", 2.0, 60, seed=1, num_system_prompts=3)
    w.requests.append(Request("x", 99.0, 5, 1))
    path = tmp_path / "w.jsonl"
    w.save(path)
    back = Workload.load(path)
    assert back.requests == w.requests and isinstance(back.requests[0].segments[0], tuple)
    assert "segments" not in json.loads(path.read_text().splitlines()[-1])  # none: not written
    old = tmp_path / "old.jsonl"
    old.write_text('{"meta": {}}\n{"request_id": "0", "arrival_time": 0, "prompt_len": 3, "output_len": 2}\n')
    assert Workload.load(old).requests == [Request("0", 0.0, 3, 2)]


@pytest.mark.parametrize(
    "segments, match",
    [
        ([["a", 2], ["b", 2]], r"w.jsonl:2: field 'segments': the lengths add up to 4 tokens, but"),
        ([["a", 0], ["b", 3]], r"w.jsonl:2: field 'segments': segment 'a' has length 0"),
        ([[1.5, 3]], r"w.jsonl:2: field 'segments': a segment id is text or an integer"),
        ([["a"]], r"w.jsonl:2: field 'segments': expected a list of \[segment id, length\] pairs"),
    ],
)
def test_bad_segments_name_the_line_and_field(tmp_path, segments, match):
    path = tmp_path / "w.jsonl"
    line = {"request_id": "0", "arrival_time": 0, "prompt_len": 3, "output_len": 2, "segments": segments}
    path.write_text('{"meta": {}}\n' + json.dumps(line) + "\n")
    with pytest.raises(WorkloadError, match=match):
        Workload.load(path)


# ---------------------------------------------------------------------- shared system prompts
def test_system_prompts_are_chosen_by_zipfs_law():
    w = system_prompts("sharegpt_synthetic", 20.0, 600, seed=0, num_system_prompts=4, system_prompt_lens=[64])
    chosen = [int(r.segments[0][0][3:]) for r in w.requests]
    freq = np.bincount(chosen, minlength=4) / len(chosen)
    assert np.allclose(freq, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12), atol=0.02)
    assert np.allclose(zipf_probabilities(5, 0.0), 0.2)  # exponent 0: uniform
    base = synthetic("sharegpt_synthetic", 20.0, 600, seed=0)
    assert [r.prompt_len - 64 for r in w.requests] == [r.prompt_len for r in base.requests]
    assert [r.arrival_time for r in w.requests] == [r.arrival_time for r in base.requests]
    # Requests with one system prompt share its tokens; the rest of each prompt is its own.
    tokens = [g.seqs[0].token_ids for g in w.to_sequence_groups()]
    same = [i for i, k in enumerate(chosen) if k == chosen[0]]
    other = chosen.index(next(k for k in chosen if k != chosen[0]))
    assert all(tokens[i][:64] == tokens[0][:64] for i in same)
    assert tokens[other][:64] != tokens[0][:64] and tokens[same[1]][64:70] != tokens[0][64:70]


def test_system_prompt_lengths_one_each_and_their_errors():
    w = system_prompts("alpaca", 5.0, 60, seed=2, num_system_prompts=3, system_prompt_lens=[10, 20, 30])
    assert all(r.segments[0][1] == 10 * (1 + int(r.segments[0][0][3:])) for r in w.requests)
    with pytest.raises(WorkloadError, match="lists 2 lengths for 3 system prompts"):
        system_prompts("alpaca", 5.0, 60, num_system_prompts=3, system_prompt_lens=[10, 20])
    with pytest.raises(WorkloadError, match="needs num_system_prompts >= 1"):
        system_prompts("alpaca", 5.0, 60, num_system_prompts=0)
    with pytest.raises(WorkloadError, match="Zipf exponent must be >= 0"):
        system_prompts("alpaca", 5.0, 60, num_system_prompts=2, system_prompt_zipf=-1.0)


# ---------------------------------------------------------------------- multi-turn conversations
def write_conversations(path: Path, conversations: list[list[tuple[int, int]]]) -> Path:
    """A multi-turn statistics CSV (etalon's columns): per turn, the history so far and the response."""
    rows = ["num_prefill_tokens,num_decode_tokens"]
    for conv in conversations:
        history = 0
        for t, (user, response) in enumerate(conv):
            history += user if t == 0 else conv[t - 1][1] + user
            rows.append(f"{history},{response}")
    path.write_text("\n".join(rows) + "\n")
    return path


def conversations(num: int = 40, seed: int = 0) -> list[list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    # The first message is short (a new conversation's history is not longer than the last one's)
    return [
        [(int(rng.integers(10, 20)) if t == 0 else int(rng.integers(5, 200)), int(rng.integers(10, 300)))
         for t in range(int(rng.integers(2, 7)))]
        for _ in range(num)
    ]  # fmt: skip


@pytest.fixture
def chats(tmp_path) -> Path:
    return write_conversations(tmp_path / "chats.csv", conversations())


def by_conversation(w: Workload) -> dict[str, list[Request]]:
    out: dict[str, list[Request]] = {}
    for r in w.requests:  # the last segment is the new message, "c<conversation>u<turn>"
        out.setdefault(r.segments[-1][0].split("u")[0], []).append(r)
    return out


def test_conversation_turns_recover_the_messages(tmp_path):
    convs = conversations(5)
    from harness.datasets import read_conversations

    turns = conversation_turns(read_conversations(write_conversations(tmp_path / "c.csv", convs)))
    assert [(u.tolist(), o.tolist()) for u, o in turns] == [
        ([u for u, _ in c], [o for _, o in c]) for c in convs
    ]


def test_multi_turn_is_deterministic_and_a_turn_resends_its_history(chats):
    w = multi_turn(2.0, 300, seed=4, data_path=chats, max_context_len=1024, think_time_s=5.0)
    same = multi_turn(2.0, 300, seed=4, data_path=chats, max_context_len=1024, think_time_s=5.0)
    assert w.requests == same.requests
    assert w.requests != multi_turn(2.0, 300, seed=5, data_path=chats, max_context_len=1024).requests
    tokens = {g.request_id: g.seqs[0].token_ids for g in w.to_sequence_groups(seed=1)}
    assert tokens == {g.request_id: g.seqs[0].token_ids for g in same.to_sequence_groups(seed=1)}
    times = [r.arrival_time for r in w.requests]
    assert times == sorted(times) and [r.request_id for r in w.requests] == [str(i) for i in range(len(w))]
    multi = 0
    for turns in by_conversation(w).values():
        assert all(r.prompt_len + r.output_len <= 1024 for r in turns)
        for prev, nxt in zip(turns, turns[1:]):
            multi += 1
            # the whole previous prompt, then the previous response's segment, then the new message
            assert nxt.segments[: len(prev.segments)] == prev.segments
            assert nxt.segments[len(prev.segments)][1] == prev.output_len
            assert tokens[nxt.request_id][: prev.prompt_len] == tokens[prev.request_id]
            assert nxt.arrival_time >= prev.arrival_time + prev.output_len * 0.05
    assert multi > 50


def test_multi_turn_conversations_arrive_at_the_rates_share(chats):
    w = multi_turn(4.0, 2000, seed=0, data_path=chats, think_time_s=2.0)
    m = w.meta
    assert m["conversation_rate"] == pytest.approx(4.0 / m["mean_turns"])
    assert m["num_conversations"] == pytest.approx(2000 * m["conversation_rate"], rel=0.1)
    assert 3.4 < len(w) / 2000 <= 4.4  # the last conversations' later turns are cut at duration_s
    short = multi_turn(4.0, 2000, seed=0, data_path=chats, max_context_len=300)
    assert short.meta["mean_turns"] < m["mean_turns"]
    assert all(r.prompt_len + r.output_len <= 300 for r in short.requests)


def test_multi_turn_with_system_prompts_and_its_errors(chats):
    w = multi_turn(2.0, 200, seed=0, data_path=chats, num_system_prompts=3, system_prompt_lens=[100])
    for turns in by_conversation(w).values():
        assert len({r.segments[0] for r in turns}) == 1 and turns[0].segments[0][1] == 100
    with pytest.raises(WorkloadError, match="no conversation.s first turn fits max_context_len=19"):
        multi_turn(2.0, 200, data_path=chats, max_context_len=19)
    with pytest.raises(WorkloadError, match="arrivals=poisson"):
        multi_turn(2.0, 200, data_path=chats, arrivals="artifact")
    with pytest.raises(WorkloadError, match="think_time_s must be seconds >= 0"):
        multi_turn(2.0, 200, data_path=chats, think_time_s=-1.0)


# ---------------------------------------------------------------------- Mooncake traces
def mooncake_line(t_ms, prompt, output, ids) -> str:
    return json.dumps({"timestamp": t_ms, "input_length": prompt, "output_length": output, "hash_ids": ids})


def test_mooncake_blocks_are_shared_segments(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(
        "\n".join(
            [
                mooncake_line(0, 1100, 10, [0, 1, 2]),
                mooncake_line(1000, 1030, 5, [0, 1, 3]),
                mooncake_line(1000, 700, 0, [0, 4]),  # no output: skipped and counted
                "",
                mooncake_line(3000, 600, 7, [0]),  # input_length // 512 ids: the tail is its own
                mooncake_line(2500, 1025, 2, [0, 1, 2]),
            ]
        )
        + "\n"
    )
    w = load_mooncake(path)
    assert [r.request_id for r in w.requests] == ["0", "1", "3", "2"]  # arrival order; ids in file order
    assert [r.arrival_time for r in w.requests] == [0.0, 1.0, 2.5, 3.0]
    assert w.requests[0].segments == [(0, 512), (1, 512), (2, 76)]
    assert w.requests[3].segments == [(0, 512), ("r2.tail", 88)]
    assert w.meta["num_skipped_failed"] == 1 and w.meta["num_trace_rows"] == 5
    t = {g.request_id: g.seqs[0].token_ids for g in w.to_sequence_groups()}
    assert t["0"][:1024] == t["1"][:1024] and t["0"][1024:1030] != t["1"][1024:]
    assert t["3"] == t["0"][:1025]  # the same ids: the partial last block is a prefix of the other's
    fast = load_mooncake(path, rate=6.0, duration_s=0.5)
    assert fast.meta["time_scale"] == pytest.approx(1.0 / 6.0) and len(fast) == 3  # 0, 1/6, 2.5/6 s
    assert mooncake_segments((), 10, "9") == [("r9.tail", 10)]


@pytest.mark.parametrize(
    "line, match",
    [
        ("{oops", r"trace.jsonl:2: not valid JSON .*one request per line"),
        ('{"timestamp": 0, "input_length": 3}', r"trace.jsonl:2: field 'output_length': missing"),
        (mooncake_line(-1, 3, 1, [0]), r"trace.jsonl:2: field 'timestamp': expected milliseconds >= 0"),
        (mooncake_line(0, 2.5, 1, [0]), r"trace.jsonl:2: field 'input_length': expected a whole number"),
        (mooncake_line(0, 3, -1, [0]), r"trace.jsonl:2: field 'output_length': expected a whole number"),
        (mooncake_line(0, 3, 1, ["a"]), r"trace.jsonl:2: field 'hash_ids': expected a list of integer"),
        (mooncake_line(0, 1100, 1, [0]), r":2: field 'hash_ids': 1 block ids for input_length 1100, "
         r"expected 3 \(or 2\).*block_tokens"),
        ("[1, 2]", r"trace.jsonl:2: expected a JSON object"),
        ('{"timestamp": 0, "input_length": NaN, "output_length": 1, "hash_ids": [0]}',
         r"trace.jsonl:2: field 'input_length': expected a whole number"),
        ('{"timestamp": 0, "input_length": 3, "output_length": Infinity, "hash_ids": [0]}',
         r"trace.jsonl:2: field 'output_length': expected a whole number"),
    ],
)  # fmt: skip
def test_mooncake_errors_name_the_file_line_and_field(tmp_path, line, match):
    path = tmp_path / "trace.jsonl"
    path.write_text(mooncake_line(0, 10, 1, [0]) + "\n" + line + "\n")
    with pytest.raises(WorkloadError, match=match):
        load_mooncake(path)


def test_mooncake_file_errors(tmp_path):
    with pytest.raises(WorkloadError, match="no such file"):
        load_mooncake(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(mooncake_line(0, 10, 0, [0]) + "\n")
    with pytest.raises(WorkloadError, match=r"no requests in the file \(1 skipped: no output tokens\)"):
        load_mooncake(empty)


# ---------------------------------------------------------------------- the harness
def compose_raw(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def config(*overrides: str) -> Config:
    return OmegaConf.to_object(compose_raw(*overrides))


def test_settings_of_other_kinds_fail_in_validate():
    with pytest.raises(
        ExperimentError, match=r"workload.think_time_s applies to workload.kind=multi_turn, not"
    ):
        validate(config("exp=smoke", "workload.think_time_s=5"))
    with pytest.raises(
        ExperimentError, match=r"num_system_prompts applies to .*system_prompts or multi_turn"
    ):
        validate(config("exp=smoke", "workload.num_system_prompts=4"))
    validate(config("exp=smoke", "workload.kind=mooncake", "workload.path=t.jsonl", "workload.rescale=false"))


def test_mooncake_and_system_prompt_kinds_name_their_fix(tmp_path):
    from harness.experiment import make_workload

    with pytest.raises(ExperimentError, match="kind=mooncake needs workload.path"):
        make_workload(config("exp=smoke", "workload.kind=mooncake"), 1.0)
    with pytest.raises(ExperimentError, match="needs workload.num_system_prompts >= 1"):
        make_workload(config("exp=smoke", "workload.kind=system_prompts"), 1.0)


def test_the_prefix_cache_hits_on_a_simulated_multi_turn_run(tmp_path, chats):
    """exp=prefix_policies at a smoke size on small conversations: points.csv has each policy's hit rate,
    above 0, and the hit-rate plot is drawn."""
    raw = compose_raw(
        "exp=prefix_policies",
        "request_rates=[1.0]",
        "duration_s=240",
        f"workload.data_path={chats}",
        "workload.think_time_s=5",
        f"results_dir={tmp_path}",
        "workers=1",
    )
    run = run_experiment(OmegaConf.to_object(raw), OmegaConf.to_yaml(raw, resolve=True), progress=False)
    rows = {(r["prefix_eviction"], r["host_cache_gib"]): r for r in csv.DictReader(open(run / "points.csv"))}
    assert set(rows) == {(p, gib) for p in ("lru", "lfu", "radix") for gib in ("0", "16")}
    for row in rows.values():
        assert float(row["prefix_hit_rate"]) > 0.1 and int(row["prefix_hit_blocks"]) > 0
        assert int(row["num_completed"]) == int(row["num_requests"])
    assert (run / "prefix_hit_rate.png").stat().st_size > 10_000


@pytest.mark.parametrize("kind", ["system_prompts", "mooncake"])
def test_the_prefix_cache_hits_on_shared_system_prompts_and_a_mooncake_trace(tmp_path, kind):
    if kind == "mooncake":
        path = tmp_path / "trace.jsonl"
        rng = np.random.default_rng(0)  # 8 shared first blocks, one request's own second block
        path.write_text(
            "\n".join(mooncake_line(500 * i, 700, 20, [int(rng.integers(8)), 100 + i]) for i in range(200))
        )
        extra = ["exp=prefix_policies", "workload.kind=mooncake", f"workload.path={path}"]
    else:
        extra = ["exp=prefix_policies_system", "workload.dataset=sharegpt_synthetic"]
    cfg = config(*extra, "duration_s=120", "system.prefix_eviction=lru")
    row, _, _ = run_point(cfg, Point("vllm", 1.0, ()))
    assert row["prefix_hit_rate"] > 0.3 and math.isfinite(row["normalized_latency"])
