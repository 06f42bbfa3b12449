"""Each Triton kernel equals its PyTorch reference, and each reference equals plain attention.

On a CPU the Triton kernels run under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on
small shapes; the same tests run compiled on CUDA when a GPU is present and are skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagelab_kernels import reference as ref
from pagelab_kernels import triton_ops as tri

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float16: 1e-3}


def paged_setup(lengths, num_kv_heads, head_dim, block_size, dtype, device, seed=0):
    """Random K/V for each sequence, scattered into a shuffled pool of blocks."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // block_size) for n in lengths)
    num_blocks = sum(-(-n // block_size) for n in lengths) + 3
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lengths), max_blocks, dtype=torch.int32)
    keys, values, used = [], [], 0
    for i, n in enumerate(lengths):
        nb = -(-n // block_size)
        tables[i, :nb] = perm[used : used + nb].int()
        used += nb
        keys.append(ref.gather_kv(k_cache, tables[i], n))
        values.append(ref.gather_kv(v_cache, tables[i], n))
    to = {"device": device}
    return k_cache.to(**to), v_cache.to(**to), tables.to(**to), keys, values


def sdpa(q, k, v, causal_offset=None):
    """Plain attention on contiguous tensors. q: [Q, H, D], k/v: [K, Hkv, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, 1).transpose(0, 1)
    v = v.float().repeat_interleave(group, 1).transpose(0, 1)
    mask = None
    if causal_offset is not None:
        mask = torch.arange(k.shape[1])[None, :] <= (causal_offset + torch.arange(q.shape[0]))[:, None]
    return F.scaled_dot_product_attention(q.float().transpose(0, 1), k, v, attn_mask=mask).transpose(0, 1)


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])  # (query heads, KV heads): MHA and GQA
def test_reference_decode_equals_plain_attention(block_size, heads):
    lengths = [1, 7, 33]
    h, hkv = heads
    k_cache, v_cache, tables, keys, values = paged_setup(lengths, hkv, 8, block_size, torch.float32, "cpu")
    q = torch.randn(len(lengths), h, 8)
    out = ref.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor(lengths), 8**-0.5)
    for i in range(len(lengths)):
        torch.testing.assert_close(out[i], sdpa(q[i : i + 1], keys[i], values[i])[0], atol=1e-5, rtol=1e-5)


def test_reference_prefill_with_a_cached_prefix_equals_plain_causal_attention():
    block_size, hkv, h, d = 4, 2, 4, 8
    cached, new = [0, 5, 8], [3, 4, 1]
    total = [c + n for c, n in zip(cached, new)]
    k_cache, v_cache, tables, keys, values = paged_setup(total, hkv, d, block_size, torch.float32, "cpu")
    q = torch.randn(sum(new), h, d)
    cu = torch.tensor([0, *torch.cumsum(torch.tensor(new), 0).tolist()])
    k_new = torch.cat([keys[i][c:] for i, c in enumerate(cached)])
    v_new = torch.cat([values[i][c:] for i, c in enumerate(cached)])
    out = ref.prefill_attention(q, k_new, v_new, k_cache, v_cache, tables, cu, torch.tensor(cached), d**-0.5)
    for i, c in enumerate(cached):
        s, e = int(cu[i]), int(cu[i + 1])
        expected = sdpa(q[s:e], keys[i], values[i], causal_offset=c)
        torch.testing.assert_close(out[s:e], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("num_partitions", [1, 3])
def test_triton_decode_equals_reference(device, dtype, block_size, num_partitions):
    lengths = [1, 9, 40]
    k_cache, v_cache, tables, _, _ = paged_setup(lengths, 2, 16, block_size, dtype, device, seed=1)
    q = torch.randn(len(lengths), 4, 16, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    got = tri.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.25, num_partitions=num_partitions)
    want = ref.paged_decode_attention(q.cpu(), k_cache.cpu(), v_cache.cpu(), tables.cpu(), lens.cpu(), 0.25)
    torch.testing.assert_close(got.cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_cache_write_equals_reference_and_skips_padding(device, dtype):
    g = torch.Generator().manual_seed(3)
    k_cache = torch.zeros(6, 4, 2, 8, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    key = torch.randn(5, 2, 8, generator=g).to(dtype).to(device)
    value = torch.randn(5, 2, 8, generator=g).to(dtype).to(device)
    slots = torch.tensor([3, -1, 17, 0, 23], dtype=torch.int64, device=device)
    k_ref, v_ref = k_cache.clone().cpu(), v_cache.clone().cpu()
    ref.write_kv_cache(key.cpu(), value.cpu(), k_ref, v_ref, slots.cpu())
    tri.write_kv_cache(key, value, k_cache, v_cache, slots)
    torch.testing.assert_close(k_cache.cpu(), k_ref, atol=0, rtol=0)
    torch.testing.assert_close(v_cache.cpu(), v_ref, atol=0, rtol=0)
    assert k_cache.view(-1, 2, 8)[1].abs().sum() == 0  # the padded token wrote nothing


@pytest.mark.parametrize("device", DEVICES)
def test_triton_copy_blocks_equals_reference_in_every_layer(device):
    caches = torch.randn(3, 2, 8, 4, 2, 8, generator=torch.Generator().manual_seed(4)).to(device)
    mapping = torch.tensor([[1, 5], [2, 6], [1, 7]])
    want = caches.clone().cpu()
    ref.copy_blocks(want, mapping)
    tri.copy_blocks(caches, mapping)
    torch.testing.assert_close(caches.cpu(), want, atol=0, rtol=0)
    assert torch.equal(want[:, :, 5], want[:, :, 1]) and torch.equal(want[:, :, 7], want[:, :, 1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_triton_prefill_with_cached_prefix_equals_reference(device, dtype, block_size):
    hkv, h, d = 2, 4, 8
    cached, new = [0, 5, 19, 3], [3, 20, 1, 0]
    total = [c + n for c, n in zip(cached, new)]
    k_cache, v_cache, tables, keys, values = paged_setup(total, hkv, d, block_size, dtype, device, seed=5)
    q = torch.randn(sum(new), h, d, generator=torch.Generator().manual_seed(6)).to(dtype)
    cu = torch.tensor([0, *torch.cumsum(torch.tensor(new), 0).tolist()], dtype=torch.int32)
    k_new = torch.cat([keys[i][c:] for i, c in enumerate(cached)]).contiguous()
    v_new = torch.cat([values[i][c:] for i, c in enumerate(cached)]).contiguous()
    lens = torch.tensor(cached, dtype=torch.int32)
    want = ref.prefill_attention(
        q, k_new.cpu(), v_new.cpu(), k_cache.cpu(), v_cache.cpu(), tables.cpu(), cu, lens, d**-0.5
    )
    got = tri.prefill_attention(
        q.to(device),
        k_new.to(device),
        v_new.to(device),
        k_cache,
        v_cache,
        tables,
        cu.to(device),
        lens.to(device),
        d**-0.5,
    )
    torch.testing.assert_close(got.cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


# ---------------------------------------------------------------------- the CPU path equals the references
def _native_kernel():
    """pagelab_kernels.cpu_native when it builds; None where there is no C compiler (the CPU path then uses
    its compiled-PyTorch fallback). A compiler that is present but fails to build it is a failure."""
    from pagelab_kernels import cpu_native

    if cpu_native.available():
        return cpu_native
    if cpu_native.build_error in (cpu_native.NO_COMPILER, "PAGELAB_NATIVE=0"):
        return None
    pytest.fail(f"the native CPU kernel did not build: {cpu_native.build_error}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_cpu_ops_equal_the_references(dtype, heads):
    from pagelab_kernels import cpu_ops

    native = _native_kernel()
    h, hkv = heads
    # Lengths spread widely, so the decode path forms several buckets, some with padding.
    lengths = [1, 5, 16, 17, 64, 90, 300, 301]
    k_cache, v_cache, tables, _, _ = paged_setup(lengths, hkv, 8, 16, dtype, "cpu", seed=3)
    assert len(cpu_ops._buckets(lengths)) > 1
    q = torch.randn(len(lengths), h, 8).to(dtype)
    ctx = torch.tensor(lengths)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 2e-2}[dtype]
    expected = ref.paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.3)
    impls = [cpu_ops.compiled_decode_attention] + ([native.paged_decode_attention] if native else [])
    for impl in impls:
        got = impl(q, k_cache, v_cache, tables, ctx, 0.3)
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    # Prefill: 4, 3 and 6 new tokens after cached prefixes of 0, 5 and 17 tokens.
    cached = [0, 5, 17]
    cu = torch.tensor([0, 4, 7, 13], dtype=torch.int32)
    qp = torch.randn(13, h, 8).to(dtype)
    kp, vp = torch.randn(13, hkv, 8).to(dtype), torch.randn(13, hkv, 8).to(dtype)
    args = (qp, kp, vp, k_cache, v_cache, tables[:3], cu, torch.tensor(cached, dtype=torch.int32), 0.3)
    torch.testing.assert_close(
        cpu_ops.prefill_attention(*args), ref.prefill_attention(*args), atol=tol, rtol=tol
    )


def test_native_greedy_rows_equal_torch():
    cpu_native = _native_kernel()
    if cpu_native is None:
        pytest.skip("no C compiler: the native CPU kernels cannot be built")
    logits = torch.randn(7, 1000, generator=torch.Generator().manual_seed(1)) * 3
    tokens, lp = cpu_native.greedy_rows(logits)
    assert tokens.tolist() == torch.argmax(logits, -1).tolist()
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
