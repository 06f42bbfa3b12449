"""The paper artifact's trace semantics (harness/datasets.py): ShareGPT sampling, arrivals, the chatbot
trace, finding and reading the data files, and the dataset rename (sharegpt -> the real pairs)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from harness import datasets
from harness.datasets import (
    ARTIFACT_SHAREGPT,
    ETALON_SHAREGPT,
    WorkloadError,
    artifact_arrival_times,
    artifact_chat_requests,
    convert_pkl,
    file_sha256,
    find_data_file,
    read_length_pairs,
)
from harness.workload import DATASETS, chatbot, sample_lengths, shared_prefix, synthetic

# Ten pairs in file order; three have prompt + output >= 2048 and are dropped (the artifact keeps < 2048).
TEN_ROWS = [(10, 20), (2000, 48), (30, 40), (1, 1), (1500, 600), (50, 60), (70, 80), (1024, 1023), (90, 100)]
TEN_ROWS.append((5, 2043))
KEPT = [(10, 20), (30, 40), (1, 1), (50, 60), (70, 80), (1024, 1023), (90, 100)]


@pytest.fixture
def ten_rows(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("input_len,output_len\n" + "".join(f"{p},{o}\n" for p, o in TEN_ROWS))
    return path


def pairs(w):
    return [(r.prompt_len, r.output_len) for r in w.requests]


def test_sampling_by_hand_filter_first_n_then_shuffle(ten_rows):
    # random.Random(0).shuffle of range(5) is [2, 1, 0, 4, 3], of range(7) [4, 2, 1, 0, 5, 3, 6], of
    # range(9) [7, 5, 1, 3, 4, 2, 0, 8, 6] (CPython's shuffle, stable since 3.2).
    w = synthetic("sharegpt", num_requests=5, seed=0, data_path=ten_rows)
    assert pairs(w) == [KEPT[2], KEPT[1], KEPT[0], KEPT[4], KEPT[3]]  # only the first 5 kept pairs
    w = synthetic("sharegpt", num_requests=7, seed=0, data_path=ten_rows)
    assert pairs(w) == [KEPT[i] for i in (4, 2, 1, 0, 5, 3, 6)]
    # More requests than kept pairs: the artifact cycles through them again (kept + kept[:2]).
    w = synthetic("sharegpt", num_requests=9, seed=0, data_path=ten_rows)
    assert pairs(w) == [(KEPT + KEPT[:2])[i] for i in (7, 5, 1, 3, 4, 2, 0, 8, 6)]


def test_arrivals_by_hand():
    # 50 req/s: 0.5 expected arrivals per 10 ms quantum. np.random.RandomState(3).poisson(0.5, 6) is
    # [0, 1, 0, 2, 0, 0]: one request at 10 ms, two at 30 ms.
    assert artifact_arrival_times(50.0, 0.06, seed=3).tolist() == [0.01, 0.03, 0.03]
    t = artifact_arrival_times(2.0, 3600.0, seed=0)
    assert abs(len(t) / 7200 - 1) < 0.03 and np.all(np.diff(t) >= 0) and t.max() < 3600


def artifact_trace(path, rate, duration, seed):
    """The artifact's generator as it runs (global seeding, Python lists), for comparison."""
    saved = random.getstate(), np.random.get_state()
    try:
        random.seed(seed)
        np.random.seed(seed)
        counts = np.random.poisson(lam=rate * (10 / 1000), size=int(duration * (1000 / 10)))
        stamps = []
        for i, c in enumerate(counts):
            stamps += [i * (10 / 1000)] * c
        rows = [tuple(map(int, line.split(","))) for line in path.read_text().split()[1:]]
        kept = [(p, o) for p, o in rows if p + o < 2048]
        data = []
        while len(data) < len(stamps):
            data += kept
        data = data[: len(stamps)]
        random.shuffle(data)
        return [(t, p, o) for t, (p, o) in zip(stamps, data)]
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


@pytest.mark.parametrize("rate, duration, seed", [(3.0, 5.0, 0), (40.0, 1.0, 7), (0.5, 30.0, 1)])
def test_trace_equals_the_artifacts_request_for_request(ten_rows, rate, duration, seed):
    w = synthetic("sharegpt", rate, duration, seed, data_path=ten_rows)
    assert [(r.arrival_time, r.prompt_len, r.output_len) for r in w.requests] == artifact_trace(
        ten_rows, rate, duration, seed
    )
    assert w.meta["arrivals"] == "artifact" and w.meta["data_sha256"] == file_sha256(ten_rows)
    assert w.meta["dataset"] == "sharegpt" and w.meta["data_file"] == str(ten_rows.resolve())


def test_arrival_options(ten_rows):
    # The artifact's arrivals for a table dataset: the same times as for sharegpt at that seed.
    a = synthetic("alpaca", 4.0, 30.0, seed=2, arrivals="artifact")
    assert [r.arrival_time for r in a.requests] == artifact_arrival_times(4.0, 30.0, 2).tolist()
    # Poisson gaps for sharegpt: distinct times, the real pairs.
    p = synthetic("sharegpt", 4.0, 30.0, seed=2, data_path=ten_rows, arrivals="poisson")
    assert p.meta["arrivals"] == "poisson" and len({r.arrival_time for r in p.requests}) == len(p)
    assert set(pairs(p)) <= set(KEPT)
    assert synthetic("alpaca", 4.0, 30.0, seed=2).meta["arrivals"] == "poisson"
    with pytest.raises(WorkloadError, match="burstiness"):
        synthetic("alpaca", 4.0, 30.0, burstiness=0.5, arrivals="artifact")
    with pytest.raises(WorkloadError, match="unknown arrivals"):
        synthetic("alpaca", 4.0, 30.0, arrivals="uniform")
    with pytest.raises(WorkloadError, match="rate"):
        synthetic("sharegpt", 0.0, 30.0, data_path=ten_rows)


def test_not_found_names_the_file_the_places_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELAB_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(datasets, "DEFAULT_DATA_ROOT", tmp_path / "shared")
    with pytest.raises(WorkloadError) as e:
        synthetic("sharegpt", 1.0, 10.0)
    msg = str(e.value)
    assert ARTIFACT_SHAREGPT in msg and str(tmp_path / "root") in msg and str(tmp_path / "shared") in msg
    assert "PAGELAB_DATA" in msg and "convert-pkl" in msg and "sharegpt_synthetic" in msg
    with pytest.raises(WorkloadError, match="missing.csv"):
        synthetic("sharegpt", 1.0, 10.0, data_path=tmp_path / "missing.csv")
    # Found through $PAGELAB_DATA, or given a data root as data_path.
    target = tmp_path / "root" / ARTIFACT_SHAREGPT
    target.parent.mkdir(parents=True)
    target.write_text("input_len,output_len\n3,4\n")
    assert find_data_file(ARTIFACT_SHAREGPT) == target
    assert find_data_file(ARTIFACT_SHAREGPT, tmp_path / "root") == target
    assert pairs(synthetic("sharegpt", num_requests=2)) == [(3, 4), (3, 4)]


@pytest.mark.parametrize(
    "text, where",
    [
        ("input_len,output_len\n1,2\n3,x\n", r"bad\.csv:3: field 'output_len'"),
        ("input_len,output_len\n1,2\n3,-4\n", r"bad\.csv:3: field 'output_len'"),
        ("input_len,output_len\n1,2\n3\n", r"bad\.csv:3: 1 fields"),
        ("prompt,output\n1,2\n", r"bad\.csv:1: no column input_len or prompt_len"),
        ("", r"bad\.csv:1: empty file"),
        ("input_len,output_len\n", r"bad\.csv: no rows"),
    ],
)
def test_a_malformed_csv_names_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=where):
        read_length_pairs(path)


def test_convert_pkl_reads_pairs_and_refuses_code(tmp_path):
    src, dst = tmp_path / "pairs.pkl", tmp_path / "pairs.csv"
    src.write_bytes(pickle.dumps([(5, 7), ([1, 2, 3], [4]), (np.int64(2), 9)]))
    assert convert_pkl(src, dst) == 3
    assert dst.read_text() == "input_len,output_len\n5,7\n3,1\n2,9\n"
    src.write_bytes(pickle.dumps(np.array([[1, 2], [3, 4]], dtype=np.int64)))
    assert convert_pkl(src, dst) == 2 and read_length_pairs(dst).tolist() == [[1, 2], [3, 4]]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(WorkloadError, match="refusing to load builtins.print"):
        convert_pkl(src, dst)


# ---------------------------------------------------------------------- chatbot
CONVERSATIONS = [[(10, 5), (40, 2000)], [(5, 7)], [(3, 3), (20, 4), (1500, 6)]]


def artifact_chat(conversations, num, seed, prob):
    """The artifact's chatbot trace as it runs (TR's builder, then benchmark_chatbot.py's choices on
    the same global random), for comparison."""
    saved = random.getstate()
    try:
        random.seed(seed)
        convs, ct = [], 0
        for conv in conversations:
            turns = []
            for hist, resp in conv:
                turns.append((min(hist, 1024), min(resp, 1016)))
                ct += 1
                if ct >= num:
                    break
            convs.append(turns)
            if ct >= num:
                break
        random.shuffle(convs)
        started, pt, unstarted, out = [], [], list(convs), []
        for _ in range(num):
            if (random.uniform(0, 1) < prob and len(unstarted)) or len(started) == 0:
                i = random.randint(0, len(unstarted) - 1)
                cur = unstarted[i]
                del unstarted[i]
                out.append(cur[0])
                if len(cur) > 1:
                    started.append(cur)
                    pt.append(1)
            else:
                i = random.randint(0, len(started) - 1)
                out.append(started[i][pt[i]])
                pt[i] += 1
                if pt[i] >= len(started[i]):
                    del started[i]
                    del pt[i]
        return out
    finally:
        random.setstate(saved)


@pytest.mark.parametrize("prob", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("num, seed", [(6, 0), (4, 3), (6, 11)])
def test_chat_trace_equals_the_artifacts(prob, num, seed):
    got = artifact_chat_requests(CONVERSATIONS, num, seed, prob)
    assert [(p, o) for p, o, _, _ in got] == artifact_chat(CONVERSATIONS, num, seed, prob)
    # Each conversation's turns come in order; caps: history 1024, output 1016.
    for c in range(len(CONVERSATIONS)):
        assert [t for _, _, cc, t in got if cc == c] == list(range(sum(cc == c for _, _, cc, _ in got)))
    assert max(p for p, *_ in got) <= 1024 and max(o for _, o, *_ in got) <= 1016


def test_chatbot_multiturn_file_and_options(tmp_path):
    path = tmp_path / "turns.csv"
    rows = [turn for conv in CONVERSATIONS for turn in conv]
    path.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{p},{o}\n" for p, o in rows))
    assert datasets.read_conversations(path) == CONVERSATIONS  # a shorter history starts a conversation
    w = chatbot(5.0, 1.0, seed=0, new_conversation_prob=0.0, data_path=path)
    times = artifact_arrival_times(5.0, 1.0, 0)
    assert [r.arrival_time for r in w.requests] == times.tolist()
    assert pairs(w) == artifact_chat(CONVERSATIONS, len(times), 0, 0.0)
    assert w.meta["new_conversation_prob"] == 0.0 and w.meta["data_sha256"] == file_sha256(path)
    with pytest.raises(WorkloadError, match="chat turns"):
        chatbot(100.0, 1.0, new_conversation_prob=0.5, data_path=path)
    with pytest.raises(WorkloadError, match="new_conversation_prob"):
        chatbot(1.0, 10.0, data_path=path)  # the table needs no file
    assert chatbot(1.0, 60.0).meta["dataset"] == "chatbot"  # default: today's table


# ---------------------------------------------------------------------- the rename
def test_rename_sharegpt_synthetic_is_the_old_table():
    assert DATASETS == ("sharegpt", "sharegpt_synthetic", "alpaca", "chatbot")
    p, o = sample_lengths("sharegpt_synthetic", 50_000, np.random.default_rng(1))
    assert abs(p.mean() / 161.31 - 1) < 0.05 and abs(o.mean() / 337.99 - 1) < 0.05
    with pytest.raises(WorkloadError, match="sharegpt_synthetic"):
        sample_lengths("sharegpt", 10, np.random.default_rng(1))
    w = synthetic("sharegpt_synthetic", 2.0, 60.0, seed=0)
    assert w.meta["arrivals"] == "poisson" and w.meta["sampling"].endswith("'sharegpt'")
    with pytest.raises(WorkloadError, match="data_path applies to sharegpt"):
        synthetic("alpaca", 2.0, 60.0, data_path="x.csv")
    sp = shared_prefix(80, 2.0, 60.0, seed=0)
    assert sp.meta["dataset"] == "alpaca" and all(r.prompt_len > 80 for r in sp.requests)


# ---------------------------------------------------------------------- the real files
def _real(relpath):
    try:
        return find_data_file(relpath)
    except WorkloadError:
        pytest.skip(f"{relpath} not found ($PAGELAB_DATA or ../shared/data): the real-data checks need it")


def test_the_artifacts_sharegpt_file():
    path = _real(ARTIFACT_SHAREGPT)
    all_pairs = read_length_pairs(path)
    kept = all_pairs[all_pairs.sum(axis=1) < 2048]
    assert len(all_pairs) == 84_226 and len(kept) == 79_725
    assert round(kept[:, 0].mean(), 1) == 161.2 and round(kept[:, 1].mean(), 1) == 338.0
    w = synthetic("sharegpt", 2.0, 600.0, seed=0)
    assert abs(len(w) / 1200 - 1) < 0.1 and w.meta["data_sha256"] == file_sha256(path)


def test_the_multiturn_file():
    path = _real(ETALON_SHAREGPT)
    convs = datasets.read_conversations(path)
    assert sum(map(len, convs)) == 30_731 and len(convs) > 4000
    w = chatbot(1.0, 600.0, seed=0, new_conversation_prob=0.5)
    assert max(r.prompt_len for r in w.requests) <= 1024 and max(r.output_len for r in w.requests) <= 1016
