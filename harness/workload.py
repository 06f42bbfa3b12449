"""Workloads: which requests arrive when, with how many prompt and output tokens.

A `Workload` is a list of `Request`s with a fixed seed, saved as JSON lines so every system replays
exactly the same requests. Lengths come from the paper artifact's real ShareGPT pairs
(`sharegpt`, sampled exactly as the artifact's trace generator does: harness/datasets.py), from built-in
distributions derived from real traces (harness/data/length_tables.json, made by
scripts/derive_length_tables.py; docs/workloads.md) or from a user's own files; arrivals are the
artifact's Poisson process per 10 ms, or Poisson / gamma gaps (vLLM's burstiness). Outputs ignore EOS:
each request generates exactly its trace's output length, as in vLLM's benchmarks and the paper.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.datasets import (
    ARTIFACT_SHAREGPT,
    ETALON_SHAREGPT,
    SHAREGPT_HINT,
    WorkloadError,
    artifact_arrival_times,
    artifact_chat_requests,
    artifact_sample,
    file_sha256,
    find_data_file,
    read_conversations,
    read_length_pairs,
)
from harness.results import atomic_open
from paged import SamplingParams, SequenceGroup, SharedPrefix

__all__ = ["WorkloadError"]  # defined in harness.datasets, raised by both

TABLES_FILE = Path(__file__).parent / "data" / "length_tables.json"
# Dataset names. `sharegpt`: the artifact's real length pairs (a data file, harness/datasets.py). The
# others are quantile tables drawn independently (the key is the table's name in TABLES_FILE).
TABLE_KEY = {"sharegpt_synthetic": "sharegpt", "alpaca": "alpaca", "chatbot": "chatbot"}
DATASETS = ("sharegpt", *TABLE_KEY)
BUILTIN = DATASETS  # the name the CLIs use for their --dataset choices
# default: the artifact's arrivals for `sharegpt` (its trace, request for request), Poisson gaps for the
# tables (a rate sweep replays the same requests, only closer together).
ARRIVALS = ("default", "poisson", "artifact")


@dataclass
class Request:
    """One request of a trace. prompt_len includes the shared prefix, if any."""

    request_id: str
    arrival_time: float
    prompt_len: int
    output_len: int
    n: int = 1  # parallel samples, or the beam width with beam search
    use_beam_search: bool = False
    prefix_id: str | None = None
    prefix_len: int = 0


@dataclass
class Workload:
    requests: list[Request]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    def save(self, path: str | Path) -> None:
        """JSON lines: a header line with the metadata, then one request per line (atomic write)."""
        with atomic_open(path) as f:
            f.write(json.dumps({"meta": self.meta}) + "\n")
            for r in self.requests:
                f.write(json.dumps(asdict(r)) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Workload:
        path = Path(path)
        requests, meta = [], {}
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise WorkloadError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if "meta" in obj and lineno == 1:
                    meta = obj["meta"]
                    continue
                try:
                    requests.append(Request(**obj))
                except TypeError as e:
                    raise WorkloadError(f"{path}:{lineno}: not a request ({e})") from None
        return cls(requests, meta)

    def to_sequence_groups(self, seed: int = 0, vocab_size: int = 50_000) -> list[SequenceGroup]:
        """Requests as engine input, with synthetic prompt token ids (only lengths matter to the
        simulator; prompts sharing a prefix share its tokens, so prefix sharing and caching see it)."""
        rng = np.random.default_rng(seed)
        prefixes: dict[str, SharedPrefix] = {}
        groups = []
        for r in self.requests:
            own = rng.integers(1, vocab_size, size=r.prompt_len - r.prefix_len).tolist()
            prefix = None
            if r.prefix_id is not None:
                prefix = prefixes.get(r.prefix_id)
                if prefix is None:
                    tokens = np.random.default_rng([seed, len(prefixes)]).integers(
                        1, vocab_size, r.prefix_len
                    )
                    prefix = prefixes[r.prefix_id] = SharedPrefix(r.prefix_id, tokens.tolist())
                own = prefix.token_ids + own
            # Greedy: the simulator ignores it; on the real engine it makes runs comparable token by token.
            params = SamplingParams(
                max_tokens=r.output_len,
                n=r.n,
                use_beam_search=r.use_beam_search,
                ignore_eos=True,
                temperature=0.0,
            )
            groups.append(SequenceGroup(r.request_id, own, params, r.arrival_time, prefix=prefix))
        return groups


# ---------------------------------------------------------------------- arrivals
def arrival_times(
    rate: float, duration_s: float, rng: np.random.Generator, burstiness: float = 1.0
) -> np.ndarray:
    """Arrival times in [0, duration_s): gaps ~ Gamma(shape=burstiness, mean=1/rate) (vLLM's
    benchmark; burstiness 1 is a Poisson process, below 1 burstier). The gaps are unit-rate draws
    divided by the rate, in fixed-size batches: with one seed, the trace at rate 2r is the trace at
    rate r with every time halved, so a rate sweep replays the same requests, only closer together."""
    if rate <= 0 or not math.isfinite(rate):
        raise WorkloadError(f"request rate must be a positive number of requests/s, got {rate}")
    if burstiness <= 0:
        raise WorkloadError(f"burstiness must be > 0 (1 = Poisson), got {burstiness}")
    chunks = []
    t = 0.0
    while t < duration_s:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / burstiness, size=4096) / rate
        times = t + np.cumsum(gaps)
        chunks.append(times)
        t = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]


# ---------------------------------------------------------------------- lengths
@lru_cache(maxsize=1)
def _tables() -> dict:
    return json.loads(TABLES_FILE.read_text())


def vllm_filter(prompt: np.ndarray, output: np.ndarray, min_len: int = 4) -> np.ndarray:
    """vLLM's ShareGPT benchmark filter: prompt and output >= 4, prompt <= 1024, prompt + output <= 2048."""
    return (prompt >= min_len) & (output >= min_len) & (prompt <= 1024) & (prompt + output <= 2048)


# vLLM's filter comes from its ShareGPT benchmark; the paper's Alpaca statistics (and the chatbot
# setup) keep short outputs, so those only get the length caps.
MIN_LEN = {"sharegpt_synthetic": 4, "alpaca": 1, "chatbot": 1}


def sample_lengths(dataset: str, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """num (prompt, output) length pairs from a built-in table, after its filter. Candidates are
    drawn in fixed-size batches, so the first k pairs do not depend on num: a longer trace extends a
    shorter one with the same seed."""
    if dataset == "sharegpt":
        raise WorkloadError(
            "sharegpt is the artifact's length pairs, sampled as a trace (synthetic('sharegpt', ...) or "
            "harness.datasets.artifact_sample); for independent draws use sharegpt_synthetic"
        )
    if dataset not in TABLE_KEY:
        raise WorkloadError(f"unknown built-in dataset {dataset!r}: choose one of {', '.join(TABLE_KEY)}")
    t = _tables()
    q = np.asarray(t["quantiles"])
    table = t[TABLE_KEY[dataset]]
    prompts, outputs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    have = 0
    while have < num:
        p = np.rint(np.interp(rng.random(4096), q, table["prompt"]) * table["prompt_scale"]).astype(np.int64)
        o = np.rint(np.interp(rng.random(4096), q, table["output"]) * table["output_scale"]).astype(np.int64)
        keep = vllm_filter(p, o, MIN_LEN[dataset])
        prompts.append(p[keep])
        outputs.append(o[keep])
        have += int(keep.sum())
    return np.concatenate(prompts)[:num], np.concatenate(outputs)[:num]


# ---------------------------------------------------------------------- generators
def resolve_arrivals(dataset: str, arrivals: str) -> str:
    """ "default" -> "artifact" for sharegpt, "poisson" for the tables; anything else is checked."""
    if arrivals not in ARRIVALS:
        raise WorkloadError(f"unknown arrivals {arrivals!r}: choose one of {', '.join(ARRIVALS)}")
    if arrivals == "default":
        return "artifact" if dataset == "sharegpt" else "poisson"
    return arrivals


def _times(arrivals: str, rate: float, duration_s: float, seed: int, burstiness: float) -> np.ndarray:
    if arrivals == "artifact":
        if rate <= 0 or not math.isfinite(rate):
            raise WorkloadError(f"request rate must be a positive number of requests/s, got {rate}")
        if burstiness != 1.0:
            raise WorkloadError(
                f"arrivals='artifact' is a Poisson process (burstiness 1), got burstiness={burstiness}; "
                "use arrivals='poisson' for gamma gaps"
            )
        return artifact_arrival_times(rate, duration_s, seed)
    # Separate streams for times and lengths: request i has the same lengths at every rate.
    return arrival_times(rate, duration_s, np.random.default_rng([seed, 1]), burstiness)


def _data_meta(path: Path) -> dict:
    return dict(data_file=str(path.resolve()), data_sha256=file_sha256(path))


def synthetic(
    dataset: str = "sharegpt",
    rate: float = 1.0,
    duration_s: float = 3600.0,
    seed: int = 0,
    burstiness: float = 1.0,
    n: int = 1,
    use_beam_search: bool = False,
    num_requests: int | None = None,
    data_path: str | Path | None = None,
    arrivals: str = "default",
) -> Workload:
    """Requests of `dataset` arriving at `rate` for `duration_s` seconds (or, with num_requests, exactly
    that many, all at t=0: vLLM's offline throughput setting).

    dataset: "sharegpt" (the artifact's real pairs: prompt + output < 2048, the first N in file order,
    shuffled with the seed; the file is found from data_path, $PAGELAB_DATA or ../shared/data), or a
    table: "sharegpt_synthetic", "alpaca", "chatbot" (independent draws; data_path must be None).
    arrivals: "artifact" (Poisson per 10 ms quantum, numpy's legacy RandomState(seed), as the artifact),
    "poisson" (gamma gaps of shape `burstiness`; 1 = exponential), or "default" (artifact for sharegpt,
    poisson for the tables)."""
    if dataset not in DATASETS:
        raise WorkloadError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    arrivals = resolve_arrivals(dataset, arrivals)
    times = (
        np.zeros(num_requests)
        if num_requests is not None
        else _times(arrivals, rate, duration_s, seed, burstiness)
    )
    meta = dict(
        kind="synthetic",
        dataset=dataset,
        rate=rate,
        duration_s=duration_s,
        seed=seed,
        burstiness=burstiness,
        arrivals="all at t=0" if num_requests is not None else arrivals,
        n=n,
        use_beam_search=use_beam_search,
        num_requests=num_requests,
    )
    if dataset == "sharegpt":
        path = find_data_file(ARTIFACT_SHAREGPT, data_path, SHAREGPT_HINT)
        lens = artifact_sample(read_length_pairs(path), len(times), seed)
        prompts, outputs = lens[:, 0], lens[:, 1]
        meta.update(
            _data_meta(path), sampling="artifact: prompt + output < 2048, first N in file order, shuffled"
        )
    else:
        if data_path is not None:
            raise WorkloadError(f"dataset {dataset!r} is a built-in table; data_path applies to sharegpt")
        prompts, outputs = sample_lengths(dataset, len(times), np.random.default_rng([seed, 2]))
        meta.update(_data_meta(TABLES_FILE), sampling=f"independent draws from table {TABLE_KEY[dataset]!r}")
    requests = [
        Request(str(i), float(t), int(p), int(o), n=n, use_beam_search=use_beam_search)
        for i, (t, p, o) in enumerate(zip(times, prompts, outputs))
    ]
    return Workload(requests, meta)


def shared_prefix(
    prefix_len: int = 80,
    rate: float = 1.0,
    duration_s: float = 3600.0,
    seed: int = 0,
    task_dataset: str = "alpaca",
    data_path: str | Path | None = None,
    arrivals: str = "default",
) -> Workload:
    """The paper's shared-prefix workload (section 6.4): every prompt starts with the same prefix
    (instruction plus examples: 80 tokens one-shot, 341 five-shot) followed by its own task. The paper's
    WMT16 sentence lengths are not given; task input and output lengths follow `task_dataset`."""
    w = synthetic(task_dataset, rate, duration_s, seed, data_path=data_path, arrivals=arrivals)
    for r in w.requests:
        r.prompt_len += prefix_len
        r.prefix_id, r.prefix_len = f"prefix{prefix_len}", prefix_len
    w.meta.update(kind="shared_prefix", prefix_len=prefix_len)
    return w


def chatbot(
    rate: float = 1.0,
    duration_s: float = 3600.0,
    seed: int = 0,
    new_conversation_prob: float | None = None,
    data_path: str | Path | None = None,
    arrivals: str = "default",
) -> Workload:
    """The paper's chatbot workload: prompts are ShareGPT conversation histories cut to their last 1024
    tokens; no KV kept between rounds.

    new_conversation_prob None: independent draws from the `chatbot` table (outputs capped at 1024;
    data_path must be None). A probability: the artifact's multi-turn trace (0.5 for vLLM, 0.1 for Orca
    in its scripts) over the conversations of etalon's multi-turn ShareGPT statistics (found like
    sharegpt's file; outputs capped at 1016): harness.datasets.artifact_chat_requests."""
    if new_conversation_prob is None:
        if data_path is not None:
            raise WorkloadError("chatbot: data_path needs new_conversation_prob (the multi-turn trace)")
        w = synthetic("chatbot", rate, duration_s, seed, arrivals=arrivals)
        w.meta.update(kind="chatbot", new_conversation_prob=None)
        return w
    arrivals = resolve_arrivals("sharegpt", arrivals)  # the artifact's trace: its arrivals by default
    times = _times(arrivals, rate, duration_s, seed, 1.0)
    path = find_data_file(ETALON_SHAREGPT, data_path)
    turns = artifact_chat_requests(read_conversations(path), len(times), seed, new_conversation_prob)
    requests = [Request(str(i), float(t), p, o) for i, (t, (p, o, _, _)) in enumerate(zip(times, turns))]
    meta = dict(
        kind="chatbot",
        dataset="chatbot_multiturn",
        rate=rate,
        duration_s=duration_s,
        seed=seed,
        arrivals=arrivals,
        new_conversation_prob=new_conversation_prob,
        **_data_meta(path),
        sampling="artifact: conversations in file order, shuffled; history cut to 1024, output to 1016",
    )
    return Workload(requests, meta)


# ---------------------------------------------------------------------- a user's files
def _fail(path, line, field_name, problem):
    raise WorkloadError(f"{path}:{line}: field {field_name!r}: {problem}")


def _int_field(row: dict, names: tuple[str, ...], path, line) -> int:
    for name in names:
        if name in row:
            raw = row[name]
            try:
                value = int(float(raw))
            except (TypeError, ValueError):
                _fail(path, line, name, f"expected a whole number of tokens, got {raw!r}")
            if value < 0 or value != float(raw):
                _fail(path, line, name, f"expected a whole number of tokens >= 0, got {raw!r}")
            return value
    _fail(path, line, names[0], f"missing (columns are {', '.join(row)}); expected one of {', '.join(names)}")


PROMPT_COLUMNS = ("num_prefill_tokens", "prompt_len", "input_len")
OUTPUT_COLUMNS = ("num_decode_tokens", "output_len")
TIME_COLUMNS = ("arrived_at", "arrival_time", "timestamp")


def _read_csv(path: str | Path) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise WorkloadError(f"{path}:1: empty file, expected a header line")
        rows = [(i + 2, row) for i, row in enumerate(reader)]
    for line, row in rows:
        if None in row or any(v is None for v in row.values()):
            raise WorkloadError(f"{path}:{line}: wrong number of fields for the header")
    if not rows:
        raise WorkloadError(f"{path}: no requests after the header")
    return rows


def load_lengths_csv(
    path: str | Path, rate: float, duration_s: float | None = None, seed: int = 0
) -> Workload:
    """A CSV of token counts (columns num_prefill_tokens,num_decode_tokens: Vidur's trace schema; or
    prompt_len,output_len). Rows are replayed in order with Poisson arrivals at `rate`."""
    rows = _read_csv(path)
    lens = [
        (_int_field(r, PROMPT_COLUMNS, path, ln), _int_field(r, OUTPUT_COLUMNS, path, ln)) for ln, r in rows
    ]
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=len(lens))
    times = np.cumsum(gaps) - gaps[0]
    requests = [
        Request(str(i), float(t), p, o)
        for i, ((p, o), t) in enumerate(zip(lens, times))
        if duration_s is None or t < duration_s
    ]
    return Workload(requests, dict(kind="lengths_csv", path=str(path), rate=rate, seed=seed))


def load_trace_csv(path: str | Path) -> Workload:
    """A CSV trace with timestamps: arrived_at (seconds), num_prefill_tokens, num_decode_tokens."""
    rows = _read_csv(path)
    requests = []
    for ln, row in rows:
        name = next((c for c in TIME_COLUMNS if c in row), None)
        if name is None:
            _fail(path, ln, TIME_COLUMNS[0], f"missing; expected one of {', '.join(TIME_COLUMNS)}")
        try:
            t = float(row[name])
        except ValueError:
            _fail(path, ln, name, f"expected seconds, got {row[name]!r}")
        if not math.isfinite(t) or t < 0:
            _fail(path, ln, name, f"expected seconds >= 0, got {row[name]!r}")
        requests.append(
            Request(
                str(len(requests)),
                t,
                _int_field(row, PROMPT_COLUMNS, path, ln),
                _int_field(row, OUTPUT_COLUMNS, path, ln),
            )
        )
    requests.sort(key=lambda r: r.arrival_time)
    return Workload(requests, dict(kind="trace_csv", path=str(path)))


def load_sharegpt_json(
    path: str | Path,
    tokenize: Callable[[str], list[int]],
    rate: float,
    num_requests: int | None = None,
    seed: int = 0,
) -> Workload:
    """vLLM's ShareGPT JSON (a list of {"conversations": [{"from", "value"}, ...]}): the first two turns
    of conversations with at least two, tokenized, kept under vLLM's filter, sampled with a seed.
    `tokenize` is e.g. a transformers tokenizer's `encode`."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: expected a JSON list of conversations")
    pairs = []
    for i, entry in enumerate(data):
        convs = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(convs, list):
            raise WorkloadError(f"{path}: entry {i}: field 'conversations': missing or not a list")
        if len(convs) < 2:
            continue
        turns = []
        for j in (0, 1):
            if not isinstance(convs[j], dict) or not isinstance(convs[j].get("value"), str):
                raise WorkloadError(
                    f"{path}: entry {i}: field 'conversations[{j}].value': missing or not text"
                )
            turns.append(convs[j]["value"])
        pairs.append((len(tokenize(turns[0])), len(tokenize(turns[1]))))
    if not pairs:
        raise WorkloadError(f"{path}: no conversation with at least two turns")
    lens = np.asarray(pairs)
    lens = lens[vllm_filter(lens[:, 0], lens[:, 1])]
    rng = np.random.default_rng(seed)
    rng.shuffle(lens)
    if num_requests is not None:
        lens = lens[:num_requests]
    gaps = rng.exponential(1.0 / rate, size=len(lens))
    times = np.cumsum(gaps) - gaps[0]
    requests = [Request(str(i), float(t), int(p), int(o)) for i, (t, (p, o)) in enumerate(zip(times, lens))]
    return Workload(requests, dict(kind="sharegpt_json", path=str(path), rate=rate, seed=seed))
