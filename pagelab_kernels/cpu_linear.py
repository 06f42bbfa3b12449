"""Linear layers on a CPU through oneDNN with each weight reordered once, at load, into the blocked
layout its GEMM reads (vLLM's CPU backend does the same with its oneDNN matmul).

`torch.nn.functional.linear` on a CPU hands the plain [out, in] weight to the BLAS on every call,
which repacks it into panels each time; with the layout done once, SmolLM2's fp32 GEMMs at 32 tokens
run 1.0-1.85x faster and its LM head (576 -> 49,152) 2.4x, measured on the development VM (AMD
EPYC, 2 vCPUs: `python benchmarks/bench_cpu_ops.py --linear`). At one token the smallest
projections lose ~15-30 us each to oneDNN's call overhead, which the LM head's gain outweighs. The
result differs from `F.linear` by summation order only (fp32: ~1e-6 relative).

`pack_linears(module)` replaces every `nn.Linear` inside a module by a `PackedLinear` in place; the
module keeps working as before (its forward calls the packed GEMM). PAGELAB_PACKED_LINEAR=0 turns it
off (paged/model_runner.py asks `enabled()`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

# The batch size oneDNN is told to expect when choosing the packed layout; any batch runs with it
# (measured: 1 to 1024 rows within a few percent of a layout chosen for that size).
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
