"""Workloads: which requests arrive when, with how many prompt and output tokens.

A `Workload` is a list of `Request`s with a fixed seed, saved as JSON lines so every system replays
exactly the same requests. Lengths come from the paper artifact's real ShareGPT pairs
(`sharegpt`, sampled exactly as the artifact's trace generator does: harness/datasets.py), from built-in
distributions derived from real traces (harness/data/length_tables.json, made by
scripts/derive_length_tables.py; docs/workloads.md) or from a user's own files; arrivals are the
artifact's Poisson process per 10 ms, or Poisson / gamma gaps (vLLM's burstiness), or a real trace's own
(the Azure LLM inference traces, BurstGPT), rescaled in time to any mean rate. Outputs ignore EOS:
each request generates exactly its trace's output length, as in vLLM's benchmarks and the paper.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

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

log = logging.getLogger(__name__)

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


def zipf_probabilities(k: int, exponent: float) -> np.ndarray:
    """P(i) for i in 0..k-1, proportional to (i + 1) ** -exponent (Zipf's law; exponent 0: uniform)."""
    if k < 1:
        raise WorkloadError(f"a Zipf choice needs at least one item, got {k}")
    if not (exponent >= 0 and math.isfinite(exponent)):
        raise WorkloadError(f"the Zipf exponent must be >= 0 (0: uniform, 1: Zipf's law), got {exponent}")
    p = np.arange(1, k + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def zipf_choice(num: int, k: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """num independent draws from 0..k-1 with zipf_probabilities(k, exponent)."""
    return rng.choice(k, size=num, p=zipf_probabilities(k, exponent))


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


# ---------------------------------------------------------------------- prefix reuse
# Workloads whose prompts share content, for the automatic prefix cache (system.enable_prefix_caching)
# and its eviction policies: shared system prompts, multi-turn conversations, and Mooncake traces below
# (docs/workloads.md, "Prefix reuse"). Their prompts are made of segments (Request.segments).
_SYSTEM_PROMPT_TAG = 0x53595350  # "SYSP": the system prompts' choices, apart from lengths and arrivals
_CONVERSATION_TAG = 0x434F4E56  # "CONV": one stream per conversation


def expand_system_prompt_lens(num_system_prompts: int, lens) -> list[int]:
    """The length of each of num_system_prompts system prompts: `lens` gives one length for all of them
    or one per prompt."""
    if type(num_system_prompts) is not int or num_system_prompts < 0:
        raise WorkloadError(f"num_system_prompts must be a whole number >= 0, got {num_system_prompts!r}")
    lens = list(lens)
    if any(type(n) is not int or n < 1 for n in lens):
        raise WorkloadError(f"system_prompt_lens must list whole numbers of tokens >= 1, got {lens}")
    if num_system_prompts == 0:
        return []
    if len(lens) == 1:
        return lens * num_system_prompts
    if len(lens) != num_system_prompts:
        raise WorkloadError(
            f"system_prompt_lens lists {len(lens)} lengths for {num_system_prompts} system prompts: give one "
            "length for all of them, or one per prompt"
        )
    return lens


def system_prompts(
    dataset: str = "sharegpt",
    rate: float = 1.0,
    duration_s: float = 3600.0,
    seed: int = 0,
    burstiness: float = 1.0,
    num_system_prompts: int = 16,
    system_prompt_lens: list[int] | tuple[int, ...] = (512,),
    system_prompt_zipf: float = 1.0,
    data_path: str | Path | None = None,
    arrivals: str = "default",
) -> Workload:
    """Requests of `dataset` (as synthetic(): lengths and arrivals), each prompt starting with one of
    `num_system_prompts` system prompts (lengths `system_prompt_lens`: one for all or one each), chosen
    independently by a Zipf law of exponent `system_prompt_zipf` (prompt i with probability proportional to
    (i + 1) ** -exponent; 0: uniform), from a stream of its own: request i picks the same prompt at
    every rate. Segments: the system prompt, shared, then the request's own tokens."""
    sys_lens = expand_system_prompt_lens(num_system_prompts, system_prompt_lens)
    if not sys_lens:
        raise WorkloadError("system_prompts needs num_system_prompts >= 1 (e.g. 16)")
    w = synthetic(dataset, rate, duration_s, seed, burstiness, data_path=data_path, arrivals=arrivals)
    rng = np.random.default_rng([seed, _SYSTEM_PROMPT_TAG])
    chosen = zipf_choice(len(w), len(sys_lens), system_prompt_zipf, rng)
    for r, k in zip(w.requests, chosen.tolist()):
        r.segments = [(f"sys{k}", sys_lens[k]), (f"r{r.request_id}", r.prompt_len)]
        r.prompt_len += sys_lens[k]
    w.meta.update(
        kind="system_prompts",
        num_system_prompts=num_system_prompts,
        system_prompt_lens=sys_lens,
        system_prompt_zipf=system_prompt_zipf,
    )
    return w


@lru_cache(maxsize=2)
def _conversation_table(path: str, mtime_ns: int, size: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    return tuple(conversation_turns(read_conversations(path)))


def conversation_turns(conversations: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(user message lengths, response lengths) of each conversation of a multi-turn statistics file (one
    row per turn, its prefill holding the history so far: harness.datasets.read_conversations). The
    first user message is the first prefill; a later one is what the history grew by besides the
    previous response, max(1, history_t - history_(t-1) - response_(t-1)) (2.4% of etalon's turns grow
    by less than the response: tokenization and templates; they get one token). Responses: at least 1."""
    out = []
    for conv in conversations:
        history = np.array([h for h, _ in conv], dtype=np.int64)
        responses = np.maximum(np.array([o for _, o in conv], dtype=np.int64), 1)
        users = history.copy()
        users[1:] = history[1:] - history[:-1] - responses[:-1]
        users = np.maximum(users, 1)
        for a in (users, responses):
            a.setflags(write=False)
        out.append((users, responses))
    return out


def _fitting_turns(users: np.ndarray, responses: np.ndarray, system_len: int, max_context_len: int) -> int:
    """How many leading turns fit: turn t's prompt (system prompt + the history + its message) plus its
    response within max_context_len. That total only grows from turn to turn."""
    totals = system_len + np.cumsum(users + responses)
    return int(np.searchsorted(totals, max_context_len, side="right"))


def multi_turn(
    rate: float = 1.0,
    duration_s: float = 3600.0,
    seed: int = 0,
    burstiness: float = 1.0,
    think_time_s: float = 30.0,
    response_time_per_token_s: float = 0.05,
    max_context_len: int = 2048,
    num_system_prompts: int = 0,
    system_prompt_lens: list[int] | tuple[int, ...] = (512,),
    system_prompt_zipf: float = 1.0,
    data_path: str | Path | None = None,
    arrivals: str = "default",
) -> Workload:
    """Multi-turn conversations whose every turn sends the whole history (docs/workloads.md,
    "Multi-turn conversations").

    Conversations are etalon's multi-turn ShareGPT statistics (found like chatbot's file), drawn uniformly
    with replacement; each keeps its real turns, user message and response lengths (conversation_turns)
    while turn t's prompt (system prompt + every earlier message and response + its message) plus its
    response fit in max_context_len (the model's positions); a conversation whose first turn does not fit
    is not drawn. Conversations start as a gamma process (shape `burstiness`; 1: Poisson) at rate /
    (the mean number of turns), so requests arrive at `rate` on average once conversations overlap.
    Turn t + 1 arrives response_time_per_token_s x turn t's output length (an estimate of its answer's
    time: arrivals are fixed before the run) plus an exponential think time of mean think_time_s after
    turn t's arrival; turns arriving after duration_s are cut. num_system_prompts > 0: each conversation
    starts with a system prompt chosen as in system_prompts(). Conversation c (in order of start) draws
    everything from its own stream (seed, c): the same conversation at every rate.

    Segments: the system prompt, then per earlier turn its user message and its response, then the new
    message; the history is the same tokens in every turn, so the prefix cache can find it. The responses
    in later prompts are the response's segment, not the tokens the server generated (synthetic in the
    simulator), so a turn finds the previous turn's prompt blocks but recomputes the previous response."""
    if arrivals not in ("default", "poisson"):
        raise WorkloadError(
            "multi_turn conversations arrive with gamma gaps: set arrivals=poisson (or default), "
            f"got arrivals={arrivals!r}"
        )
    if not (think_time_s >= 0 and math.isfinite(think_time_s)):
        raise WorkloadError(f"think_time_s must be seconds >= 0, got {think_time_s}")
    if not (response_time_per_token_s >= 0 and math.isfinite(response_time_per_token_s)):
        raise WorkloadError(
            f"response_time_per_token_s must be seconds >= 0, got {response_time_per_token_s}"
        )
    if type(max_context_len) is not int or max_context_len < 2:
        raise WorkloadError(f"max_context_len must be a whole number of tokens >= 2, got {max_context_len!r}")
    sys_lens = expand_system_prompt_lens(num_system_prompts, system_prompt_lens)
    path = find_data_file(ETALON_SHAREGPT, data_path)
    st = os.stat(path)
    convs = _conversation_table(str(path), st.st_mtime_ns, st.st_size)
    # Per system prompt length: each conversation's fitting turns, and the conversations that can start.
    fits, pools = {}, {}
    for length in sorted(set(sys_lens or [0])):
        fits[length] = np.array([_fitting_turns(u, o, length, max_context_len) for u, o in convs])
        pools[length] = np.flatnonzero(fits[length] > 0)
        if len(pools[length]) == 0:
            raise WorkloadError(
                f"{path}: no conversation's first turn fits max_context_len={max_context_len} tokens"
                + (f" after a system prompt of {length}" if length else "")
                + "; raise max_context_len or shorten system_prompt_lens"
            )
    k = len(sys_lens)
    p = zipf_probabilities(k, system_prompt_zipf) if k else np.ones(1)
    mean_turns = float(sum(pk * fits[length][pools[length]].mean() for pk, length in zip(p, sys_lens or [0])))
    starts = arrival_times(rate / mean_turns, duration_s, np.random.default_rng([seed, 1]), burstiness)
    turns = []  # (arrival, conversation, turn, segments, output length)
    for c, start in enumerate(starts.tolist()):
        g = np.random.default_rng([seed, _CONVERSATION_TAG, c])
        which = int(g.choice(k, p=p)) if k else -1
        length = sys_lens[which] if k else 0
        j = int(pools[length][g.integers(len(pools[length]))])
        users, responses = convs[j]
        n = int(fits[length][j])
        thinks = g.exponential(think_time_s, size=n - 1) if think_time_s > 0 else np.zeros(n - 1)
        history = [(f"sys{which}", length)] if k else []
        t = start
        for turn in range(n):
            if t >= duration_s:
                break
            segments = [*history, (f"c{c}u{turn}", int(users[turn]))]
            turns.append((t, c, turn, segments, int(responses[turn])))
            history = [*segments, (f"c{c}o{turn}", int(responses[turn]))]
            if turn + 1 < n:
                t += int(responses[turn]) * response_time_per_token_s + float(thinks[turn])
    turns.sort(key=lambda x: x[:3])
    requests = [
        Request(str(i), float(t), sum(m for _, m in segs), out, segments=segs)
        for i, (t, _, _, segs, out) in enumerate(turns)
    ]
    meta = dict(
        kind="multi_turn",
        dataset="sharegpt_multiturn",
        rate=rate,
        duration_s=duration_s,
        seed=seed,
        burstiness=burstiness,
        arrivals="poisson",
        think_time_s=think_time_s,
        response_time_per_token_s=response_time_per_token_s,
        max_context_len=max_context_len,
        mean_turns=mean_turns,
        conversation_rate=rate / mean_turns,
        num_conversations=len(starts),
        num_system_prompts=num_system_prompts,
        system_prompt_lens=sys_lens,
        system_prompt_zipf=system_prompt_zipf,
        **_data_meta(path),
        sampling="conversations drawn uniformly with replacement, turns while the context fits",
    )
    return Workload(requests, meta)


# ---------------------------------------------------------------------- a user's files
def _fail(path, line, field_name, problem) -> NoReturn:
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


def _csv_header(path: str | Path) -> list[str]:
    """A CSV's column names, from its first line (a leading byte-order mark and spaces dropped)."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise WorkloadError(f"{path}:1: empty file, expected a header line")
    return [h.strip() for h in header]


def _csv_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row by column name) of a CSV with a header line, one row at a time (a published
    trace has millions); blank lines are skipped, a row with the wrong number of fields fails."""
    header = _csv_header(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise WorkloadError(
                    f"{path}:{reader.line_num}: wrong number of fields for the header "
                    f"({len(row)}, the header has {len(header)})"
                )
            yield reader.line_num, dict(zip(header, row))


def _read_csv(path: str | Path) -> list[tuple[int, dict]]:
    rows = list(_csv_rows(path))
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


# ---------------------------------------------------------------------- timestamped traces
# kind=trace_csv reads three formats, told apart by the header (docs/workloads.md, "Timestamped traces"):
# pagelab's own (TIME_COLUMNS + PROMPT_COLUMNS + OUTPUT_COLUMNS, seconds), the Azure LLM inference traces
# 2023/2024 (date-times) and BurstGPT (seconds from the trace start; later releases add Session ID and
# Elapsed time columns, which are not read).
TRACE_FORMATS = ("auto", "pagelab", "azure", "burstgpt")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")
TRACE_HEADERS = {
    "pagelab": "arrived_at,num_prefill_tokens,num_decode_tokens",
    "azure": ",".join(AZURE_COLUMNS),
    "burstgpt": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
}


def detect_trace_format(path: str | Path, trace_format: str = "auto") -> str:
    """The format of a timestamped trace: the one its header has the columns of ("auto"), or the one
    named, checked against the header. Errors name the file, line 1, the column and the fix."""
    if trace_format not in TRACE_FORMATS:
        raise WorkloadError(
            f"unknown trace format {trace_format!r}: choose one of {', '.join(TRACE_FORMATS)}"
        )
    header = _csv_header(path)
    required = {
        "pagelab": next(((c,) for c in TIME_COLUMNS if c in header), (TIME_COLUMNS[0],)),
        "azure": AZURE_COLUMNS,
        "burstgpt": BURSTGPT_COLUMNS,
    }
    if trace_format == "auto":
        # BurstGPT first: its Timestamp must not be mistaken for a pagelab time column.
        for fmt in ("burstgpt", "azure", "pagelab"):
            if all(c in header for c in required[fmt]):
                return fmt
        known = "; ".join(f"{fmt}: {cols}" for fmt, cols in TRACE_HEADERS.items())
        raise WorkloadError(
            f"{path}:1: header {','.join(header)!r} is no timestamped trace format pagelab reads ({known}); "
            "rename the columns, or use kind=lengths_csv for a file without times"
        )
    missing = [c for c in required[trace_format] if c not in header]
    if missing:
        raise WorkloadError(
            f"{path}:1: field {missing[0]!r}: missing from the header {','.join(header)!r}, which "
            f"trace_format={trace_format} needs ({TRACE_HEADERS[trace_format]}); fix the header or use "
            "trace_format=auto"
        )
    return trace_format


def _seconds_field(row: dict, name: str, path, line) -> float:
    raw = row[name]
    try:
        t = float(raw)
    except ValueError:
        _fail(path, line, name, f"expected seconds, got {raw!r}")
    if not math.isfinite(t) or t < 0:
        _fail(path, line, name, f"expected seconds >= 0, got {raw!r}")
    return t


# Azure's timestamps: "2023-11-16 18:15:46.6805900", 7 fractional digits (100 ns ticks), more than
# Python's datetime keeps (and fromisoformat reads them only from 3.11); an offset is allowed.
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?")


@lru_cache(maxsize=1024)
def _day_number(date: str) -> int:
    return dt.date.fromisoformat(date).toordinal()


def _datetime_field(row: dict, name: str, path, line) -> tuple[int, float]:
    """A date-time as (whole seconds since 0001-01-01 UTC, fraction of a second), so that differences
    keep all 7 fractional digits. A time without an offset is taken as UTC."""
    raw = row[name].strip()
    m = _DATETIME.fullmatch(raw)
    if m:
        date, hh, mm, ss, frac, tz = m.groups()
        try:
            day = _day_number(date)
        except ValueError:
            day = None
        h, mi, s = int(hh), int(mm), int(ss)
        if day is not None and h < 24 and mi < 60 and s < 60:
            offset = 0
            if tz and tz != "Z":
                digits = tz[1:].replace(":", "")
                offset = (-1 if tz[0] == "-" else 1) * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
            return day * 86400 + h * 3600 + mi * 60 + s - offset, float(f"0.{frac}") if frac else 0.0
    _fail(path, line, name, f"expected a date-time like 2023-11-16 18:15:46.6805900, got {raw!r}")


@lru_cache(maxsize=4)
def _parsed_trace(path: str, mtime_ns: int, size: int, fmt: str, model: str | None) -> tuple:
    """A trace's kept rows in file order: (arrival times in s, prompt lengths, output lengths) as read-only
    arrays, and counts of the rows skipped. Cached while the file is unchanged (a sweep builds every
    point's trace from it). pagelab's times are kept as written; the published formats' are made
    relative to their earliest kept request."""
    # Packed arrays, not lists: the 2024 Azure traces have tens of millions of rows. Azure's seconds are
    # whole (int64), its fractions apart; the other formats' seconds are floats.
    seconds = array("q" if fmt == "azure" else "d")
    fractions, prompts, outputs = array("d"), array("q"), array("q")
    num_rows = num_failed = num_other_model = 0
    models: dict[str, int] = {}
    for ln, row in _csv_rows(path):
        num_rows += 1
        if fmt == "pagelab":
            name = next(c for c in TIME_COLUMNS if c in row)
            seconds.append(_seconds_field(row, name, path, ln))
            prompts.append(_int_field(row, PROMPT_COLUMNS, path, ln))
            outputs.append(_int_field(row, OUTPUT_COLUMNS, path, ln))
            continue
        if fmt == "burstgpt":
            row_model = row["Model"].strip()
            models[row_model] = models.get(row_model, 0) + 1
            if model is not None and row_model.lower() != model.lower():
                num_other_model += 1
                continue
            t, frac = _seconds_field(row, "Timestamp", path, ln), 0.0
            p = _int_field(row, ("Request tokens",), path, ln)
            o = _int_field(row, ("Response tokens",), path, ln)
        else:
            t, frac = _datetime_field(row, "TIMESTAMP", path, ln)
            p = _int_field(row, ("ContextTokens",), path, ln)
            o = _int_field(row, ("GeneratedTokens",), path, ln)
        if o == 0:  # a failed request (BurstGPT's Response tokens 0); a request generates >= 1 token
            num_failed += 1
            continue
        seconds.append(t)
        fractions.append(frac)
        prompts.append(p)
        outputs.append(o)
    if model is not None and num_rows and num_other_model == num_rows:
        seen = ", ".join(f"{name} ({count})" for name, count in sorted(models.items()))
        raise WorkloadError(
            f"{path}: no row has Model {model!r} (the file's models: {seen}); fix workload.trace_model"
        )
    if not seconds:
        failed = f" ({num_failed} skipped: no output tokens)" if num_failed else ""
        raise WorkloadError(f"{path}: no requests after the header{failed}")
    if fmt == "azure":  # whole seconds first, then the fractions: no precision lost to the epoch
        whole = np.frombuffer(seconds, dtype=np.int64)
        times = (whole - whole.min()).astype(np.float64) + np.frombuffer(fractions, dtype=np.float64)
    else:
        times = np.array(seconds, dtype=np.float64)
    if fmt != "pagelab":
        times -= times.min()
    if num_failed or num_other_model:
        output_column = {"azure": "GeneratedTokens", "burstgpt": "Response tokens"}[fmt]
        parts = [f"{num_failed} failed ({output_column} 0)"] if num_failed else []
        if num_other_model:
            parts.append(f"{num_other_model} of models other than {model}")
        log.info(
            "%s: skipped %d of %d rows: %s", path, num_failed + num_other_model, num_rows, ", ".join(parts)
        )
    arrays = (times, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    counts = dict(num_trace_rows=num_rows, num_skipped_failed=num_failed, num_skipped_model=num_other_model)
    return (*arrays, counts)


def mean_rate(times) -> float:
    """Mean arrival rate in requests/s (docs/metrics.md, `actual_request_rate`): (N - 1) / (last arrival
    - first arrival), one over the mean gap between consecutive arrivals. NaN for fewer than two
    arrivals, infinite when they all arrive at once."""
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        return float("nan")
    span = float(t.max() - t.min())
    return (len(t) - 1) / span if span > 0 else float("inf")


def rescale_times(times, rate: float) -> np.ndarray:
    """Arrival times multiplied by (their mean rate / rate), so that their mean rate is `rate`: the
    order, the bursts and every ratio between gaps are kept."""
    if rate <= 0 or not math.isfinite(rate):
        raise WorkloadError(f"request rate must be a positive number of requests/s, got {rate}")
    t = np.asarray(times, dtype=np.float64)
    own = mean_rate(t)
    if not (own > 0 and math.isfinite(own)):
        raise WorkloadError(
            f"cannot rescale {len(t)} arrival(s) to {rate:g} req/s: their mean rate is undefined (it needs "
            "two arrivals at different times); keep the trace's own times (rescale=false)"
        )
    return t * (own / rate)


def load_trace_csv(
    path: str | Path,
    rate: float | None = None,
    duration_s: float | None = None,
    trace_format: str = "auto",
    model: str | None = None,
) -> Workload:
    """A timestamped trace (docs/workloads.md, "Timestamped traces"), in arrival order: pagelab's own CSV
    (arrived_at,num_prefill_tokens,num_decode_tokens; seconds), the Azure LLM inference trace
    (TIMESTAMP,ContextTokens,GeneratedTokens; date-times) or BurstGPT (Timestamp,Model,Request tokens,
    Response tokens,...; seconds), told apart by the header unless `trace_format` names one.

    rate: None keeps the trace's own times; a rate rescales them to that mean rate (rescale_times).
    duration_s: None keeps every request; else those arriving before it (after rescaling).
    model: BurstGPT only, keep the rows of this Model (e.g. ChatGPT, GPT-4; any case).
    Rows with no output tokens (BurstGPT's failed requests) are skipped and counted in the log and meta.
    A request's id is its row's index among the kept rows, in file order."""
    fmt = detect_trace_format(path, trace_format)
    if model is not None and fmt != "burstgpt":
        raise WorkloadError(
            f"{path}: a model filter (trace_model={model}) applies to BurstGPT's Model column, but this file "
            f"is in the {fmt} format; unset trace_model"
        )
    st = os.stat(path)
    times, prompts, outputs, counts = _parsed_trace(str(path), st.st_mtime_ns, st.st_size, fmt, model)
    order = np.argsort(times, kind="stable")
    own = mean_rate(times)
    scaled = times[order] if rate is None else rescale_times(times[order], rate)
    num = len(scaled) if duration_s is None else int(np.searchsorted(scaled, duration_s, side="left"))
    if num == 0:
        raise WorkloadError(
            f"{path}: no request arrives before duration_s={duration_s:g} (the first at {scaled[0]:.3f} s); "
            "raise duration_s"
        )
    if duration_s is not None and num == len(scaled):
        log.info(
            "%s: the trace ends at %.1f s, before duration_s=%g: all %d requests are replayed and the run "
            "ends with them (the trace is not looped)",
            path,
            scaled[-1],
            duration_s,
            num,
        )
    requests = [
        Request(str(i), float(t), int(prompts[i]), int(outputs[i])) for i, t in zip(order[:num], scaled[:num])
    ]
    meta = dict(
        kind="trace_csv",
        path=str(path),
        format=fmt,
        model=model,
        rate=rate,
        rescaled=rate is not None,
        time_scale=1.0 if rate is None else own / rate,
        trace_mean_rate=own,
        trace_span_s=float(scaled[-1] - scaled[0]),
        duration_s=duration_s,
        **counts,
        **_data_meta(Path(path)),
    )
    return Workload(requests, meta)


def load_azure_csv(path: str | Path, rate: float | None = None, duration_s: float | None = None) -> Workload:
    """The Azure LLM inference trace (TIMESTAMP,ContextTokens,GeneratedTokens): load_trace_csv."""
    return load_trace_csv(path, rate, duration_s, "azure")


def load_burstgpt_csv(
    path: str | Path, rate: float | None = None, duration_s: float | None = None, model: str | None = None
) -> Workload:
    """BurstGPT (Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type): load_trace_csv."""
    return load_trace_csv(path, rate, duration_s, "burstgpt", model)


def trace_workload(
    path: str | Path,
    rate: float,
    duration_s: float,
    trace_format: str = "auto",
    rescale: bool | None = None,
    model: str | None = None,
) -> Workload:
    """An experiment's kind=trace_csv point: the trace at the sweep's `rate`, cut to `duration_s`.

    rescale None: by format, true for the published formats (azure, burstgpt), false for pagelab's own,
    which replays as it did before rescaling existed (its own times, the whole trace, the rate unused).
    True: the arrival times rescaled to mean rate `rate`, then cut to duration_s. False: the trace's own
    times, cut to duration_s (pagelab's own format: not cut)."""
    fmt = detect_trace_format(path, trace_format)
    if rescale is None:
        rescale = fmt != "pagelab"
    cut = duration_s if rescale or fmt != "pagelab" else None
    return load_trace_csv(path, rate if rescale else None, cut, fmt, model)


# ---------------------------------------------------------------------- Mooncake traces
# kvcache-ai/Mooncake's traces (FAST25-release/traces/*.jsonl): one JSON object per line, `timestamp` in
# ms since the trace's start, `input_length` and `output_length` in tokens, `hash_ids` one id per
# 512-token block of the prompt (the last may be partial), equal ids meaning equal blocks.
MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
MOONCAKE_EXAMPLE = (
    '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}'
)


def _json_tokens(obj: dict, name: str, path, line) -> int:
    raw = obj[name]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw) or raw < 0:
        _fail(path, line, name, f"expected a whole number of tokens >= 0, got {raw!r}")
    return int(raw)


@lru_cache(maxsize=4)
def _parsed_mooncake(path: str, mtime_ns: int, size: int, block_tokens: int) -> tuple:
    """A Mooncake trace's kept lines in file order: (times in s after the earliest, prompt lengths,
    output lengths, hash ids per line) and counts of the lines read and skipped (no output tokens).
    Cached while the file is unchanged."""
    times, prompts, outputs, hash_ids = [], [], [], []
    num_rows = num_failed = 0
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            num_rows += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(
                    f"{path}:{ln}: not valid JSON ({e.msg}); a Mooncake trace has one request per line, "
                    f"e.g. {MOONCAKE_EXAMPLE}"
                ) from None
            if not isinstance(obj, dict):
                raise WorkloadError(f"{path}:{ln}: expected a JSON object like {MOONCAKE_EXAMPLE}")
            for name in MOONCAKE_FIELDS:
                if name not in obj:
                    _fail(
                        path,
                        ln,
                        name,
                        f"missing (the line has {', '.join(obj) or 'no fields'}); each line needs "
                        f"{', '.join(MOONCAKE_FIELDS)}, e.g. {MOONCAKE_EXAMPLE}",
                    )
            t = obj["timestamp"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t >= 0):
                _fail(path, ln, "timestamp", f"expected milliseconds >= 0, got {t!r}")
            prompt = _json_tokens(obj, "input_length", path, ln)
            output = _json_tokens(obj, "output_length", path, ln)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in ids):
                _fail(path, ln, "hash_ids", f"expected a list of integer block ids, got {str(ids)[:80]}")
            full, partial = divmod(prompt, block_tokens)
            if len(ids) not in (full, full + (partial > 0)):
                expected = f"{full + 1} (or {full})" if partial else str(full)
                _fail(
                    path,
                    ln,
                    "hash_ids",
                    f"{len(ids)} block ids for input_length {prompt}, expected {expected}: one per "
                    f"{block_tokens}-token block, the last may be partial; fix the line, or the block size "
                    "the trace was hashed with (block_tokens)",
                )
            if output == 0:  # as trace_csv: a request generates at least one token
                num_failed += 1
                continue
            times.append(t / 1000)
            prompts.append(prompt)
            outputs.append(output)
            hash_ids.append(tuple(ids))
    if not times:
        failed = f" ({num_failed} skipped: no output tokens)" if num_failed else ""
        raise WorkloadError(
            f"{path}: no requests in the file{failed}; expected lines like {MOONCAKE_EXAMPLE}"
        )
    if num_failed:
        log.info("%s: skipped %d of %d lines: output_length 0", path, num_failed, num_rows)
    t = np.array(times, dtype=np.float64)
    t -= t.min()
    arrays = (t, np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64))
    for a in arrays:
        a.setflags(write=False)
    counts = dict(num_trace_rows=num_rows, num_skipped_failed=num_failed)
    return (*arrays, tuple(hash_ids), counts)


def mooncake_segments(
    hash_ids: tuple[int, ...], prompt_len: int, request_id: str, block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> list[tuple[str | int, int]]:
    """A Mooncake request's prompt as segments: block j is segment hash_ids[j] (integer ids), the last
    one possibly partial (the first tokens of that segment); a partial block without an id (the trace
    gives input_length // 512 ids) is the request's own segment."""
    segments: list[tuple[str | int, int]] = [
        (h, min(block_tokens, prompt_len - j * block_tokens)) for j, h in enumerate(hash_ids)
    ]
    rest = prompt_len - len(hash_ids) * block_tokens
    if rest > 0:
        segments.append((f"r{request_id}.tail", rest))
    return segments


def load_mooncake(
    path: str | Path,
    rate: float | None = None,
    duration_s: float | None = None,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
) -> Workload:
    """A Mooncake trace (JSON lines of timestamp in ms, input_length, output_length, hash_ids), in
    arrival order, with each prompt's blocks as segments (mooncake_segments): requests naming the same
    hash ids share those tokens, so the prefix cache sees the trace's reuse.

    rate: None keeps the trace's own times (ms / 1000, after the earliest); a rate rescales them to that
    mean rate (rescale_times). duration_s: None keeps every request; else those arriving before it.
    Lines with output_length 0 are skipped and counted, as trace_csv's. A request's id is its line's
    index among the kept lines, in file order."""
    if not Path(path).is_file():
        raise WorkloadError(f"{path}: no such file")
    st = os.stat(path)
    times, prompts, outputs, hash_ids, counts = _parsed_mooncake(
        str(path), st.st_mtime_ns, st.st_size, block_tokens
    )
    order = np.argsort(times, kind="stable")
    own = mean_rate(times)
    scaled = times[order] if rate is None else rescale_times(times[order], rate)
    num = len(scaled) if duration_s is None else int(np.searchsorted(scaled, duration_s, side="left"))
    if num == 0:
        raise WorkloadError(
            f"{path}: no request arrives before duration_s={duration_s:g} (the first at {scaled[0]:.3f} s); "
            "raise duration_s"
        )
    requests = []
    for i, t in zip(order[:num].tolist(), scaled[:num].tolist()):
        p = int(prompts[i])
        segments = mooncake_segments(hash_ids[i], p, str(i), block_tokens)
        requests.append(Request(str(i), t, p, int(outputs[i]), segments=segments))
    meta = dict(
        kind="mooncake",
        path=str(path),
        rate=rate,
        rescaled=rate is not None,
        time_scale=1.0 if rate is None else own / rate,
        trace_mean_rate=own,
        trace_span_s=float(scaled[-1] - scaled[0]),
        duration_s=duration_s,
        block_tokens=block_tokens,
        **counts,
        **_data_meta(Path(path)),
    )
    return Workload(requests, meta)


def mooncake_workload(
    path: str | Path, rate: float, duration_s: float, rescale: bool | None = None
) -> Workload:
    """An experiment's kind=mooncake point: rescale true (or null, the default) rescales the trace to
    the sweep's `rate`; false keeps its own times (the rate unused). Then cut to duration_s."""
    return load_mooncake(path, rate if rescale is None or rescale else None, duration_s)


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
