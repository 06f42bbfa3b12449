"""PagedAttention kernels in Triton (docs/real_engine.md, "Kernels"), each equal to its reference in
pagelab_kernels/reference.py.

- `write_kv_cache`: one program per token stores its keys and values at its slot (-1: skip).
- `paged_decode_attention`: one program per (sequence, head) walks the sequence's blocks through the
  block table with an online softmax (vLLM's v1 kernel); with `num_partitions > 1`, each program covers
  one partition of the blocks and a second kernel merges the partial results by their log-sum-exp
  (the split-KV v2 kernel, for long contexts with few sequences).
- `copy_blocks`: every (src, dst) pair of every layer, keys and values, in one launch.

On a CPU they run under Triton's interpreter (TRITON_INTERPRET=1, set before this module is
imported); they load any dtype, compute in fp32 and store in the output's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, row: tl.constexpr, BLOCK: tl.constexpr
):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = (offs < row) & ((offs * 0 + slot) >= 0)  # slot -1: padding, nothing to write
    k = tl.load(key_ptr + token * row + offs, mask=mask)
    v = tl.load(value_ptr + token * row + offs, mask=mask)
    tl.store(k_cache_ptr + slot * row + offs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + slot * row + offs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    num_tokens = key.shape[0]
    row = key.shape[1] * key.shape[2]
    assert (
        key.is_contiguous() and value.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()
    )
    if num_tokens:
        _write_kv_kernel[(num_tokens,)](
            key, value, k_cache, v_cache, slot_mapping, row=row, BLOCK=triton.next_power_of_2(row)
        )


@triton.jit
def _decode_kernel(
    out_ptr,  # [num_seqs, num_heads, D] or partials [num_seqs, num_heads, P, D]
    m_ptr,  # [num_seqs, num_heads, P] running max (split only)
    l_ptr,  # [num_seqs, num_heads, P] running sum (split only)
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    scale,
    max_blocks,
    num_heads,
    num_kv_heads: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P2: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCKS_PER_PARTITION: tl.constexpr,
    NUM_PARTITIONS: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    part = tl.program_id(2)
    kv_head = head // (num_heads // num_kv_heads)
    length = tl.load(context_lens_ptr + seq)
    d = tl.arange(0, HEAD_DIM_P2)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + (seq * num_heads + head) * HEAD_DIM + d, mask=dmask, other=0.0).to(tl.float32)
    t = tl.arange(0, BLOCK_SIZE)
    row = num_kv_heads * HEAD_DIM  # elements per token slot
    first = part * BLOCKS_PER_PARTITION
    last = tl.minimum(first + BLOCKS_PER_PARTITION, tl.cdiv(length, BLOCK_SIZE))
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.full((), 0.0, tl.float32)
    acc = tl.zeros((HEAD_DIM_P2,), tl.float32)
    for i in range(first, last):
        block = tl.load(block_tables_ptr + seq * max_blocks + i).to(tl.int64)
        pos = i * BLOCK_SIZE + t
        tmask = pos < length
        offs = (block * BLOCK_SIZE + t)[:, None] * row + kv_head * HEAD_DIM + d[None, :]
        kv_mask = tmask[:, None] & dmask[None, :]
        k = tl.load(k_cache_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * scale
        s = tl.where(tmask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_cache_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    if NUM_PARTITIONS == 1:
        tl.store(
            out_ptr + (seq * num_heads + head) * HEAD_DIM + d,
            (acc / l_i).to(out_ptr.dtype.element_ty),
            mask=dmask,
        )
    else:
        idx = (seq * num_heads + head) * NUM_PARTITIONS + part
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        tl.store(out_ptr + idx * HEAD_DIM + d, acc / safe_l, mask=dmask)
        tl.store(m_ptr + idx, m_i)
        tl.store(l_ptr + idx, l_i)


@triton.jit
def _merge_kernel(
    out_ptr,
    part_ptr,
    m_ptr,
    l_ptr,
    num_heads,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P2: tl.constexpr,
    NUM_PARTITIONS: tl.constexpr,
    P_P2: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    base = (seq * num_heads + head) * NUM_PARTITIONS
    p = tl.arange(0, P_P2)
    pmask = p < NUM_PARTITIONS
    m = tl.load(m_ptr + base + p, mask=pmask, other=float("-inf"))
    lsum = tl.load(l_ptr + base + p, mask=pmask, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(lsum > 0, tl.exp(m - m_max) * lsum, 0.0)  # empty partitions weigh nothing
    d = tl.arange(0, HEAD_DIM_P2)
    dmask = d < HEAD_DIM
    o = tl.load(
        part_ptr + (base + p)[:, None] * HEAD_DIM + d[None, :],
        mask=pmask[:, None] & dmask[None, :],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + (seq * num_heads + head) * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty), mask=dmask)


def paged_decode_attention(
    query, k_cache, v_cache, block_tables, context_lens, scale, num_partitions: int = 1
):
    """query: [num_seqs, num_heads, head_dim]; caches [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables [num_seqs, max_blocks] int32; context_lens [num_seqs] int32 (each >= 1)."""
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert block_size & (block_size - 1) == 0, "block_size must be a power of two for the Triton kernel"
    assert query.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()
    block_tables = block_tables.contiguous()
    max_blocks = block_tables.shape[1]
    out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    d_p2 = triton.next_power_of_2(head_dim)
    if num_partitions <= 1:
        _decode_kernel[(num_seqs, num_heads, 1)](
            out,
            out,
            out,
            query,
            k_cache,
            v_cache,
            block_tables,
            context_lens,
            scale,
            max_blocks,
            num_heads,
            num_kv_heads=num_kv_heads,
            HEAD_DIM=head_dim,
            HEAD_DIM_P2=d_p2,
            BLOCK_SIZE=block_size,
            BLOCKS_PER_PARTITION=max_blocks,
            NUM_PARTITIONS=1,
        )
        return out
    per_part = -(-max_blocks // num_partitions)
    partials = torch.empty(
        num_seqs, num_heads, num_partitions, head_dim, dtype=torch.float32, device=query.device
    )
    m = torch.empty(num_seqs, num_heads, num_partitions, dtype=torch.float32, device=query.device)
    lse = torch.empty_like(m)
    _decode_kernel[(num_seqs, num_heads, num_partitions)](
        partials,
        m,
        lse,
        query,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        scale,
        max_blocks,
        num_heads,
        num_kv_heads=num_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_P2=d_p2,
        BLOCK_SIZE=block_size,
        BLOCKS_PER_PARTITION=per_part,
        NUM_PARTITIONS=num_partitions,
    )
    _merge_kernel[(num_seqs, num_heads)](
        out,
        partials,
        m,
        lse,
        num_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_P2=d_p2,
        NUM_PARTITIONS=num_partitions,
        P_P2=triton.next_power_of_2(num_partitions),
    )
    return out


@triton.jit
def _copy_blocks_kernel(cache_ptr, mapping_ptr, layer_stride, block_numel: tl.constexpr, BLOCK: tl.constexpr):
    pair = tl.program_id(0)
    plane = tl.program_id(1)  # layer * 2 + (0: keys, 1: values)
    src = tl.load(mapping_ptr + 2 * pair).to(tl.int64)
    dst = tl.load(mapping_ptr + 2 * pair + 1).to(tl.int64)
    base = cache_ptr + plane.to(tl.int64) * layer_stride
    for start in range(0, block_numel, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < block_numel
        tl.store(
            base + dst * block_numel + offs, tl.load(base + src * block_numel + offs, mask=mask), mask=mask
        )


def copy_blocks(kv_caches, block_mapping) -> None:
    """kv_caches: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] (contiguous);
    block_mapping: [P, 2] (src, dst). One launch for all layers, keys and values."""
    if len(block_mapping) == 0:
        return
    assert kv_caches.is_contiguous()
    num_layers, two, num_blocks = kv_caches.shape[:3]
    block_numel = kv_caches[0, 0, 0].numel()
    mapping = block_mapping.to(device=kv_caches.device, dtype=torch.int64).contiguous()
    _copy_blocks_kernel[(len(mapping), num_layers * two)](
        kv_caches,
        mapping,
        num_blocks * block_numel,
        block_numel=block_numel,
        BLOCK=min(1024, triton.next_power_of_2(block_numel)),
    )


@triton.jit
def _softmax_step(s, m_i, l_i, acc, v):
    """One online-softmax update: scores s [M, N], values v [N, D]."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return m_new, l_i, acc


@triton.jit
def _prefill_kernel(
    out_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    cu_seqlens_ptr,
    cached_lens_ptr,
    scale,
    max_blocks,
    num_heads,
    num_kv_heads: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P2: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    kv_head = head // (num_heads // num_kv_heads)
    start = tl.load(cu_seqlens_ptr + seq)
    n = tl.load(cu_seqlens_ptr + seq + 1) - start
    cached = tl.load(cached_lens_ptr + seq)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n
    d = tl.arange(0, HEAD_DIM_P2)
    dmask = d < HEAD_DIM
    q = tl.load(
        q_ptr + ((start + rows)[:, None] * num_heads + head) * HEAD_DIM + d[None, :],
        mask=rmask[:, None] & dmask[None, :],
        other=0.0,
    ).to(tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM_P2), tl.float32)
    cache_row = num_kv_heads * HEAD_DIM
    # 1. The cached prefix, read through the block table: every new token sees all of it.
    for j0 in range(0, cached, BLOCK_N):
        pos = j0 + tl.arange(0, BLOCK_N)
        pmask = pos < cached
        block = tl.load(block_tables_ptr + seq * max_blocks + pos // BLOCK_SIZE, mask=pmask, other=0).to(
            tl.int64
        )
        offs = (block * BLOCK_SIZE + pos % BLOCK_SIZE)[:, None] * cache_row + kv_head * HEAD_DIM + d[None, :]
        kv_mask = pmask[:, None] & dmask[None, :]
        k = tl.load(k_cache_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_cache_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(pmask[None, :], s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v)
    # 2. The new tokens themselves, causally.
    for j0 in range(0, (tile + 1) * BLOCK_M, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        cmask = cols < n
        offs = ((start + cols)[:, None] * num_kv_heads + kv_head) * HEAD_DIM + d[None, :]
        kv_mask = cmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        s = tl.where(cmask[None, :] & (cols[None, :] <= rows[:, None]), s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + ((start + rows)[:, None] * num_heads + head) * HEAD_DIM + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=rmask[:, None] & dmask[None, :],
    )


def prefill_attention(query, key, value, k_cache, v_cache, block_tables, cu_seqlens, cached_lens, scale):
    """Prompt tokens (packed, sequence i owns rows cu_seqlens[i]:cu_seqlens[i+1]) attend to their
    cached prefix through the block table and causally to themselves (vLLM's prefix_prefill design)."""
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = len(cached_lens)
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    _, block_size, num_kv_heads, _ = k_cache.shape
    for t in (query, key, value, k_cache, v_cache):
        assert t.is_contiguous()
    block_tables = block_tables.contiguous()
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    block_m = 16
    grid = (num_seqs, num_heads, triton.cdiv(max_len, block_m))
    _prefill_kernel[grid](
        out,
        query,
        key,
        value,
        k_cache,
        v_cache,
        block_tables,
        cu_seqlens,
        cached_lens,
        scale,
        block_tables.shape[1],
        num_heads,
        num_kv_heads=num_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_P2=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=16,
    )
    return out
