"""Tensor parallelism, Megatron-style (Shoeybi et al. 2019; the paper's section 4.6), on torch.distributed.

Each rank holds a shard of every layer: attention heads (and their KV heads, hence its slice of the
KV cache) and the MLP's hidden units. Column-parallel projections (q/k/v, fc1, gate/up) keep the
output features of the rank's heads or units; row-parallel ones (out_proj/o_proj, fc2/down_proj)
keep the matching input features, and their partial sums are all-reduced: two all-reduces per layer.
Embeddings, norms and the LM head are replicated, so every rank ends a step with the full logits.

One scheduler and one block manager run on rank 0 (paper section 4.6: "a single KV cache manager
... block table shared by all workers"); the block ids they pick are valid on every rank, because
every rank's cache has the same blocks, each holding its own heads. Each step rank 0 broadcasts
the step's block operations and model inputs; workers apply them (`worker_loop`) and rank 0 samples.
gloo on CPU, NCCL on CUDA. This module is a leaf (torch only); the LLM API's worker processes are
started by paged/tp_workers.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _column(linear: nn.Linear, rank: int, world: int, unit: int) -> nn.Linear:
    """Output features [rank * n, (rank + 1) * n) in whole units (a head's head_dim, or 1)."""
    units = linear.out_features // unit
    if units % world:
        raise ValueError(f"{units} heads/units cannot be split over {world} ranks")
    n = units // world * unit
    new = nn.Linear(linear.in_features, n, bias=linear.bias is not None, device="meta")
    new.weight = nn.Parameter(linear.weight.detach()[rank * n : (rank + 1) * n].clone(), False)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.detach()[rank * n : (rank + 1) * n].clone(), False)
    return new


def _row(linear: nn.Linear, rank: int, world: int, unit: int) -> nn.Linear:
    """Input features of this rank's shard; the bias is added by rank 0 only (after the all-reduce
    every rank holds the sum, bias once)."""
    n = linear.in_features // world
    keep_bias = linear.bias is not None and rank == 0
    new = nn.Linear(n, linear.out_features, bias=keep_bias, device="meta")
    new.weight = nn.Parameter(linear.weight.detach()[:, rank * n : (rank + 1) * n].clone(), False)
    if keep_bias:
        new.bias = nn.Parameter(linear.bias.detach().clone(), False)
    return new


def shard_model(hf_model, rank: int, world: int) -> None:
    """Replace each layer's projections by this rank's shards, in place."""
    cfg = hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    if cfg.num_attention_heads % world or kv_heads % world:
        raise ValueError(
            f"tensor parallelism {world} must divide the {cfg.num_attention_heads} attention heads and "
            f"{kv_heads} KV heads"
        )
    if cfg.model_type == "opt":
        for layer in hf_model.model.decoder.layers:
            a = layer.self_attn
            a.q_proj, a.k_proj, a.v_proj = (
                _column(p, rank, world, head_dim) for p in (a.q_proj, a.k_proj, a.v_proj)
            )
            a.out_proj = _row(a.out_proj, rank, world, head_dim)
            layer.fc1 = _column(layer.fc1, rank, world, 1)
            layer.fc2 = _row(layer.fc2, rank, world, 1)
    else:
        for layer in hf_model.model.layers:
            a, m = layer.self_attn, layer.mlp
            a.q_proj, a.k_proj, a.v_proj = (
                _column(p, rank, world, head_dim) for p in (a.q_proj, a.k_proj, a.v_proj)
            )
            a.o_proj = _row(a.o_proj, rank, world, head_dim)
            m.gate_proj, m.up_proj = _column(m.gate_proj, rank, world, 1), _column(m.up_proj, rank, world, 1)
            m.down_proj = _row(m.down_proj, rank, world, 1)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum the ranks' partial outputs. gloo reduces half types poorly, so CPU sums in fp32."""
    if x.device.type == "cpu" and x.dtype != torch.float32:
        y = x.float()
        dist.all_reduce(y)
        return y.to(x.dtype)
    dist.all_reduce(x)
    return x


# ---------------------------------------------------------------------- rank 0 drives, workers follow
def broadcast_step(payload) -> None:
    """Rank 0: send the step (block operations and inputs) to every worker; None ends the loop."""
    dist.broadcast_object_list([payload], src=0)


def worker_loop(runner) -> None:
    """Ranks > 0: apply rank 0's steps until it sends None."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
        if payload is None:
            return
        runner.run_step(*payload)


def init_group(rank: int, world: int, store_path: str, cuda: bool) -> None:
    """Join the process group through a file rendezvous: no TCP port is picked, freed and picked again
    by another process (a port chosen that way can be taken in between)."""
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world
    )
