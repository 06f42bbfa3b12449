"""Configuration of the KV cache and the scheduler: plain, validated dataclasses.

These are the only objects passed down into `paged/` (nano-vllm's one-config rule). Hydra's structured
configs in `harness/` build them; nothing here imports Hydra. Defaults are those of vLLM at the time of
the paper (../shared/paper.md, "Systems compared"): block size 16, 1% watermark, 2560 batched tokens,
256 sequences, OPT's 2048-token context.
"""

from __future__ import annotations

from dataclasses import dataclass

from paged.policy import POLICIES
from paged.prefix_cache import EVICTION_POLICIES

PREEMPTION_MODES = ("auto", "recompute", "swap", "cost")
STEP_COMPOSITIONS = ("separate", "mixed")
BATCHING = ("iteration", "request")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class CacheConfig:
    """The paged KV cache: how many blocks of how many token slots, on the device and on the host."""

    num_gpu_blocks: int
    block_size: int = 16
    num_cpu_blocks: int = 0
    # Admission keeps this fraction of device blocks free, so that a freshly admitted prompt does not
    # force a preemption on the very next decode step (vLLM v0's 1% watermark).
    watermark: float = 0.01
    # Automatic prefix caching: full blocks are found again by a chained hash of their tokens.
    enable_prefix_caching: bool = False
    # Which unreferenced cached block is evicted first: lru | lfu | radix (paged/prefix_cache.py)
    prefix_eviction: str = "lru"
    # Host blocks that keep evicted cached blocks, numbered after the swap space's (paged/host_tier.py);
    # 0: none. Needs enable_prefix_caching.
    num_host_cache_blocks: int = 0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.block_size, int) and self.block_size >= 1,
            f"block_size must be a positive integer number of token slots, got {self.block_size!r}; "
            "the paper uses 16 and sweeps 1 to 256",
        )
        _require(
            isinstance(self.num_gpu_blocks, int) and self.num_gpu_blocks >= 1,
            f"num_gpu_blocks must be at least 1, got {self.num_gpu_blocks!r}; give the KV cache more "
            "memory or use smaller blocks",
        )
        _require(
            isinstance(self.num_cpu_blocks, int) and self.num_cpu_blocks >= 0,
            f"num_cpu_blocks must be >= 0, got {self.num_cpu_blocks!r}",
        )
        _require(
            self.prefix_eviction in EVICTION_POLICIES,
            f"prefix_eviction must be one of {', '.join(EVICTION_POLICIES)}, got {self.prefix_eviction!r}",
        )
        _require(
            self.num_host_cache_blocks == 0 or self.enable_prefix_caching,
            "a host cache tier keeps evicted prefix-cache blocks: it needs enable_prefix_caching",
        )
        _require(
            0.0 <= self.watermark < 1.0,
            f"watermark is a fraction of device blocks in [0, 1), got {self.watermark!r}",
        )

    @property
    def watermark_blocks(self) -> int:
        return int(self.watermark * self.num_gpu_blocks)

    @property
    def num_gpu_slots(self) -> int:
        return self.num_gpu_blocks * self.block_size


@dataclass
class SchedulerConfig:
    """Budgets of one iteration and the preemption mode (paper section 4.5)."""

    max_num_batched_tokens: int = 2560
    max_num_seqs: int = 256
    max_model_len: int = 2048
    # recompute | swap | auto. auto is vLLM v0's rule: recompute single-sequence groups (cheaper),
    # swap multi-sequence groups (parallel samples, beams), whose shared blocks recompute would duplicate.
    # cost: per victim, the cheaper of the two by predicted time (paged/preemption.py).
    preemption_mode: str = "auto"
    # iteration: requests join and leave the batch at every step (Orca, vLLM). request: a batch is
    # admitted only when the previous one has entirely finished (FasterTransformer).
    batching: str = "iteration"
    # separate: a step runs prompts only or decodes only (the vLLM v0.1 release). mixed: every step
    # decodes each running group and admits new prompts into the same batch, within
    # max_num_batched_tokens (the paper's artifact, which the paper's figures came from).
    step_composition: str = "separate"
    # Request-level batches as FasterTransformer ran in the paper's artifact (docs/baselines.md); both
    # need batching="request". max_batch_total_len: a request joins the forming batch only while the
    # batch's longest prompt + longest output (max_tokens) stays within it (the artifact's 2040); None:
    # no such rule. pad_batch: the batch is one padded tensor; every member computes at the longest
    # prompt until the longest output is done (SchedulerOutput.padded_batch), and every member finishes
    # (its finished_time) when the batch ends.
    max_batch_total_len: int | None = None
    pad_batch: bool = False
    # Chunked prefill (Sarathi-Serve; vLLM's enable_chunked_prefill), on mixed steps: each step runs
    # every decode first, then the prompts in progress, then new prompts, cut into chunks so that the
    # step computes at most max_num_batched_tokens tokens; a long prompt spans several steps and no
    # step stalls the decodes for a whole prompt (docs/scheduler.md).
    enable_chunked_prefill: bool = False
    # A name in paged/policy.py's POLICIES: fcfs, every queue in arrival order (the paper); priority
    # (vLLM's scheduling_policy="priority"), in (SequenceGroup.priority, arrival) order, lower first,
    # and a waiting group that cannot be admitted preempts running groups of a lower priority.
    policy: str = "fcfs"

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, f"max_num_seqs must be at least 1, got {self.max_num_seqs!r}")
        _require(self.max_model_len >= 1, f"max_model_len must be at least 1, got {self.max_model_len!r}")
        # Without chunked prefill a sequence's whole context is prefilled in one step (and again after
        # a recompute preemption), so the token budget must hold the longest sequence (vLLM v0 checks
        # the same). With it, only a group that is not chunked (several sequences, a shared prefix)
        # needs that, and it is admitted alone into an empty batch over the budget.
        _require(
            self.enable_chunked_prefill or self.max_num_batched_tokens >= self.max_model_len,
            f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
            f"({self.max_model_len}): a long prompt could never be prefilled; raise "
            "max_num_batched_tokens, lower max_model_len or enable chunked prefill",
        )
        _require(
            self.max_num_batched_tokens >= 1,
            f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens!r}",
        )
        _require(
            not self.enable_chunked_prefill
            or (self.step_composition == "mixed" and self.batching == "iteration"),
            "enable_chunked_prefill puts decodes and prompt chunks in one step: it needs "
            f'step_composition="mixed" and batching="iteration", got {self.step_composition!r} and '
            f"{self.batching!r}; set step_composition to mixed",
        )
        _require(
            not self.enable_chunked_prefill or self.max_num_batched_tokens >= self.max_num_seqs,
            f"with chunked prefill every running sequence's decode takes one token of the step's "
            f"budget, so max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
            f"max_num_seqs ({self.max_num_seqs}); raise the first or lower the second",
        )
        _require(
            self.policy in POLICIES,
            f"policy must be one of {', '.join(POLICIES)} (paged/policy.py; register_policy adds one), "
            f"got {self.policy!r}",
        )
        _require(
            self.policy == "fcfs" or self.batching == "iteration",
            f"policy={self.policy!r} orders requests within the running batch: it needs "
            'batching="iteration" (a static batch runs in arrival order)',
        )
        _require(
            self.preemption_mode in PREEMPTION_MODES,
            f"preemption_mode must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption_mode!r}",
        )
        _require(
            self.step_composition in STEP_COMPOSITIONS,
            f"step_composition must be one of {', '.join(STEP_COMPOSITIONS)}, got {self.step_composition!r}",
        )
        _require(
            self.batching in BATCHING,
            f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}",
        )
        _require(
            self.max_batch_total_len is None or self.max_batch_total_len >= 1,
            f"max_batch_total_len must be a positive number of tokens or None, "
            f"got {self.max_batch_total_len!r}",
        )
        _require(
            self.batching == "request" or (self.max_batch_total_len is None and not self.pad_batch),
            "max_batch_total_len and pad_batch describe request-level (static) batches: they need "
            f'batching="request", got batching={self.batching!r}',
        )
