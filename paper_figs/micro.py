"""The two microbenchmarks of the paper (Figures 18(a) and 19(a)), measured on the machine at hand, and
the simulator's prediction of the same quantities on the paper's A100.

- Attention kernel latency (18(a)): decode attention of one layer of OPT-13B (40 heads of 128) for
  batch 8 and 32 and contexts 64, 128, 256, through a block table of 16-token blocks (vLLM) and over
  contiguous memory (FasterTransformer's layout: the same kernel with one block per sequence, as
  benchmarks/bench_kernels.py). CUDA: the Triton kernel, fp16. CPU: the native C kernel, fp32.
- Swap and recompute (19(a)): moving the KV of 256 tokens out to host memory and back with the real
  engine's ModelRunner.swap at block sizes 1-256, against recomputing them (one 256-token prompt's
  forward pass). A 13B model does not fit a CPU run, so the CPU measures the OPT-125m preset's shapes
  (random weights); the prediction is the cost model's, OPT-13B on an A100-40GB. pagelab's runner moves
  all of a step's blocks in one indexed copy, where vLLM v0 (and the cost model's `swap_ms`) pays one
  copy per block and layer: the measured swap therefore barely depends on the block size, and the
  paper's steep fall with block size shows only in the prediction.
"""

from __future__ import annotations

import torch

from harness.calib.timing import median_s
from paged.cpu_features import cpu_model

BLOCK_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def _kv(batch: int, ctx: int, block_size: int, heads: int, head_dim: int, dtype, device):
    g = torch.Generator().manual_seed(0)
    nblocks = -(-ctx // block_size)
    k = torch.randn(batch * nblocks, block_size, heads, head_dim, generator=g).to(dtype).to(device)
    v = torch.randn(batch * nblocks, block_size, heads, head_dim, generator=g).to(dtype).to(device)
    table = torch.randperm(batch * nblocks, generator=g).view(batch, nblocks).int().to(device)
    return k, v, table


def kernel_latency(reps: int) -> dict:
    """Measured µs of paged (block 16) and contiguous decode attention, per (batch, context)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        from pagelab_kernels import triton_ops

        decode, dtype = triton_ops.paged_decode_attention, torch.float16
        what = "Triton paged kernel, fp16"
    else:
        from pagelab_kernels import cpu_native

        if not cpu_native.available():
            raise RuntimeError(f"the native CPU kernel did not build: {cpu_native.build_error}")
        decode, dtype = cpu_native.paged_decode_attention, torch.float32
        what = "native C kernel, fp32"
    heads, head_dim = 40, 128
    rows = []
    for batch in (8, 32):
        for ctx in (64, 128, 256):
            q = torch.randn(batch, heads, head_dim).to(dtype).to(device)
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
            row = {"batch": batch, "context": ctx}
            for layout, bs in (("paged", 16), ("contiguous", 1 << (ctx - 1).bit_length())):
                k, v, table = _kv(batch, ctx, bs, heads, head_dim, dtype, device)
                t = median_s(lambda: decode(q, k, v, table, lens, head_dim**-0.5), reps, device=device)  # noqa: B023
                row[f"{layout}_us"] = t * 1e6
            rows.append(row)
    return {"machine": machine(), "what": what, "rows": rows}


def kernel_prediction() -> list[dict]:
    """The cost model's decode attention of one OPT-13B layer on an A100-40GB, paged and contiguous."""
    from harness.sim.cost_model import CostModel
    from harness.sim.hardware import load_hardware
    from paged.presets import load_model

    cm = CostModel(load_model("opt-13b"), load_hardware("a100-40gb"), block_size=16)
    return [
        {
            "batch": b,
            "context": c,
            "paged_us": 1e3 * cm.decode_attention_ms(b * c, paged=True),
            "contiguous_us": 1e3 * cm.decode_attention_ms(b * c, paged=False),
        }
        for b in (8, 32)
        for c in (64, 128, 256)
    ]


def swap_recompute(reps: int, tokens: int = 256) -> dict:
    """Measured ms to swap `tokens` tokens of KV out, in, and to recompute them, by block size, with
    the real engine's ModelRunner on this machine (OPT-125m shapes, fp32 on CPU, fp16 on CUDA)."""
    from paged.model_loader import load_hf_model
    from paged.model_runner import ModelRunner, StepInputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    hf, _ = load_hf_model("opt-125m", dtype, device, 0)
    rows = []
    recompute_ms = None
    for bs in BLOCK_SIZES:
        n = tokens // bs
        runner = ModelRunner(hf, n, bs, n)
        pairs = [(i, i) for i in range(n)]
        out_ms = 1e3 * median_s(lambda: runner.swap(pairs, to_host=True), reps, device=device)  # noqa: B023
        in_ms = 1e3 * median_s(lambda: runner.swap(pairs, to_host=False), reps, device=device)  # noqa: B023
        if recompute_ms is None:  # the prompt's forward pass does not depend on the block size
            pos = torch.arange(tokens, device=device)
            inputs = StepInputs(
                input_ids=torch.randint(0, 50000, (tokens,), device=device),
                positions=pos,
                slot_mapping=pos.clone(),
                block_tables=torch.arange(n, dtype=torch.int32, device=device)[None],
                is_prefill=True,
                cu_seqlens=torch.tensor([0, tokens], dtype=torch.int32, device=device),
                cached_lens=torch.zeros(1, dtype=torch.int32, device=device),
                logit_rows=torch.tensor([tokens - 1], device=device),
            )
            runner.warmup()
            recompute_ms = 1e3 * median_s(lambda: runner.forward(inputs), reps, device=device)  # noqa: B023
        rows.append({"block_size": bs, "swap_out_ms": out_ms, "swap_in_ms": in_ms,
                     "swap_in_out_ms": out_ms + in_ms, "recompute_ms": recompute_ms})  # fmt: skip
    what = f"real engine (ModelRunner.swap, forward), OPT-125m shapes, {str(dtype).replace('torch.', '')}"
    return {"machine": machine(), "what": what, "tokens": tokens, "rows": rows}


def swap_recompute_prediction(tokens: int = 256) -> list[dict]:
    """The cost model's swap of `tokens` tokens each way and a `tokens`-token prompt, OPT-13B on an
    A100-40GB, by block size."""
    from harness.sim.cost_model import CostModel
    from harness.sim.hardware import load_hardware
    from paged.presets import load_model

    model, gpu = load_model("opt-13b"), load_hardware("a100-40gb")
    rows = []
    for bs in BLOCK_SIZES:
        cm = CostModel(model, gpu, block_size=bs, max_table_tokens=tokens)
        one_way, recompute = cm.swap_ms(tokens // bs), cm.prefill([(tokens, 0)]).total_ms
        rows.append({"block_size": bs, "swap_out_ms": one_way, "swap_in_ms": one_way,
                     "swap_in_out_ms": 2 * one_way, "recompute_ms": recompute})  # fmt: skip
    return rows


def note(tier: str) -> str:
    """The line under Figures 18 and 19: which panel is predicted, measured, simulated."""
    return (
        "(a) left: the simulator's cost model, stars the paper's eye-read values; middle: measured here; "
        f"(b) pagelab simulator, {tier} tier"
    )
