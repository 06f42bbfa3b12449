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
