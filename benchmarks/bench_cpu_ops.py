"""The CPU path's measured fixes, each against what it replaced, side by side in one run.

    python benchmarks/bench_cpu_ops.py
    python benchmarks/bench_cpu_ops.py --linear   # 4. alone
    python benchmarks/bench_cpu_ops.py --prefill  # 5. alone

1. native decode attention with its software prefetch, over 64 sequences x 512 tokens (12 x 64 heads,
   bf16, block 16) scattered at random through a large cache, against the same blocks laid out in
   order and small enough to stay in the last-level cache: how far memory, not compute, bounds it;
2. prompt attention through PyTorch's fused attention with 4-D inputs (its CPU flash kernel) against
   3-D inputs (the math path), causal, at 300 and 1000 tokens;
3. ReLU after a linear layer at 2048 tokens: a fresh output against in place (pagelab_kernels/cpu_ops.py and
   paged/model_runner.py cite these);
4. linear layers through oneDNN with the weight packed once (pagelab_kernels/cpu_linear.py) against
   `F.linear` on the plain weight, fp32, SmolLM2-135M's shapes (hidden 576, MLP 1536, KV 192, vocabulary
   49,152) at 1, 32 and 512 tokens, and bf16 where the CPU computes it natively.
5. (`--prefill` only: it loads SmolLM2-135M) a prefill of 40 ShareGPT-like prompts in fp32 as one
   step of every token against sub-batches of at most 2048, 1024 and 512 tokens
   (ModelRunner.prefill_chunk_tokens), each timed twice, alternating.
Times are medians of 20 runs, in milliseconds.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from harness.calib.timing import median_ms


def linears() -> None:
    from paged.cpu_features import native_bf16
    from pagelab_kernels import cpu_linear

    if not cpu_linear.available():
        raise SystemExit("error: this torch has no oneDNN (mkldnn) linear: nothing to compare")
    torch.manual_seed(0)
    shapes = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)
    for dt in [torch.float32] + ([torch.bfloat16] if native_bf16() else []):
        for k, n in shapes:
            w = torch.randn(n, k).to(dt)
            packed = cpu_linear.packed_weight(w)
            cells = []
            for m in (1, 32, 512):
                x = torch.randn(m, k).to(dt)
                plain = median_ms(lambda x=x, w=w: F.linear(x, w), 20)
                fast = median_ms(lambda x=x, p=packed: cpu_linear.linear(x, p), 20)
                cells.append(f"{m:>3} tokens {plain:7.3f} vs {fast:7.3f} ms ({plain / fast:.2f}x)")
            name = str(dt).removeprefix("torch.")
            print(f"linear {name} {k:>4} -> {n:>5}: F.linear vs packed: " + "; ".join(cells))


def prefill() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_throughput import make_requests

    from paged import SamplingParams
    from paged.checkpoints import smollm2_135m
    from paged.llm import LLM

    llm = LLM(model=str(smollm2_135m()), dtype="float32", kv_cache_gib=4)
    prompts = [r["prompt_token_ids"] for r in make_requests("sharegpt_synthetic", 40, 0, 49152, 2048)]
    params = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0)
    llm.generate(prompts[:2], params, use_tqdm=False)
    times: dict = {}
    for _ in range(2):
        for limit in (None, 2048, 1024, 512):
            llm.runner.prefill_chunk_tokens = limit
            t = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)  # one prefill step (and one token each)
            times.setdefault(limit, []).append(time.perf_counter() - t)
    tokens = sum(map(len, prompts))
    for limit, ts in times.items():
        print(
            f"prefill {tokens} tokens, sub-batches of {limit or 'all'} tokens: "
            + ", ".join(f"{t:.2f}" for t in ts)
            + " s"
        )


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--linear", action="store_true", help="only 4: packed oneDNN linears vs F.linear")
    ap.add_argument("--prefill", action="store_true", help="only 5: prefill sub-batches (loads SmolLM2)")
    args = ap.parse_args()
    if args.prefill:
        prefill()
        return
    if args.linear:
        linears()
        return
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
    linears()


if __name__ == "__main__":
    main()
