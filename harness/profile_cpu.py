"""Measure this machine's operator costs and write a hardware preset for the simulator.

    python -m harness.profile_cpu --model opt-125m --out results/bench/cpu_local
    python -m harness.sim_vs_real --hardware results/bench/cpu_local.yaml     # then check it

The simulator's cost model (harness/cost_model.py) predicts a step from operators; on the paper's GPUs
their costs come from public profiles (Vidur, DistServe). Here the same quantities are measured on
this CPU, for one model's shapes, in bf16, with the engine's own kernels, Vidur's way (profile each
operator at many sizes, interpolate): nothing is fitted to end-to-end latencies, which is what the
preset is checked against.

- memory bandwidth: a 256 MiB copy (bytes read + written per second); peak: a large bf16 GEMM;
- GEMM efficiency at N tokens: the layer's four projections (QKV, output, MLP in, MLP out) timed with
  torch's linear over every layer's own weights in turn (as a forward pass streams them), as roofline
  time over measured time;
- the rest of a layer (norms, activation, residuals, Python): the runner's whole decode forward at N
  one-token sequences, less the measured GEMMs, per layer;
- decode attention: the native kernel's bytes per second over the copy's (block 256: contiguous), and
  its block-16 overhead in the cost model's form (1 + overhead / block_size);
- prefill attention: fused causal attention's FLOPs per second over the peak;
- engine overheads: an executor step less its forward pass (scheduling-side Python: batch
  preparation, sampling), for 1 and 64 decoding sequences and for 16- and 512-token prompts;
- swap: the runner's block moves between its device and host pools (here both in RAM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def timeit(fn, reps: int = 7) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(model_name: str, reps: int = 7) -> tuple[dict, dict]:
    """(hardware preset fields, calibration JSON) for this machine and model."""
    from harness.presets import load_model
    from kernels import cpu_native
    from paged.llm import load_hf_model
    from paged.model_runner import ModelRunner, StepInputs

    spec = load_model(model_name)
    dt = torch.bfloat16
    h, L = spec.hidden_size, spec.num_hidden_layers

    n = 128 * 2**20  # 256 MiB, 8x the last-level cache of the machines we run on
    src, dst = torch.randn(n).to(dt), torch.empty(n, dtype=dt)
    copy_gbps = 2 * n * 2 / timeit(lambda: dst.copy_(src), reps) / 1e9
    a, w = torch.randn(2048, h).to(dt), torch.randn(4 * h, h).to(dt)
    peak_tflops = 2 * 2048 * h * 4 * h / timeit(lambda: F.linear(a, w), reps) / 1e12

    shapes = [
        (h, spec.qkv_width),
        (h, h),
        (h, (spec.num_mlp_matrices - 1) * spec.mlp_width),
        (spec.mlp_width, h),
    ]
    # Every layer's own weights, swept in order as a forward pass does: one layer's (14 MB for
    # OPT-125m) would stay in the last-level cache and make small-N GEMMs look faster than they run.
    layers = [[torch.randn(m, k).to(dt) for k, m in shapes] for _ in range(L)]
    bytes_per_ms, flops_per_ms = copy_gbps * 1e9 / 1e3, peak_tflops * 1e12 / 1e3
    gemm_eff, gemm_ms = [], {}

    def sweep(xs):
        for weights in layers:
            for x, w in zip(xs, weights):
                F.linear(x, w)

    for t in TOKENS:
        xs = [torch.randn(t, k).to(dt) for k, _ in shapes]
        measured = timeit(lambda xs=xs: sweep(xs), reps) * 1e3 / L
        roofline = sum(
            max((k * m + t * k + t * m) * 2 / bytes_per_ms, 2 * t * k * m / flops_per_ms) for k, m in shapes
        )
        gemm_eff.append(roofline / measured)
        gemm_ms[t] = measured

    # The rest of a layer: the whole forward at N one-token sequences, less GEMMs and the LM head.
    hf, _ = load_hf_model(model_name, dt, "cpu", 0)
    runner = ModelRunner(hf, max(TOKENS), 1, 64)
    head = hf.lm_head.weight.detach()
    norm_ms = []
    for t in TOKENS:
        ids = torch.arange(t) % spec.vocab_size
        inputs = StepInputs(
            input_ids=ids,
            positions=torch.zeros(t, dtype=torch.long),
            slot_mapping=torch.arange(t),
            block_tables=torch.arange(t, dtype=torch.int32)[:, None],
            is_prefill=False,
            context_lens=torch.ones(t, dtype=torch.int32),
            logit_rows=torch.arange(t),
        )
        total = timeit(lambda inputs=inputs: runner.forward(inputs), reps) * 1e3
        x = torch.randn(t, h).to(dt)
        lm = timeit(lambda x=x: F.linear(x, head), reps) * 1e3
        norm_ms.append(max(0.0, (total - lm - L * gemm_ms[t]) / L))

    # Decode attention bandwidth (the engine's native kernel), contiguous and at block 16.
    hkv, d = spec.num_key_value_heads, spec.head_dim
    batch, ctx = 32, 512
    q = torch.randn(batch, spec.num_attention_heads, d).to(dt)
    lens = torch.full((batch,), ctx, dtype=torch.int32)

    def attn_s(bs: int) -> float:
        nb = ctx // bs
        kc = torch.randn(batch * nb, bs, hkv, d).to(dt)
        vc = torch.randn_like(kc)
        table = torch.randperm(batch * nb).view(batch, nb).int()
        return timeit(lambda: cpu_native.paged_decode_attention(q, kc, vc, table, lens, d**-0.5), reps)

    if not cpu_native.available():
        raise RuntimeError(f"the native CPU kernel did not build: {cpu_native.build_error}")
    kv_bytes = 2 * batch * ctx * hkv * d * 2
    t_contig, t16 = attn_s(256), attn_s(16)
    decode_eff = kv_bytes / t_contig / (copy_gbps * 1e9)
    block_overhead = max(0.0, (t16 / t_contig - 1) * 16)

    qp = torch.randn(spec.num_attention_heads, 512, d).to(dt)
    t_pf = timeit(lambda: F.scaled_dot_product_attention(qp, qp, qp, is_causal=True), reps)
    prefill_eff = 2 * h * 512 * 512 / t_pf / (peak_tflops * 1e12)

    # Engine overheads: an executor step less its forward pass.
    overheads = _overheads(hf, reps)

    # Swap: the runner's block moves (one indexed copy for all layers).
    t1 = timeit(lambda: runner.swap([(0, 0)], to_host=True), reps)
    t64 = timeit(lambda: runner.swap([(i, i) for i in range(64)], to_host=True), reps)
    block_bytes_layer = d * hkv * 2  # block size 1, K or V, one layer
    per_block_s = (t64 - t1) / 63
    swap_gbps = 2 * L * block_bytes_layer / max(per_block_s, 1e-12) / 1e9

    hardware = {
        "name": f"cpu-{model_name}",
        # RAM; the comparison fixes the KV memory itself (kv_cache_gib), so this only bounds it.
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "hbm_bandwidth_gbps": round(copy_gbps, 2),
        "peak_fp16_tflops": round(peak_tflops, 4),
        "nvlink_gbps": 0,
        "pcie_gbps": round(swap_gbps, 2),
        "calibration": "cpu",
    }
    source = f"harness/profile_cpu.py --model {model_name}, {torch.get_num_threads()} threads, bf16"
    calibration = {
        "command": f"python -m harness.profile_cpu --model {model_name}",
        "cpu": {
            "gemm": {"tokens": TOKENS, "efficiency": {"1": gemm_eff}},
            "norm_ops": {"tokens": TOKENS, "ms_per_layer": norm_ms, "hidden_size": h},
            "allreduce": {},
            "source": source,
        },
        "paged_kernel": {"block_overhead": block_overhead, "source": source},
        "attention": {
            "decode_bandwidth_efficiency_contiguous": decode_eff,
            "prefill_flops_efficiency": prefill_eff,
            "source": source,
        },
        "swap": {"pcie_efficiency": 1.0, "per_copy_us": t1 * 1e6 / (2 * L), "source": source},
        "overheads": {"by_tp": {"1": overheads}},
    }
    return hardware, calibration


def _overheads(hf, reps: int) -> dict:
    """Executor time outside the forward pass (prepare + sample), per step and per sequence/token."""
    from paged import CacheConfig, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
    from paged.block_manager import BlockManager
    from paged.model_runner import ModelRunner, RealExecutor

    runner = ModelRunner(hf, 2048, 16, 0)
    cache = CacheConfig(num_gpu_blocks=2048, block_size=16, num_cpu_blocks=0)

    def step_outside_forward(prompts: list[list[int]], decode: bool) -> float:
        cfg = SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=256, max_model_len=2048)
        memory = BlockManager(cache, 2048)
        sched = Scheduler(cfg, memory)
        params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
        for i, p in enumerate(prompts):
            sched.add(SequenceGroup(str(i), p, params))
        ex = RealExecutor(runner, memory)
        out = sched.schedule(0.0)
        if decode:
            sched.postprocess(out, ex.execute(out).outputs, 0.0)
            out = sched.schedule(0.0)
        forward = runner.forward
        spent = []

        def timed(inputs):
            t = time.perf_counter()
            r = forward(inputs)
            spent.append(time.perf_counter() - t)
            return r

        runner.forward = timed
        try:
            total = timeit(lambda: ex.execute(out), reps)
        finally:
            runner.forward = forward
        return (total - statistics.median(spent)) * 1e3

    d1 = step_outside_forward([[5] * 8], True)
    d64 = step_outside_forward([[5] * 8] * 64, True)
    p16 = step_outside_forward([[5] * 16], False)
    p512 = step_outside_forward([[5] * 512], False)
    per_seq = max(0.0, (d64 - d1) / 63)
    per_tok = max(0.0, (p512 - p16) / 496)
    return {
        "step_ms": max(0.0, d1 - per_seq),
        "per_seq_ms": per_seq,
        "prefill_step_ms": max(0.0, p16 - 16 * per_tok),
        "prefill_per_token_ms": per_tok,
    }


def main(argv: list[str] | None = None) -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="opt-125m", help="the model preset whose shapes are profiled")
    ap.add_argument(
        "--out", default="results/bench/cpu_local", help="writes OUT.yaml and OUT.calibration.json"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware, calibration = measure(args.model, args.reps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cal_path = out.with_name(out.name + ".calibration.json")
    hardware["calibration_file"] = cal_path.name
    for path, text in (
        (cal_path, json.dumps(calibration, indent=1)),
        (out.with_name(out.name + ".yaml"), f"# {calibration['cpu']['source']}\n" + yaml.safe_dump(hardware)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(json.dumps(hardware, indent=1))
    print(f"wrote {out}.yaml and {cal_path}")


if __name__ == "__main__":
    main()
