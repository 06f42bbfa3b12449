"""The native decode kernel linked two ways, side by side: without -ffast-math at link (pagelab's
build) and with it, where GCC's crtfastmath.o turns flush-to-zero on for the whole process. Each build
runs in its own process (flush-to-zero is process state), alternating, two rounds; it prints the best
of 5 x 20 calls of fp32 decode attention (32 sequences of 512 tokens, 9 query / 3 KV heads of 64).

    python benchmarks/bench_native_link.py
"""

from __future__ import annotations

import subprocess
import sys
import time


def run(mode: str) -> None:
    import numpy as np
    import torch

    from pagelab_kernels import cpu_native

    if mode == "fast-math-link":
        cpu_native.LINK = [*cpu_native.LINK, "-ffast-math"]
    assert cpu_native.available(), cpu_native.build_error
    ftz = bool(np.float32(1e-40) * np.float32(1.0) == 0)
    torch.manual_seed(0)
    nseq, ctx, heads, kv_heads, dim, bs = 32, 512, 9, 3, 64, 16
    nblocks = nseq * ctx // bs
    k = torch.randn(nblocks, bs, kv_heads, dim) * 3  # large scores: many exps far below 1
    v = torch.randn(nblocks, bs, kv_heads, dim)
    q = torch.randn(nseq, heads, dim) * 3
    tables = torch.arange(nblocks, dtype=torch.int32).view(nseq, -1)
    lens = torch.full((nseq,), ctx, dtype=torch.int32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            cpu_native.paged_decode_attention(q, k, v, tables, lens, dim**-0.5)
        best = min(best, (time.perf_counter() - t) / 20)
    print(f"{mode:16s} flush-to-zero {str(ftz):5s} {1e3 * best:.3f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        for _ in range(2):
            for mode in ("fast-math-link", "plain-link"):
                subprocess.run([sys.executable, __file__, mode], check=True)
