"""Per-request decoding parameters, shaped like vLLM's `SamplingParams` so users' scripts carry over."""

from __future__ import annotations

from dataclasses import dataclass

MAX_LOGPROBS = 20  # vLLM's default bound (its `max_logprobs`), and OpenAI's for chat's top_logprobs


@dataclass
class SamplingParams:
    """How one request decodes.

    With `use_beam_search`, `n` is the beam width (vLLM v0's semantics) and decoding is deterministic
    (transformers' beam search, paged/beam_search.py): temperature is not used, and top_p / top_k
    must stay off. The scheduler reads only `n`, `max_tokens`, `ignore_eos` and `use_beam_search`;
    the other fields are for the sampler. `logprobs` as vLLM's: the log-probabilities (of the model's
    own distribution, before temperature, top-k and top-p) of each sampled token and of the `logprobs`
    most likely tokens at its position.
    """

    max_tokens: int = 16
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    use_beam_search: bool = False
    length_penalty: float = 1.0  # beam search: hypotheses rank by logprob / length ** length_penalty
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: none kept; k: each output token's log-probability and the top k

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.n < 1:
            raise ValueError(f"n (samples, or beam width with beam search) must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        if self.use_beam_search and (self.top_p < 1.0 or self.top_k != -1):
            raise ValueError("beam search is deterministic: leave top_p at 1 and top_k at -1")
