"""Linear layers in oneDNN's packed layout (pagelab_kernels/cpu_linear.py) against F.linear, and the
model runner's use of them: same outputs to rounding, and greedy tokens unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagelab_kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch has no oneDNN linear")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(1, 576), (7, 576), (2, 5, 576)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear(dtype, tol, shape, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(576, 200, bias=bias).to(dtype)
    x = torch.randn(*shape).to(dtype)
    want = F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())
    got = cpu_linear.PackedLinear(layer)(x)
    assert got.shape == (*shape[:-1], 200) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_pack_linears_replaces_every_linear_in_place_and_keeps_the_output():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(32, 8))
    )
    x = torch.randn(4, 16)
    want = net(x)
    assert cpu_linear.pack_linears(net) == 2
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)
    assert cpu_linear.pack_linears(net) == 0  # packed layers are left alone


@pytest.mark.parametrize("biases", [(False, False, False), (True, True, True), (True, False, True)])
def test_fuse_packs_projections_of_one_input_into_one_gemm(biases):
    torch.manual_seed(0)
    parent = torch.nn.Module()
    for name, out, b in zip(("q", "k", "v"), (64, 16, 16), biases):
        setattr(parent, name, torch.nn.Linear(32, out, bias=b))
    x = torch.randn(5, 32)
    want = [getattr(parent, n)(x) for n in ("q", "k", "v")]
    assert cpu_linear.fuse(parent, ["q", "k", "v"], "qkv")
    got = parent.qkv(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # Each name still computes its own output (the model's own forward keeps working).
    for n, w in zip(("q", "k", "v"), want):
        torch.testing.assert_close(getattr(parent, n)(x), w, rtol=1e-5, atol=1e-5)
    assert not cpu_linear.fuse(parent, ["q", "k", "v"], "qkv")  # fused already


def test_a_packed_models_own_forward_still_gives_its_logits():
    from paged.model_runner import ModelRunner
    from tests.test_model_runner import tiny

    for family in ("llama", "opt"):
        model = tiny(family)
        ids = torch.tensor([[5, 17, 9, 33]])
        with torch.no_grad():
            want = model(ids).logits
            ModelRunner(model, 4, 4)  # packs and fuses in place
            got = model(ids).logits
        assert any(isinstance(m, cpu_linear.FusedLinear) for m in model.modules())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_runner_packs_on_cpu_and_the_switch_turns_it_off(monkeypatch):
    from paged.model_runner import ModelRunner
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, engine_greedy, hf_greedy, tiny

    model = tiny("llama")
    expected = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    got, _ = engine_greedy(model, PROMPTS, NEW_TOKENS)  # packs the model's layers in place
    assert got == expected
    assert any(isinstance(m, cpu_linear.PackedLinear) for m in model.modules())
    monkeypatch.setenv("PAGELAB_PACKED_LINEAR", "0")
    plain = tiny("opt")
    runner = ModelRunner(plain, 4, 4)
    assert runner._head_packed is None
    assert not any(isinstance(m, cpu_linear.PackedLinear) for m in plain.modules())


def test_a_big_prefill_in_sub_batches_gives_the_same_logits_and_tokens():
    """ModelRunner.forward on a CPU cuts a prefill of more than prefill_chunk_tokens tokens between
    sequences: the logits of every sequence as in one pass, and the same greedy tokens."""
    from paged.model_runner import split_prefill
    from tests.test_model_runner import NEW_TOKENS, PROMPTS, engine_greedy, tiny

    model = tiny("llama")
    whole, _ = engine_greedy(model, PROMPTS, NEW_TOKENS)
    import paged.model_runner as mr

    old = mr.PREFILL_CHUNK_TOKENS
    mr.PREFILL_CHUNK_TOKENS = 8  # PROMPTS are 7, 2 and 14 tokens: parts [7], [2], [14]
    try:
        parts, _ = engine_greedy(model, PROMPTS, NEW_TOKENS)
    finally:
        mr.PREFILL_CHUNK_TOKENS = old
    assert parts == whole
    # The split itself: whole sequences, at most the limit unless one sequence alone exceeds it.
    from paged.model_runner import StepInputs

    lens = [7, 2, 14, 3, 3]
    cu = torch.tensor([0, 7, 9, 23, 26, 29], dtype=torch.int32)
    n = int(cu[-1])
    inputs = StepInputs(
        input_ids=torch.arange(n), positions=torch.arange(n), slot_mapping=torch.arange(n),
        block_tables=torch.arange(len(lens))[:, None].int(), is_prefill=True, cu_seqlens=cu,
        cached_lens=torch.zeros(len(lens), dtype=torch.int32), logit_rows=cu[1:].long() - 1,
    )  # fmt: skip
    split = split_prefill(inputs, 10)
    assert [p.cu_seqlens.tolist() for p in split] == [[0, 7, 9], [0, 14], [0, 3, 6]]
    assert [p.logit_rows.tolist() for p in split] == [[6, 8], [13], [2, 5]]
    assert torch.cat([p.input_ids for p in split]).tolist() == list(range(n))
    assert [p.block_tables[:, 0].tolist() for p in split] == [[0, 1], [2], [3, 4]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_native_rms_norm_silu_and_mul_and_cache_write_equal_torch(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from pagelab_kernels import cpu_native
    from pagelab_kernels.reference import write_kv_cache

    if not cpu_native.available():
        pytest.skip(f"native kernel unavailable: {cpu_native.build_error}")
    torch.manual_seed(0)
    tol = {torch.float32: 1e-5, torch.bfloat16: 0.0, torch.float16: 2e-3}[dtype]  # bf16 rounds alike
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(96).to(dtype)
    x = torch.randn(37, 96).to(dtype)
    torch.testing.assert_close(cpu_native.rms_norm(x, norm.weight, 1e-5), norm(x), rtol=tol, atol=tol)
    gu = torch.randn(37, 2 * 80).to(dtype)
    want = F.silu(gu[:, :80]) * gu[:, 80:]
    torch.testing.assert_close(cpu_native.silu_and_mul(gu), want, rtol=tol, atol=tol)
    caches = [torch.zeros(10, 4, 3, 16, dtype=dtype) for _ in range(4)]
    k, v = torch.randn(7, 3, 16).to(dtype), torch.randn(7, 3, 16).to(dtype)
    slots = torch.tensor([0, 5, -1, 39, 12, 13, 2])  # -1: padding, not written
    write_kv_cache(k, v, caches[0], caches[1], slots)
    cpu_native.write_kv_cache(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_native_rotary_in_place_equals_transformers(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from pagelab_kernels import cpu_native

    if not cpu_native.available():
        pytest.skip(f"native kernel unavailable: {cpu_native.build_error}")
    torch.manual_seed(0)
    t, hq, hk, d = 6, 4, 2, 16
    qkv = torch.randn(t, (hq + 2 * hk) * d).to(dtype)  # the fused projection's output
    angles = torch.randn(t, d // 2)
    cos = torch.cat([angles.cos()] * 2, -1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, -1).to(dtype)
    q = qkv[:, : hq * d].reshape(t, hq, d).transpose(0, 1)[None]
    k = qkv[:, hq * d : (hq + hk) * d].reshape(t, hk, d).transpose(0, 1)[None]
    want_q, want_k = (
        x[0].transpose(0, 1).reshape(t, -1) for x in apply_rotary_pos_emb(q, k, cos[None], sin[None])
    )
    v = qkv[:, (hq + hk) * d :].clone()
    cpu_native.rotary(qkv, hq, cos, sin)
    cpu_native.rotary(qkv[:, hq * d :], hk, cos, sin)
    tol = {torch.float32: 1e-5, torch.bfloat16: 0.0, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(qkv[:, : hq * d], want_q, rtol=tol, atol=tol)
    torch.testing.assert_close(qkv[:, hq * d : (hq + hk) * d], want_k, rtol=tol, atol=tol)
    assert torch.equal(qkv[:, (hq + hk) * d :], v)  # values untouched
