"""Plain-PyTorch references for every PagedAttention kernel: what the Triton kernels and the CPU path
must equal. The CPU path (pagelab_kernels/cpu_ops.py) also borrows three of them as they are: cache write,
block copy and the gather of a sequence's cached keys and values.

Cache layout (NHD pages, as nano-vllm and FlashInfer): per layer, keys and values are
`[num_blocks, block_size, num_kv_heads, head_dim]`; a token's slot is `block * block_size + offset`,
and slot -1 means "nothing to write" (padding). Block tables are `[num_seqs, max_blocks]` int32,
padded with anything (entries past a sequence's blocks are never read).
"""

from __future__ import annotations

import torch


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store each token's key and value at its slot. key/value: [num_tokens, num_kv_heads, head_dim]."""
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[valid].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[valid].to(v_cache.dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence, read through its block table: [length, heads, dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    return cache[block_table[:num_blocks].long()].reshape(-1, *cache.shape[2:])[:length]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None):
    """q: [Q, H, D]; k, v: [K, H_kv, D]; grouped-query heads share a KV head. fp32 softmax."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new token per sequence attends to its whole context through the block table.
    query: [num_seqs, num_heads, head_dim] -> [num_seqs, num_heads, head_dim]."""
    out = torch.empty_like(query)
    for i in range(query.shape[0]):
        length = int(context_lens[i])
        k = gather_kv(k_cache, block_tables[i], length)
        v = gather_kv(v_cache, block_tables[i], length)
        out[i] = _attend(query[i : i + 1], k, v, scale, None)[0].to(query.dtype)
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
    """Prompt tokens attend causally to themselves and to a cached prefix read through the block table
    (shared prefixes, prefix-cache hits, recomputation). query/key/value hold the new tokens of all
    sequences packed: sequence i owns rows cu_seqlens[i]:cu_seqlens[i+1]; its first cached_lens[i]
    tokens are already in the cache."""
    out = torch.empty_like(query)
    for i in range(len(cached_lens)):
        start, end, cached = int(cu_seqlens[i]), int(cu_seqlens[i + 1]), int(cached_lens[i])
        if end == start:
            continue
        k_ctx = gather_kv(k_cache, block_tables[i], cached)
        v_ctx = gather_kv(v_cache, block_tables[i], cached)
        k = torch.cat([k_ctx.to(key.dtype), key[start:end]])
        v = torch.cat([v_ctx.to(value.dtype), value[start:end]])
        n = end - start
        q_pos = cached + torch.arange(n)[:, None]
        mask = torch.arange(cached + n)[None, :] <= q_pos  # [Q, K], causal over absolute positions
        out[start:end] = _attend(query[start:end], k, v, scale, mask).to(query.dtype)
    return out


def copy_blocks(kv_caches: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """Copy-on-write: for each (src, dst) pair, copy block src to dst in every layer, keys and values.
    kv_caches: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]; block_mapping: [P, 2]."""
    if len(block_mapping) == 0:
        return
    src, dst = block_mapping[:, 0].long(), block_mapping[:, 1].long()
    kv_caches[:, :, dst] = kv_caches[:, :, src]
