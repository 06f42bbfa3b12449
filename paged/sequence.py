"""Requests as the scheduler sees them: sequences, sequence groups, their status and timestamps.

A `SequenceGroup` is one request: its prompt and the `n` sequences decoded from it (parallel samples or
beams, paper section 4.4). The scheduler admits, budgets and preempts whole groups, because the
sequences of a group share blocks (section 4.5, "all-or-nothing").
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from paged.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED_STOPPED = "finished_stopped"  # sampled EOS
    FINISHED_LENGTH_CAPPED = "finished_length_capped"  # reached max_tokens or max_model_len
    FINISHED_ABORTED = "finished_aborted"  # a beam that lost to better ones, or its client went away
    FINISHED_REJECTED = "finished_rejected"  # could never run: see SequenceGroup.reject_reason


FINISHED = frozenset(s for s in SequenceStatus if s.value.startswith("finished"))
_RUNNING, _WAITING, _SWAPPED = SequenceStatus.RUNNING, SequenceStatus.WAITING, SequenceStatus.SWAPPED

_seq_ids = itertools.count()


def next_seq_id() -> int:
    return next(_seq_ids)


class Sequence:
    """One token sequence: prompt plus generated tokens, and how many of them have KV in the cache.

    `num_computed_tokens` counts the leading tokens whose keys and values are stored. After each step it
    is `len(seq) - 1`: the newest sampled token gets its slot (append_slot) and its KV in the next step.
    """

    __slots__ = (
        "seq_id",
        "token_ids",
        "num_prompt_tokens",
        "status",
        "num_computed_tokens",
        "cumulative_logprob",
        "token_times",
        "output_logprobs",
    )

    def __init__(self, seq_id: int, prompt_token_ids: list[int]) -> None:
        self.seq_id = seq_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.cumulative_logprob = 0.0
        self.token_times: list[float] = []  # when each output token was produced
        # With SamplingParams.logprobs: per output token, {token id: logprob} of the sampled token and
        # the most likely ones (the sampler's Sample.top); else None.
        self.output_logprobs: list[dict[int, float]] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, len={len(self.token_ids)}, "
            f"computed={self.num_computed_tokens}, {self.status.value})"
        )

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def append_token(self, token_id: int, logprob: float, now: float, top: dict | None = None) -> None:
        if top is not None:  # before the token: a reader on another thread that sees it sees this
            if self.output_logprobs is None:
                self.output_logprobs = []
            self.output_logprobs.append(top)
        self.token_ids.append(token_id)
        self.cumulative_logprob += logprob
        self.token_times.append(now)

    def fork(self, seq_id: int) -> Sequence:
        """A copy under a new id (beam search): same tokens, same computed KV, same timestamps."""
        child = Sequence(seq_id, [])
        child.token_ids = list(self.token_ids)
        child.num_prompt_tokens = self.num_prompt_tokens
        child.status = self.status
        child.num_computed_tokens = self.num_computed_tokens
        child.cumulative_logprob = self.cumulative_logprob
        child.token_times = list(self.token_times)
        if self.output_logprobs is not None:
            child.output_logprobs = list(self.output_logprobs)
        return child


@dataclass(eq=False)
class SharedPrefix:
    """A prefix that many requests start with (a system prompt, few-shot examples; paper section 4.4).

    Its blocks are computed once, by the first request that uses it, and then mapped into the block
    table of every later request; each of those copies only the prefix's partial last block
    (copy-on-write), and its prompt phase computes only its own tokens. The prefix holds one reference
    on each of its blocks while it is resident, so they are never freed under it.
    """

    prefix_id: str
    token_ids: list[int]
    block_ids: list[int] | None = None  # device blocks, once a request has allocated them
    computed: bool = False  # True once the prefill that writes them has run

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class RequestMetrics:
    """Per-request timestamps (seconds on the engine clock), from which docs/metrics.md defines
    every reported metric."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    preemption_times: list[float] = field(default_factory=list)
    num_swaps: int = 0  # how many of the preemptions swapped rather than recomputed


class SequenceGroup:
    """One request: a prompt, its `n` sequences (samples or beams), and its metrics."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        arrival_time: float = 0.0,
        prefix: SharedPrefix | None = None,
        eos_token_id: int | None = None,
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        # Lower is served first under SchedulerConfig.policy="priority" (vLLM's convention); ignored
        # under fcfs.
        self.priority = priority
        # Prompt blocks found in the prefix cache when it joined the queue (policy "cache_aware").
        self.cached_prefix_blocks: int | None = None
        self.sampling_params = sampling_params
        self.prefix = prefix
        self.eos_token_id = eos_token_id
        self.arrival_time = arrival_time
        self.metrics = RequestMetrics(arrival_time=arrival_time)
        self.reject_reason: str | None = None
        # vLLM v0 creates all n sequences up front: they share the prompt's blocks from allocation on
        # (reference count n), and the first write into the shared last block copies it.
        self.seqs: list[Sequence] = [
            Sequence(next_seq_id(), prompt_token_ids) for _ in range(sampling_params.n)
        ]
        self.num_prompt_tokens = len(prompt_token_ids)

    def __repr__(self) -> str:
        return f"SequenceGroup({self.request_id!r}, n={len(self.seqs)}, arrival={self.arrival_time})"

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.seqs[0].prompt_token_ids

    def get_seqs(self, status: SequenceStatus | None = None) -> list[Sequence]:
        if status is None:
            return self.seqs
        return [s for s in self.seqs if s.status is status]

    @property
    def max_num_running_seqs(self) -> int:
        """Sequences this group runs per step: what it charges against max_num_seqs."""
        n = 0
        for s in self.seqs:  # identity tests: an Enum's hash is slow Python code, and this is hot
            st = s.status
            if st is _RUNNING or st is _WAITING or st is _SWAPPED:
                n += 1
        return n

    @property
    def max_seq_len(self) -> int:
        """The longest a sequence of this request can become: prompt plus max_tokens."""
        return self.num_prompt_tokens + self.sampling_params.max_tokens
