"""Linear layers on a CPU through oneDNN with each weight reordered once, at load, into the blocked
layout its GEMM reads (vLLM's CPU backend does the same with its oneDNN matmul).

`torch.nn.functional.linear` on a CPU hands the plain [out, in] weight to the BLAS on every call,
which repacks it into panels each time; with the layout done once, SmolLM2's fp32 GEMMs at 32 tokens
run 1.0-1.85x faster and its LM head (576 -> 49,152) 2.4x, measured on the development VM (AMD
EPYC, 2 vCPUs: `python benchmarks/bench_cpu_ops.py --linear`). At one token the smallest
projections lose ~15-30 us each to oneDNN's call overhead, which the LM head's gain outweighs. The
result differs from `F.linear` by summation order only (fp32: ~1e-6 relative).

`pack_linears(module)` replaces every `nn.Linear` inside a module by a `PackedLinear` in place; the
module keeps working as before (its forward calls the packed GEMM). `fuse(parent, names, as_name)`
packs several projections of one input (q, k, v; gate, up) into one GEMM, `FusedLinear`, as vLLM's
merged layers do: at 8 tokens, 21% less time on those GEMMs with the weights coming from DRAM.
PAGELAB_PACKED_LINEAR=0 turns all of it off (paged/model_runner.py asks `enabled()`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

# The batch size oneDNN is told to expect when choosing the packed layout (vLLM's CPU backend uses
# 32 too); any batch size runs with it.
BATCH_HINT = 32
DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def enabled() -> bool:
    return os.environ.get("PAGELAB_PACKED_LINEAR", "1") != "0" and available()


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """The [out, in] weight in oneDNN's blocked layout (an opaque tensor only `linear` reads)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), BATCH_HINT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ packed weight -> [..., out] (+ bias)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class PackedLinear(nn.Module):
    """An nn.Linear whose weight is kept in oneDNN's packed layout."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = packed_weight(layer.weight)
        self.bias = None if layer.bias is None else layer.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed (oneDNN)"


class FusedLinear(nn.Module):
    """Several nn.Linear of the same input as one packed GEMM; forward returns their outputs (views
    of one [..., sum of outputs] tensor)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.sizes = [m.out_features for m in layers]
        self.packed = packed_weight(torch.cat([m.weight.detach() for m in layers]))
        biases = [m.bias for m in layers]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [
                    b.detach() if b is not None else m.weight.new_zeros(m.out_features)
                    for b, m in zip(biases, layers)
                ]
            )

    def forward(self, x: torch.Tensor, split: bool = True):
        """The outputs, or with split=False the one [..., sum of outputs] tensor (called as the module
        either way, so timing hooks see it)."""
        y = linear(x, self.packed, self.bias)
        return y.split(self.sizes, dim=-1) if split else y


class FusedPart(nn.Module):
    """Stands where one of a FusedLinear's layers was, so that the model's own forward still runs
    (it computes the whole fused GEMM for its part: the runner calls the FusedLinear instead)."""

    def __init__(self, fused: FusedLinear, index: int) -> None:
        super().__init__()
        self._fused = [fused]  # not a submodule: the fused GEMM is its parent's
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused[0](x)[self.index]


def fuse(parent: nn.Module, names: list[str], as_name: str) -> bool:
    """Pack parent's linears `names` (CPU, fp32 or bf16, one input) into one FusedLinear, set as
    parent.<as_name>; each name then holds a FusedPart. False (nothing done) when they are not all
    such nn.Linear, or were fused already."""
    layers = [getattr(parent, n, None) for n in names]
    if not all(isinstance(m, nn.Linear) and m.weight.device.type == "cpu" for m in layers):
        return False
    if len({m.weight.dtype for m in layers}) != 1 or layers[0].weight.dtype not in DTYPES:
        return False
    fused = FusedLinear(layers)
    setattr(parent, as_name, fused)
    for i, n in enumerate(names):
        setattr(parent, n, FusedPart(fused, i))
    return True


def pack_linears(module: nn.Module) -> int:
    """Replace every CPU nn.Linear of fp32 or bf16 under `module` by a PackedLinear, in place; returns
    how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if (
            isinstance(child, nn.Linear)
            and child.weight.device.type == "cpu"
            and child.weight.dtype in DTYPES
        ):
            setattr(module, name, PackedLinear(child))
            count += 1
        else:
            count += pack_linears(child)
    return count
