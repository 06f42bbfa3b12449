"""How many KV-cache blocks fit on each GPU: the one place pagelab computes it.

vLLM (v0, the paper's system) profiled a forward pass of `max_num_batched_tokens` tokens over
`max_num_seqs` sequences and gave the KV cache what remained of `gpu_memory_utilization` x the GPU's
memory after the weights and that activation peak. Under tensor parallelism every GPU holds 1/TP of
the weights and 1/TP of the heads of every block, under the same block ids (paper section 4.6), so the
block count is computed per GPU.

    kv_bytes = gpu_memory_utilization x memory - weights / TP - activation peak - runtime reserve
    num_gpu_blocks = kv_bytes // (block_size x KV bytes per token / TP)

Defaults reproduce the paper's Table 1 (tests/test_kv_capacity.py): its numbers put 95% of each GPU's
memory into weights plus KV cache (OPT-13B: 26 GB of weights + 12 GB of KV on 40 GB; OPT-175B needs at
least 92% of an 80 GB GPU for its 60.1K slots after 40.6 GiB of weights, so 0.90 cannot be what it
ran with). The runtime reserve, 1.5 GiB, stands for memory outside PyTorch's allocator that vLLM's
formula does not see (CUDA context, cuBLAS and NCCL workspaces, allocator fragmentation); with it the
three servers come within 3% of Table 1 (+0.6%, +2.3%, +1.1%). docs/simulator.md shows the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.server import ServerConfig, kv_dtype_bytes
from harness.sim.hardware import GPUSpec
from paged.presets import GIB, ModelSpec, num_blocks_in


@dataclass(frozen=True)
class KVCapacity:
    """Per-GPU memory plan, in bytes, and the resulting block counts."""

    budget_bytes: int
    weight_bytes: int
    activation_bytes: int
    reserve_bytes: int
    kv_bytes: int
    block_bytes: int
    num_gpu_blocks: int
    num_cpu_blocks: int
    block_size: int
    num_host_cache_blocks: int = 0  # the prefix cache's host tier (ServerConfig.host_cache_gib)

    @property
    def num_slots(self) -> int:
        """Token slots of KV cache (paper Table 1's "max. # KV cache slots")."""
        return self.num_gpu_blocks * self.block_size


def activation_peak_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Peak activation memory of vLLM's profiling forward pass, per GPU.

    Per token, the largest live set inside a layer: four hidden-size tensors (residual, normalized input,
    attention output, all-reduced output), the QKV projection and the MLP's intermediate tensors (two for
    OPT's fc1/activation, three for LLaMA's gate/up/product), the last two sharded by TP. Plus the sampler's
    fp32 logits, probabilities and log-probabilities for one token of each of max_num_seqs sequences.
    """
    per_token = 4 * model.hidden_size + (model.qkv_width + model.num_mlp_matrices * model.mlp_width) // tp
    sampler = 3 * max_num_seqs * model.vocab_size * 4
    return max_num_batched_tokens * per_token * model.dtype_bytes + sampler


def artifact_activation_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int) -> int:
    """The paper's artifact's estimate of the activation peak (its memory analyzer, closed form, no
    profiling): twice the larger of the QKV output and the MLP's intermediate tensors, plus the
    residual, or the step's logits if larger; nothing per sequence, so it does not grow with max_num_seqs."""
    n = max_num_batched_tokens
    residual = n * model.hidden_size
    qkv = 3 * n * model.hidden_size // tp
    mlp = (model.num_mlp_matrices - 1) * n * model.mlp_width // tp  # OPT: fc1; LLaMA: gate and up
    logits = 2 * n * model.vocab_size
    return max(2 * (max(qkv, mlp) + residual), logits) * model.dtype_bytes


def kv_capacity(
    model: ModelSpec, gpu: GPUSpec, server: ServerConfig | None = None, tp: int = 1
) -> KVCapacity:
    """KV blocks per GPU (device pool) and per GPU's share of host swap space (host pool), for the
    server's memory settings; with `server.kv_cache_gib` set, the device pool is that much memory
    instead (the model must still fit the GPU)."""
    s = server or ServerConfig()
    if tp < 1 or model.num_attention_heads % tp or model.num_key_value_heads % tp:
        raise ValueError(
            f"tensor-parallel degree {tp} must divide {model.name}'s {model.num_attention_heads} heads"
        )
    budget = int(s.gpu_memory_utilization * gpu.memory_bytes)
    weights = model.weight_bytes // tp
    if s.kv_sizing == "artifact":
        activations = artifact_activation_bytes(model, tp, s.max_num_batched_tokens)
    else:
        activations = activation_peak_bytes(model, tp, s.max_num_batched_tokens, s.max_num_seqs)
    reserve = int(s.runtime_reserve_gib * GIB)
    kv = budget - weights - activations - reserve
    block_bytes = model.kv_bytes_per_block(s.block_size, kv_dtype_bytes(s), tp=tp)
    if kv < block_bytes:
        raise ValueError(
            f"{model.name} does not fit on {tp} x {gpu.name}: weights take {weights / GIB:.1f} GiB per GPU "
            f"and activations {activations / GIB:.1f} GiB of the {budget / GIB:.1f} GiB budget, leaving "
            f"{max(kv, 0) / GIB:.2f} GiB for the KV cache; use more GPUs (tensor parallelism) or a "
            "larger GPU"
        )
    num_gpu_blocks = kv // block_bytes
    if s.kv_cache_gib is not None:
        num_gpu_blocks = max(1, num_blocks_in(s.kv_cache_gib, block_bytes))
        kv = num_gpu_blocks * block_bytes
    return KVCapacity(
        budget_bytes=budget,
        weight_bytes=weights,
        activation_bytes=activations,
        reserve_bytes=reserve,
        kv_bytes=kv,
        block_bytes=block_bytes,
        num_gpu_blocks=num_gpu_blocks,
        num_cpu_blocks=int(s.swap_space_gib * GIB) // block_bytes,
        num_host_cache_blocks=int(s.host_cache_gib * GIB) // block_bytes,
        block_size=s.block_size,
    )
