"""The model runner's CPU path: the references' semantics (pagelab_kernels/reference.py), batched for speed.

The references loop over sequences and compute in fp32 einsums, which is right for checking kernels
and slow for serving: on a 2-core CPU the per-sequence loop was most of a decode step. Decode
attention here runs natively (pagelab_kernels/cpu_native.py: C with OpenMP, every key and value read once in
place through the block table). Without a C compiler (or with PAGELAB_NATIVE=0) it falls back to one
torch function (gather, scores, masked fp32 softmax, weighted values) that torch.compile fuses into
loops reading the cache indirectly, over buckets of sequences of similar context length so that
padding to the longest context does not multiply the memory traffic (ShareGPT contexts range from
tens to two thousand tokens); with PAGELAB_COMPILE=0 that function runs eagerly. Prefill calls
PyTorch's fused attention once per sequence. The cache write is native too where the kernel built.
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn.functional as F

from pagelab_kernels import cpu_native, reference
from pagelab_kernels.reference import copy_blocks, gather_kv

__all__ = ["copy_blocks", "write_kv_cache", "paged_decode_attention", "prefill_attention"]

PAD_SLACK = 1.25  # a bucket may gather at most this many times its sequences' real context


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    """The reference's cache write, natively where the C kernel built (one pass, no index tensors)."""
    if cpu_native.available():
        cpu_native.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    else:
        reference.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def _buckets(lens: list[int]) -> list[list[int]]:
    """Sequence indices grouped by context length (longest first), each group padded to its longest."""
    order = sorted(range(len(lens)), key=lambda i: -lens[i])
    groups, cur, cur_sum = [], [], 0
    for i in order:
        # cur is sorted longest first, so its padded size is cur[0]'s length times its size.
        if cur and lens[cur[0]] * (len(cur) + 1) > PAD_SLACK * (cur_sum + lens[i]):
            groups.append(cur)
            cur, cur_sum = [], 0
        cur.append(i)
        cur_sum += lens[i]
    if cur:
        groups.append(cur)
    return groups


def _decode_bucket(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q: [B, Hkv, G, D] (G query heads per KV head); table: [B, nblocks] int64 -> [B, Hkv, G, D]."""
    nblocks, block_size = table.shape[1], k_cache.shape[1]
    k = k_cache[table].float()  # [B, nblocks, block_size, Hkv, D]: fused away when compiled
    scores = (q[:, None, None].float() * k[..., None, :]).sum(-1) * scale  # [B, nb, bs, Hkv, G]
    pos = torch.arange(nblocks * block_size, device=q.device).view(1, nblocks, block_size, 1, 1)
    scores = scores.masked_fill(pos >= context_lens.view(-1, 1, 1, 1, 1), float("-inf"))
    probs = torch.exp(scores - scores.amax(dim=(1, 2), keepdim=True))
    v = v_cache[table].float()
    out = (probs[..., None] * v[..., None, :]).sum(dim=(1, 2)) / probs.sum(dim=(1, 2))[..., None]
    return out.to(q.dtype)


_compiled = None


def _decode_fn():
    """The compiled decode function, built on first use; the eager one when compiling is off."""
    global _compiled
    if _compiled is None:
        use = os.environ.get("PAGELAB_COMPILE", "1") != "0" and shutil.which("g++") is not None
        _compiled = torch.compile(_decode_bucket, dynamic=True) if use else _decode_bucket
    return _compiled


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """query: [num_seqs, num_heads, head_dim] -> [num_seqs, num_heads, head_dim]."""
    if cpu_native.available() and k_cache.is_contiguous() and v_cache.is_contiguous():
        return cpu_native.paged_decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale)
    return compiled_decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale)


def compiled_decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale) -> torch.Tensor:
    """The fallback without a native build: _decode_bucket, compiled, over buckets of similar length."""
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    lens = context_lens.tolist()
    fn = _decode_fn()
    out = torch.empty_like(query)
    for idx in _buckets(lens):
        rows = torch.tensor(idx)
        nblocks = -(-lens[idx[0]] // block_size)
        table = block_tables[rows, :nblocks].long()
        q = query[rows].view(len(idx), num_kv_heads, group, head_dim)
        o = fn(q, k_cache, v_cache, table, context_lens[rows], scale)
        out[rows] = o.reshape(len(idx), num_heads, head_dim)
    return out


def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens: torch.Tensor,
    cached_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Prompt tokens attend causally to themselves and to a cached prefix (pagelab_kernels/reference.py).
    One fused attention call per sequence: prompts are few per step and long."""
    out = torch.empty_like(query)
    gqa = query.shape[1] != key.shape[1]
    cu, cached_all = cu_seqlens.tolist(), cached_lens.tolist()
    for i, cached in enumerate(cached_all):
        start, end = cu[i], cu[i + 1]
        if end == start:
            continue
        # [1, H, n, D]: 4-D inputs let PyTorch pick its fused CPU flash kernel; 3-D ones fall back to
        # the math path, which materialises the scores (2.7x slower at 300 tokens, 4x at 1000:
        # benchmarks/bench_cpu_ops.py).
        q = query[start:end].transpose(0, 1)[None]
        k, v = key[start:end], value[start:end]
        if cached == 0:
            k, v = k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            k_ctx = gather_kv(k_cache, block_tables[i], cached)
            v_ctx = gather_kv(v_cache, block_tables[i], cached)
            k = torch.cat([k_ctx.to(k.dtype), k]).transpose(0, 1)[None]
            v = torch.cat([v_ctx.to(v.dtype), v]).transpose(0, 1)[None]
            n = end - start
            mask = torch.arange(cached + n)[None, :] <= cached + torch.arange(n)[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out
