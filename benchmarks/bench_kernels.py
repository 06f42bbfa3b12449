"""Paged decode attention: microseconds, achieved GB/s as a fraction of a measured copy, and paged vs a
contiguous layout (the paper's question of section 7.1: how much does reading through a block table
cost?).

    python benchmarks/bench_kernels.py                       # CUDA: the Triton kernel (gpu_check.sh)
    python benchmarks/bench_kernels.py --device cpu --quick  # CPU: the native C kernel

For each batch (8, 32), context (64 ... 4096) and block size (1 ... 256): the paged kernel reads keys
and values through a shuffled block table; the contiguous reference is the same kernel over one
block per sequence sized to the context (a contiguous layout: block_size = context rounded up to a
power of two) and, on CUDA, PyTorch's fused scaled_dot_product_attention over contiguous [B, H, L, D]
tensors. Bandwidth is the bytes of keys and values read over the kernel time, as a fraction of a
device-to-device copy measured in the same run. Shapes: 40 heads of 128 (OPT-13B), fp16 on CUDA,
bf16 on CPU. Times are medians.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import torch.nn.functional as F

from harness.calib.timing import median_s
from harness.results import atomic_write


def copy_gbps(device: str, dtype, reps: int) -> float:
    """Bytes read + written per second of a 512 MiB (CPU: 128 MiB) device-to-device copy."""
    n = (512 if device == "cuda" else 128) * 2**20 // dtype.itemsize
    src = torch.empty(n, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    t = median_s(lambda: dst.copy_(src), reps, device=device)
    return 2 * src.numel() * dtype.itemsize / t / 1e9


def paged_setup(batch, ctx, block_size, heads, head_dim, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    nblocks = -(-ctx // block_size)
    total = batch * nblocks
    k = torch.randn(total, block_size, heads, head_dim, generator=g).to(dtype).to(device)
    v = torch.randn(total, block_size, heads, head_dim, generator=g).to(dtype).to(device)
    table = torch.randperm(total, generator=g).view(batch, nblocks).int().to(device)
    return k, v, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a small grid (CPU smoke runs)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--output", help="write the rows as JSON here")
    args = ap.parse_args()
    device = args.device
    if device == "cuda":
        from pagelab_kernels import triton_ops

        decode, dtype = triton_ops.paged_decode_attention, torch.float16
    else:
        from pagelab_kernels import cpu_native

        if not cpu_native.available():
            raise SystemExit(f"error: the native CPU kernel did not build: {cpu_native.build_error}")
        decode, dtype = cpu_native.paged_decode_attention, torch.bfloat16
    heads, head_dim = (40, 128) if not args.quick else (12, 64)
    batches = [8, 32] if not args.quick else [64]  # 64 x 256+ tokens: more than the 32 MB LLC
    contexts = [64, 256, 1024, 4096] if not args.quick else [256, 1024]
    block_sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256] if not args.quick else [1, 16, 256]
    copy = copy_gbps(device, dtype, args.reps)
    print(f"{device}: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; copy {copy:.1f} GB/s")
    cols = ["batch", "ctx", "block", "paged us", "GB/s", "of copy", "contig us", "paged/contig", "sdpa us"]
    widths = [5, 5, 5, 9, 7, 7, 9, 12, 8]
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    rows = []
    scale = head_dim**-0.5
    for batch in batches:
        for ctx in contexts:
            q = torch.randn(batch, heads, head_dim).to(dtype).to(device)
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
            kv_bytes = 2 * batch * ctx * heads * head_dim * dtype.itemsize
            contig_block = 1 << (ctx - 1).bit_length()
            kc, vc, tc = paged_setup(batch, ctx, contig_block, heads, head_dim, dtype, device)
            t_contig = median_s(partial(decode, q, kc, vc, tc, lens, scale), args.reps, device=device)
            t_sdpa = None
            if device == "cuda":
                ks = torch.randn(batch, heads, ctx, head_dim, dtype=dtype, device=device)
                vs = torch.randn_like(ks)
                qs = q.unsqueeze(2)
                t_sdpa = median_s(
                    partial(F.scaled_dot_product_attention, qs, ks, vs), args.reps, device=device
                )
                del ks, vs
            del kc, vc
            for bs in block_sizes:
                if bs > contig_block:
                    continue
                k, v, table = paged_setup(batch, ctx, bs, heads, head_dim, dtype, device)
                t = median_s(partial(decode, q, k, v, table, lens, scale), args.reps, device=device)
                gbps = kv_bytes / t / 1e9
                row = {
                    "batch": batch, "context": ctx, "block_size": bs, "paged_us": t * 1e6,
                    "gbps": gbps, "fraction_of_copy": gbps / copy, "contiguous_us": t_contig * 1e6,
                    "paged_over_contiguous": t / t_contig, "sdpa_us": t_sdpa and t_sdpa * 1e6,
                }  # fmt: skip
                rows.append(row)
                sdpa = f"{t_sdpa * 1e6:8.1f}" if t_sdpa else f"{'-':>8}"
                print(
                    f"{batch:>5} {ctx:>5} {bs:>5} {t * 1e6:9.1f} {gbps:7.1f} {gbps / copy:7.2f} "
                    f"{t_contig * 1e6:9.1f} {t / t_contig:12.2f} {sdpa}",
                    flush=True,
                )
                del k, v
    if args.output:
        meta = {
            "device": device,
            "dtype": str(dtype),
            "copy_gbps": copy,
            "heads": heads,
            "head_dim": head_dim,
        }
        if device == "cuda":
            meta["card"] = torch.cuda.get_device_name()
        atomic_write(args.output, json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
