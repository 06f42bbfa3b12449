"""The CPU path's three measured fixes, each against what it replaced, side by side in one run.

    python benchmarks/bench_cpu_ops.py

1. native decode attention with its software prefetch, over 64 sequences x 512 tokens (12 x 64 heads,
   bf16, block 16) scattered at random through a large cache, against the same blocks laid out in
   order and small enough to stay in the last-level cache: how far memory, not compute, bounds it;
2. prompt attention through PyTorch's fused attention with 4-D inputs (its CPU flash kernel) against
   3-D inputs (the math path), causal, at 300 and 1000 tokens;
3. ReLU after a linear layer at 2048 tokens: a fresh output against in place (pagelab_kernels/cpu_ops.py and
   paged/model_runner.py cite these).
Times are medians of 20 runs, in milliseconds.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from harness.calib.timing import median_ms


def main() -> None:
    from pagelab_kernels import cpu_native

    torch.manual_seed(0)
    dt = torch.bfloat16
    if not cpu_native.available():
        raise SystemExit(f"error: the native CPU kernel did not build: {cpu_native.build_error}")
    batch, ctx, bs, heads, d = 64, 512, 16, 12, 64
    nb = ctx // bs
    q = torch.randn(batch, heads, d).to(dt)
    lens = torch.full((batch,), ctx, dtype=torch.int32)
    kv_bytes = 2 * batch * ctx * heads * d * 2
    big = 20000  # blocks: 1.2 GB of keys and values, far beyond the cache
    k, v = torch.randn(big, bs, heads, d).to(dt), torch.randn(big, bs, heads, d).to(dt)
    scattered = torch.randperm(big)[: batch * nb].view(batch, nb).int()
    hot = torch.arange(nb, dtype=torch.int32).repeat(batch, 1)  # every sequence reads the same 1.5 MB

    def decode(table, k=k, v=v):
        return lambda: cpu_native.paged_decode_attention(q, k, v, table, lens, d**-0.5)

    t_scattered, t_hot = median_ms(decode(scattered), 20), median_ms(decode(hot), 20)
    gbps_scattered, gbps_hot = kv_bytes / t_scattered / 1e6, kv_bytes / t_hot / 1e6
    print(f"decode 64 x 512, random blocks from DRAM: {t_scattered:.2f} ms ({gbps_scattered:.1f} GB/s)")
    print(f"decode 64 x 512, same blocks, cache-hot:  {t_hot:.2f} ms ({gbps_hot:.1f} GB/s)")

    for n in (300, 1000):
        x = torch.randn(3, heads, n, d).to(dt)
        three = median_ms(lambda x=x: F.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=True), 20)
        four = median_ms(lambda x=x: F.scaled_dot_product_attention(x[:1], x[1:2], x[2:], is_causal=True), 20)
        print(f"prompt attention {n} tokens: 3-D (math path) {three:.2f} ms, 4-D (flash) {four:.2f} ms")

    lin = torch.nn.Linear(768, 3072).to(dt)
    x = torch.randn(2048, 768).to(dt)
    with torch.inference_mode():

        def relu_time(fn):
            def step():
                y = lin(x)
                t = time.perf_counter()
                fn(y)
                return (time.perf_counter() - t) * 1e3

            step()
            return statistics.median(step() for _ in range(20))

        print(
            f"ReLU after a linear, 2048 x 3072: fresh output {relu_time(torch.relu):.2f} ms, "
            f"in place {relu_time(torch.relu_):.2f} ms"
        )


if __name__ == "__main__":
    main()
