"""Workloads whose prompts share content, for the automatic prefix cache (system.enable_prefix_caching)
and its eviction policies (docs/workloads.md, "Prefix reuse"): shared system prompts (system_prompts)
and multi-turn conversations that resend their history (multi_turn), with the Zipf choice of a system
prompt. Their prompts are made of segments (Request.segments, harness/workload.py); Mooncake traces, the
third kind, are read with the other traces in harness/traces.py.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.datasets import ETALON_SHAREGPT, WorkloadError, find_data_file, read_conversations
from harness.workload import Request, Workload, arrival_times, data_meta, synthetic


# ---------------------------------------------------------------------- Zipf choices
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


# ---------------------------------------------------------------------- system prompts, conversations
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
        **data_meta(path),
        sampling="conversations drawn uniformly with replacement, turns while the context fits",
    )
    return Workload(requests, meta)
