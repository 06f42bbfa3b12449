"""One serving engine's settings: the one configuration dataclass for engine and memory.

`ServerConfig` is what vLLM calls its engine arguments: the KV-cache layout and memory plan (paper
sections 4.2-4.5) and the scheduler's limits. The Hydra front door uses it as the `system` group's
schema (harness/conf/system/*.yaml), the simulator and the real backend build their engine from it
(harness/simulate.py), and KV sizing reads it (harness/sim/kv_capacity.py). It imports nothing from
the rest of the harness, so every one of those can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from paged.config import PREEMPTION_MODES, STEP_COMPOSITIONS
from paged.policy import POLICIES

# The real backend's KV memory when kv_cache_gib is unset: the hardware presets' capacity is for the
# paper's GPUs, not for the machine the real model runs on.
REAL_KV_CACHE_GIB = 0.25
KV_SIZING = ("profiled", "artifact")
# Bytes per stored key or value element of each kv_cache_dtype (vLLM's option); auto: the model's dtype.
KV_CACHE_DTYPES = {"auto": None, "fp16": 2, "bf16": 2, "fp8": 1, "int4": 0.5}


@dataclass
class ServerConfig:
    """Engine and memory settings shared by every system. Defaults: vLLM's v0.1 release
    (harness/conf/system/vllm_v01.yaml says where each comes from); the paper's artifact differs in the
    settings harness/conf/system/paper.yaml sets (docs/paper_fidelity.md)."""

    block_size: int = 16  # tokens per KV block (section 4.2)
    gpu_memory_utilization: float = 0.95  # share of each GPU's memory for weights, activations, KV
    runtime_reserve_gib: float = 1.5  # memory outside PyTorch's allocator (docs/simulator.md)
    swap_space_gib: float = 4.0  # host swap space per GPU (vLLM v0's default; section 4.5)
    max_num_batched_tokens: int = 2560  # tokens one step may compute
    max_num_seqs: int = 256  # sequences one step may run
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # auto | recompute | swap (section 4.5) | cost: per victim, the cheaper by predicted time
    # (paged/preemption.py; the simulator's cost model, the real engine's measured speeds)
    preemption_mode: str = "auto"
    # separate: prompt-only or decode-only steps (vLLM v0.1 release); mixed: decodes and new prompts
    # in one step (the paper's artifact; docs/paper_fidelity.md)
    step_composition: str = "separate"
    # Chunked prefill (Sarathi-Serve, vLLM's enable_chunked_prefill): prompts cut into chunks so that
    # each step computes at most max_num_batched_tokens, decodes first; needs step_composition=mixed
    enable_chunked_prefill: bool = False
    # fcfs | priority (vLLM's scheduling_policy) | a policy registered in paged/policy.py: under
    # priority, requests are served in (priority, arrival) order, lower first, and a waiting one
    # preempts running ones of a lower priority
    scheduling_policy: str = "fcfs"
    watermark: float = 0.01  # share of blocks kept free when admitting prompts
    enable_prefix_caching: bool = False
    # Which unreferenced cached block goes first: lru | lfu | radix (paged/prefix_cache.py)
    prefix_eviction: str = "lru"
    # Host memory per GPU that keeps blocks the prefix cache evicts, brought back at swap cost on a hit
    # (paged/host_tier.py; LMCache, Mooncake); 0: none. Needs enable_prefix_caching.
    host_cache_gib: float = 0.0
    # Whether the simulator overlaps the tier's offloads with the step's compute, as LMCache's
    # asynchronous stores do: a step then lasts the longer of its compute and its offloads. False: they
    # add to the step, as the real engine's synchronous copies do. True is optimistic: the evicted block
    # is rewritten by its new owner in the same step (docs/scheduler.md, "Sharing").
    host_offload_overlap: bool = False
    ft_batch_size: int | None = None  # FasterTransformer's B; None: as many max-length requests as fit
    # FasterTransformer's batches as the paper's artifact formed them (docs/baselines.md): a request
    # joins the forming batch only while the batch's longest prompt + longest output stays within
    # ft_max_total_len (the artifact: 2040; None: no such rule); ft_pad_batch: prompts are padded to
    # the longest, every member computes until the longest output is done, and every member finishes
    # when the batch ends (false: each request finishes on its own, unpadded).
    ft_max_total_len: int | None = None
    ft_pad_batch: bool = False
    # KV cache memory per GPU instead of what kv_capacity computes from the hardware preset; None:
    # computed (sim backend) or REAL_KV_CACHE_GIB (real backend).
    kv_cache_gib: float | None = None
    # How the activation peak subtracted from the KV budget is estimated (harness/sim/kv_capacity.py):
    # profiled: vLLM v0's profiling pass, sampler buffers for max_num_seqs included; artifact: the
    # paper's artifact's closed-form memory analyzer, which does not grow with max_num_seqs.
    kv_sizing: str = "profiled"
    # The KV cache's element type (vLLM's kv_cache_dtype): auto (the model's), fp16, bf16, fp8, int4.
    # The simulator sizes the cache and prices KV reads and swaps by it; quantization's own cost and
    # accuracy are not modelled (docs/simulator.md). The real engine stores the model's dtype.
    kv_cache_dtype: str = "auto"
    # vAttention's page mapping (baselines/vattention.py; cost per page: the hardware preset's
    # page_map_us): true, mapped by a background thread while the step computes (vAttention's latency
    # hiding), so a step lasts the longer of the two; false, mapped before the step, adding to it.
    page_map_overlap: bool = True
    # FasterTransformer's batch size per "<model preset name>/<dataset>" (the artifact set them by hand
    # per model and dataset); used where ft_batch_size is null and the key matches.
    ft_batch_sizes: dict[str, int] = field(default_factory=dict)
    # Settings that differ by system, applied over the rest for that system only: for example
    # {orca_max: {max_num_seqs: 256}}. Keys are system names, values ServerConfig fields.
    by_system: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def positive(name: str, value, hint: str = "") -> None:
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}{hint}")

        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(
                f"block_size must be a positive number of tokens, got {self.block_size!r}; try 16"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.runtime_reserve_gib < 0 or self.swap_space_gib < 0:
            raise ValueError("runtime_reserve_gib and swap_space_gib must not be negative")
        positive("max_num_batched_tokens", self.max_num_batched_tokens)
        positive("max_num_seqs", self.max_num_seqs)
        positive("max_model_len", self.max_model_len, "; null: the model's max_position_embeddings")
        positive("ft_batch_size", self.ft_batch_size, "; null: as many max-length requests as fit")
        positive("ft_max_total_len", self.ft_max_total_len, "; the artifact used 2040; null: no limit")
        positive(
            "kv_cache_gib",
            self.kv_cache_gib,
            "; null: computed from the hardware preset (sim) or REAL_KV_CACHE_GIB (real)",
        )
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(
                f"preemption_mode must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption_mode!r}"
            )
        if self.step_composition not in STEP_COMPOSITIONS:
            raise ValueError(
                f"step_composition must be one of {', '.join(STEP_COMPOSITIONS)}, "
                f"got {self.step_composition!r}"
            )
        if self.enable_chunked_prefill and self.step_composition != "mixed":
            raise ValueError(
                "enable_chunked_prefill puts decodes and prompt chunks in one step: set "
                f"step_composition=mixed (got {self.step_composition!r})"
            )
        if self.scheduling_policy not in POLICIES:
            raise ValueError(
                f"scheduling_policy must be one of {', '.join(POLICIES)}, got {self.scheduling_policy!r}; "
                "a policy of your own: register it (paged/policy.py) in a module named in plugins=[...]"
            )
        if self.host_cache_gib < 0 or (self.host_cache_gib and not self.enable_prefix_caching):
            raise ValueError(
                f"host_cache_gib={self.host_cache_gib} keeps evicted prefix-cache blocks: it must be >= 0 "
                "and needs enable_prefix_caching=true"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"
            )
        if self.kv_sizing not in KV_SIZING:
            raise ValueError(f"kv_sizing must be one of {', '.join(KV_SIZING)}, got {self.kv_sizing!r}")
        names = {f.name for f in fields(self)} - {"by_system"}
        for system, overrides in self.by_system.items():
            unknown = set(overrides) - names
            if unknown:
                raise ValueError(
                    f"by_system.{system} sets unknown setting(s) {sorted(unknown)}; "
                    f"settable: {', '.join(sorted(names))}"
                )
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")


def kv_dtype_bytes(server: ServerConfig) -> float | None:
    """Bytes per KV element under server.kv_cache_dtype; None: the model's own dtype."""
    return KV_CACHE_DTYPES[server.kv_cache_dtype]


def for_system(server: ServerConfig, system: str) -> ServerConfig:
    """The settings one system runs with: `server` with its `by_system[system]` entries applied."""
    overrides = server.by_system.get(system)
    if not overrides:
        return server
    return replace(server, **dict(overrides), by_system={})
