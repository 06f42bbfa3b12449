"""A vLLM-shaped offline API: `LLM(model=...).generate(prompts, SamplingParams(...))`.

    from paged import LLM, SamplingParams
    llm = LLM(model="opt-125m", dtype="float32", seed=0)          # a preset: random weights
    outs = llm.generate([[2, 100, 7], [2, 9]], SamplingParams(max_tokens=8, temperature=0))
    outs[0].outputs[0].token_ids

`model` is a local directory holding a transformers checkpoint (with a tokenizer, prompts may be
strings) or the name of a model preset in paged/presets/model (random weights: shapes decide speed). Results
come back in prompt order; each request's outputs are sorted best first: by cumulative log-probability,
or with beam search by transformers' beam score (the n best finished hypotheses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paged.beam_search import best_hypotheses
from paged.block_manager import BlockManager
from paged.config import CacheConfig, SchedulerConfig
from paged.engine import Engine
from paged.model_loader import DTYPES, load_hf_model
from paged.model_runner import ModelRunner
from paged.presets import num_blocks_in
from paged.real_executor import RealExecutor
from paged.sampling_params import SamplingParams
from paged.scheduler import Scheduler
from paged.sequence import SequenceGroup


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str | None
    cumulative_logprob: float
    # SamplingParams.logprobs: per output token {token id: logprob}, the sampled token and the top k
    logprobs: list[dict[int, float]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


def kv_blocks_from_profile(total_bytes: int, utilization: float, peak_bytes: int, block_bytes: int) -> int:
    """vLLM's sizing (paper section 5): the device's memory times the utilization, less the profiled
    peak of weights and activations, in whole blocks."""
    return max(0, int(total_bytes * utilization) - peak_bytes) // block_bytes


CPU_KV_CACHE_GIB = 4.0  # vLLM's CPU backend's default KV space (VLLM_CPU_KVCACHE_SPACE)


# vLLM v0's default step budget with chunked prefill ("the best ITL on A100", vllm-project/vllm#4580;
# later releases use 2048)
CHUNKED_PREFILL_BATCHED_TOKENS = 512


def default_batched_tokens(enable_chunked_prefill: bool, max_num_seqs: int, max_model_len: int) -> int:
    """The step's token budget when none is given (LLM and pagelab serve alike): vLLM v0's 512 with
    chunked prefill (at least one token per running sequence), else max(2560, max_model_len)."""
    if enable_chunked_prefill:
        return max(CHUNKED_PREFILL_BATCHED_TOKENS, max_num_seqs)
    return max(2560, max_model_len)


class LLM:
    """The offline engine. The KV cache is sized, in this order: `kv_cache_gib` when given; on CUDA by
    profiling the largest step's peak memory and keeping `gpu_memory_utilization` of the device; on
    CPU 4 GiB (vLLM's CPU default).

    `enable_chunked_prefill` (vLLM's parameter; docs/scheduler.md, "Chunked prefill"): decodes and
    prompt chunks share each step (`step_composition="mixed"`), a step computing at most
    `max_num_batched_tokens` tokens; unset, that budget is vLLM's 512 (at least `max_num_seqs`, since
    every decode takes one token of it). Without chunking the budget defaults to max(2560,
    max_model_len), as the paper's vLLM: a whole prompt must fit one step. Greedy tokens are the same
    either way."""

    def __init__(
        self,
        model: str,
        block_size: int = 16,
        dtype: str = "float32",
        seed: int = 0,
        device: str | None = None,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.9,
        swap_space_gib: float = 0.5,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        max_num_batched_tokens: int | None = None,
        preemption_mode: str = "auto",
        tensor_parallel_size: int = 1,
        enable_chunked_prefill: bool = False,
        scheduling_policy: str = "fcfs",
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tp = tensor_parallel_size
        if tp < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
        if tp > 1 and device.startswith("cuda") and kv_cache_gib is None:
            raise ValueError(
                "with tensor_parallel_size > 1 give kv_cache_gib (per rank); profiling is 1-GPU only"
            )
        self._tp_workers = []
        if tp > 1:
            from paged.tp_workers import start_workers

            device = "cuda:0" if device.startswith("cuda") else device
            self._tp_workers = start_workers(model, dtype, device, seed, block_size, tp)
        self.model, self.tokenizer = load_hf_model(model, DTYPES[dtype], device, seed)
        cfg = self.model.config
        max_len = max_model_len or cfg.max_position_embeddings
        if max_len > cfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len {max_len} exceeds the model's {cfg.max_position_embeddings} positions"
            )
        if max_num_batched_tokens is None:
            max_num_batched_tokens = default_batched_tokens(enable_chunked_prefill, max_num_seqs, max_len)
        self.scheduler_config = SchedulerConfig(
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            max_model_len=max_len,
            preemption_mode=preemption_mode,
            # chunks ride along with the decodes: the mixed steps of the paper's artifact
            step_composition="mixed" if enable_chunked_prefill else "separate",
            enable_chunked_prefill=enable_chunked_prefill,
            policy=scheduling_policy,
        )
        self.runner = ModelRunner(self.model, 0, block_size, 0, tp_rank=0, tp_size=tp)
        block_bytes = self.runner.block_bytes
        if kv_cache_gib is not None:
            num_gpu_blocks = num_blocks_in(kv_cache_gib, block_bytes)
        elif self.runner.device.type == "cuda":
            peak = self.runner.profile_peak_bytes(self.scheduler_config.max_num_batched_tokens, max_len)
            total = torch.cuda.mem_get_info(self.runner.device)[1]
            num_gpu_blocks = kv_blocks_from_profile(total, gpu_memory_utilization, peak, block_bytes)
        else:
            num_gpu_blocks = num_blocks_in(CPU_KV_CACHE_GIB, block_bytes)
        if num_gpu_blocks * block_size < max_len:
            raise ValueError(
                f"the KV cache holds {num_gpu_blocks} blocks of {block_size} tokens, less than one "
                f"{max_len}-token sequence: raise kv_cache_gib (or gpu_memory_utilization), or lower "
                "max_model_len"
            )
        num_cpu_blocks = num_blocks_in(swap_space_gib, block_bytes)
        if tp > 1:  # every rank allocates the same blocks (of its own heads) and warms up in step
            import torch.distributed as dist

            dist.broadcast_object_list([(num_gpu_blocks, num_cpu_blocks)], src=0)
        self.runner.allocate_cache(num_gpu_blocks, num_cpu_blocks)
        self.runner.warmup()
        # preemption_mode="cost" weighs this machine's swap and prefill speeds (paged/preemption.py),
        # measured now, before any request uses the cache.
        self.preemption_costs = (
            self.runner.measure_preemption_costs() if preemption_mode == "cost" and num_cpu_blocks else None
        )
        self.cache_config = CacheConfig(
            num_gpu_blocks=num_gpu_blocks, block_size=block_size, num_cpu_blocks=num_cpu_blocks
        )
        self.seed = seed
        self.eos_token_id = getattr(cfg, "eos_token_id", None)
        self._next_id = 0

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (also run at exit)."""
        if self._tp_workers:
            from paged.tp_workers import stop_workers

            stop_workers(self._tp_workers)
            self._tp_workers = []

    def generate(
        self,
        prompts,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion. sampling_params: one for all prompts, or one per prompt;
        use_tqdm: a progress bar over finished requests; priority: one per prompt, lower first, under
        scheduling_policy="priority" (vLLM's argument).
        A request with `seed` samples from its own generator (reproducible in any batch); the others
        share one seeded by the LLM's seed."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompts):
                raise ValueError(
                    f"{len(sampling_params)} params for {len(prompts)} prompts: give one or one each"
                )
            per_prompt = sampling_params
        else:
            per_prompt = [sampling_params or SamplingParams()] * len(prompts)
        if priority is not None and len(priority) != len(prompts):
            raise ValueError(f"{len(priority)} priorities for {len(prompts)} prompts: give one each")
        priority = priority or [0] * len(prompts)
        memory = BlockManager(self.cache_config, self.scheduler_config.max_model_len)
        scheduler = Scheduler(self.scheduler_config, memory)
        scheduler.preemption_costs = self.preemption_costs
        engine = Engine(scheduler, RealExecutor(self.runner, seed=self.seed))
        groups = []
        for prompt, params, prio in zip(prompts, per_prompt, priority):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise ValueError(
                        "text prompts need a tokenizer in the model directory; pass token ids instead"
                    )
                prompt = self.tokenizer.encode(prompt)
            groups.append(
                SequenceGroup(
                    str(self._next_id),
                    list(prompt),
                    params,
                    0.0,
                    eos_token_id=self.eos_token_id,
                    priority=prio,
                )
            )
            self._next_id += 1
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(groups), unit="req", desc="generate")
        engine.run(groups, on_finish=bar and (lambda _g: bar.update(1)))
        if bar is not None:
            bar.close()
        results = []
        for g in groups:
            if g.reject_reason is not None:
                raise ValueError(f"request {g.request_id} rejected: {g.reject_reason}")
            if g.sampling_params.use_beam_search:
                seqs = best_hypotheses(g)
            else:
                seqs = sorted(g.seqs, key=lambda s: -s.cumulative_logprob)
            outs = [
                CompletionOutput(
                    i,
                    s.output_token_ids,
                    self.tokenizer.decode(s.output_token_ids) if self.tokenizer else None,
                    s.cumulative_logprob,
                    s.output_logprobs,
                )
                for i, s in enumerate(seqs)
            ]
            results.append(RequestOutput(g.request_id, g.prompt_token_ids, outs))
        return results
