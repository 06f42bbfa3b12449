"""Workloads: which requests arrive when, with how many prompt and output tokens.

A `Workload` is a list of `Request`s with a fixed seed, saved as JSON lines so every system replays
exactly the same requests. This module holds those types, content-addressed prompt tokens (segments),
arrivals, and the built-in generators (synthetic, shared_prefix, chatbot). Lengths come from the paper
artifact's real ShareGPT pairs (`sharegpt`, sampled exactly as the artifact's trace generator does:
harness/datasets.py) or from built-in distributions derived from real traces
(harness/data/length_tables.json, made by scripts/derive_length_tables.py; docs/workloads.md); arrivals
are the artifact's Poisson process per 10 ms, or Poisson / gamma gaps (vLLM's burstiness). Outputs ignore
EOS: each request generates exactly its trace's output length, as in vLLM's benchmarks and the paper.

Built on this module, which imports neither: harness/traces.py (a user's files and real traces: Azure,
BurstGPT, Mooncake) and harness/prefix_workloads.py (shared system prompts, multi-turn conversations).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
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

__all__ = ["WorkloadError"]  # defined in harness.datasets, raised by every workload module

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
    priority: int = 0  # lower first under the priority scheduling policy
    # What the prompt's tokens (after the shared prefix, if any) are made of: (segment id, length)
    # pairs, concatenated; a segment's tokens depend only on the seed and its id, so requests naming
    # the same segment share its tokens and the automatic prefix cache finds them (segment_tokens;
    # docs/workloads.md, "Content-addressed prompts"). None: random tokens of the request's own.
    segments: list[tuple[str | int, int]] | None = None


@dataclass
class Workload:
    requests: list[Request]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    def mean_rate(self) -> float:
        """The requests' mean arrival rate, requests/s (mean_rate: (N - 1) / span of arrival times)."""
        return mean_rate([r.arrival_time for r in self.requests])

    def save(self, path: str | Path) -> None:
        """JSON lines: a header line with the metadata, then one request per line (atomic write).
        A request without segments is written without the key, as before segments existed."""
        with atomic_open(path) as f:
            f.write(json.dumps({"meta": self.meta}) + "\n")
            for r in self.requests:
                obj = asdict(r)
                if obj["segments"] is None:
                    del obj["segments"]
                f.write(json.dumps(obj) + "\n")

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
                    r = Request(**obj)
                except TypeError as e:
                    raise WorkloadError(f"{path}:{lineno}: not a request ({e})") from None
                if r.segments is not None:  # JSON's lists back to (id, length) tuples
                    if not isinstance(r.segments, list) or not all(
                        isinstance(x, list) and len(x) == 2 for x in r.segments
                    ):
                        raise WorkloadError(
                            f"{path}:{lineno}: field 'segments': expected a list of [segment id, length] "
                            f"pairs, got {r.segments!r}"
                        )
                    r.segments = [(sid, n) for sid, n in r.segments]
                    check_segments(r, f"{path}:{lineno}")
                requests.append(r)
        return cls(requests, meta)

    def to_sequence_groups(self, seed: int = 0, vocab_size: int = 50_000) -> list[SequenceGroup]:
        """Requests as engine input, with synthetic prompt token ids (only lengths matter to the
        simulator; prompts sharing a prefix share its tokens, so prefix sharing and caching see it).
        A request with segments gets its segments' tokens (segment_tokens) and draws nothing from the
        random stream of the others, so workloads without segments keep their tokens."""
        rng = np.random.default_rng(seed)
        segments = SegmentTokens(seed, vocab_size)
        prefixes: dict[str, SharedPrefix] = {}
        groups = []
        for r in self.requests:
            if r.segments is None:
                own = rng.integers(1, vocab_size, size=r.prompt_len - r.prefix_len).tolist()
            else:
                check_segments(r, f"request {r.request_id}")
                own = segments.prompt(r.segments)
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
            groups.append(
                SequenceGroup(r.request_id, own, params, r.arrival_time, prefix=prefix, priority=r.priority)
            )
        return groups


# ---------------------------------------------------------------------- content-addressed prompts
SEGMENT_CHUNK = 512  # a segment's tokens are drawn in chunks of this many, each from its own stream
_SEGMENT_TAG = 0x5345474D  # "SEGM": segment streams apart from every other stream of the seed


def _segment_key(segment_id: str | int) -> int:
    """A stable 64-bit key of a segment id (Python's hash of a str changes between processes); an int
    id and the str of its digits are different segments."""
    kind = "i" if isinstance(segment_id, int) else "s"
    digest = hashlib.blake2b(f"{kind}:{segment_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def segment_tokens(segment_id: str | int, length: int, seed: int = 0, vocab_size: int = 50_000) -> np.ndarray:
    """The first `length` tokens of segment `segment_id`: ids in [1, vocab_size), drawn in chunks of
    SEGMENT_CHUNK from generators seeded by (seed, the id, the chunk's index), so a segment's tokens
    depend on nothing else, and a shorter use of an id is a prefix of a longer one."""
    key = _segment_key(segment_id)
    chunks = [
        np.random.default_rng([seed, _SEGMENT_TAG, key, j]).integers(1, vocab_size, SEGMENT_CHUNK)
        for j in range(-(-length // SEGMENT_CHUNK))
    ]
    return np.concatenate(chunks)[:length] if chunks else np.zeros(0, dtype=np.int64)


class SegmentTokens:
    """segment_tokens with each segment's longest use kept, for a workload whose requests name the same
    segments many times (a conversation's history, a system prompt, a trace's shared blocks)."""

    def __init__(self, seed: int = 0, vocab_size: int = 50_000) -> None:
        self.seed, self.vocab_size = seed, vocab_size
        self.cache: dict[tuple[type, str | int], np.ndarray] = {}

    def get(self, segment_id: str | int, length: int) -> np.ndarray:
        key = (type(segment_id), segment_id)
        tokens = self.cache.get(key)
        if tokens is None or len(tokens) < length:
            tokens = self.cache[key] = segment_tokens(segment_id, length, self.seed, self.vocab_size)
        return tokens[:length]

    def prompt(self, segments: list[tuple[str | int, int]]) -> list[int]:
        """The concatenation of the segments' tokens."""
        if not segments:
            return []
        return np.concatenate([self.get(sid, n) for sid, n in segments]).tolist()


def check_segments(r: Request, where: str) -> None:
    """A request's segments are (str or int id, length >= 1) pairs whose lengths add up to its own
    tokens, prompt_len - prefix_len; else one WorkloadError naming `where`."""
    for sid, n in r.segments:
        if isinstance(sid, bool) or not isinstance(sid, (str, int)):
            raise WorkloadError(f"{where}: field 'segments': a segment id is text or an integer, got {sid!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise WorkloadError(
                f"{where}: field 'segments': segment {sid!r} has length {n!r}, expected a whole number >= 1"
            )
    total = sum(n for _, n in r.segments)
    if total != r.prompt_len - r.prefix_len:
        raise WorkloadError(
            f"{where}: field 'segments': the lengths add up to {total} tokens, but prompt_len - prefix_len "
            f"is {r.prompt_len - r.prefix_len}; make them equal"
        )


# ---------------------------------------------------------------------- arrivals
def assign_priorities(workload: Workload, classes: list[int], shares: list[float], seed: int) -> Workload:
    """Each request's priority class, drawn independently with probabilities `shares` from a generator
    of its own (the lengths and arrivals are unchanged, and request i gets the same class at every
    rate: a rate's trace stretches the same requests). No classes: every request keeps priority 0."""
    if not classes:
        return workload
    rng = np.random.default_rng([seed, 0x5052494F])  # "PRIO": apart from the lengths' stream
    drawn = rng.choice(len(classes), size=len(workload.requests), p=np.asarray(shares) / sum(shares))
    requests = [replace(r, priority=int(classes[k])) for r, k in zip(workload.requests, drawn)]
    meta = dict(workload.meta, priority_classes=list(classes), priority_shares=list(shares))
    return Workload(requests, meta)


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


def mean_rate(times) -> float:
    """Mean arrival rate in requests/s (docs/metrics.md, `actual_request_rate`): (N - 1) / (last arrival
    - first arrival), one over the mean gap between consecutive arrivals. NaN for fewer than two
    arrivals, infinite when they all arrive at once."""
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        return float("nan")
    span = float(t.max() - t.min())
    return (len(t) - 1) / span if span > 0 else float("inf")


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


def data_meta(path: Path) -> dict:
    """The workload's data file and its SHA-256, for its meta (which file made these requests)."""
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
            data_meta(path), sampling="artifact: prompt + output < 2048, first N in file order, shuffled"
        )
    else:
        if data_path is not None:
            raise WorkloadError(f"dataset {dataset!r} is a built-in table; data_path applies to sharegpt")
        prompts, outputs = sample_lengths(dataset, len(times), np.random.default_rng([seed, 2]))
        meta.update(data_meta(TABLES_FILE), sampling=f"independent draws from table {TABLE_KEY[dataset]!r}")
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
        **data_meta(path),
        sampling="artifact: conversations in file order, shuffled; history cut to 1024, output to 1016",
    )
    return Workload(requests, meta)
