"""Measure this machine's operator costs and write a hardware preset for the simulator.

    python -m harness.calib.profile --model opt-125m --out results/bench/cpu_local
    python -m harness.calib.sim_vs_real --hardware results/bench/cpu_local.yaml     # then check it

The simulator's cost model (harness/sim/cost_model.py) predicts a step from operators; on the paper's GPUs
their costs come from public profiles (Vidur, DistServe). Here the same quantities are measured on
this CPU, for one model's shapes, in bf16, with the engine's own kernels, Vidur's way (profile each
operator at many sizes, interpolate): nothing is fitted to end-to-end latencies, which is what the
preset is checked against.

- memory bandwidth: a 256 MiB copy (bytes read + written per second); peak: a large bf16 GEMM;
- the forward pass itself, its parts timed where they run (timing.ForwardTimer: module hooks on every
  linear, the runner's timing hook around attention and the LM head), at N one-token sequences for
  N = 1 ... 2048: GEMM and LM-head efficiency (roofline time over measured time) and the rest of a
  layer (norms, activation, residuals, KV writes, Python) as the forward's total less those parts,
  all from the same runs, so the cost model gives back each measured forward exactly;
- decode attention: the kernel's time per context token in the same forward (64 sequences at 512
  tokens less the same at 16), as bandwidth over the copy's; its block-size overhead from the
  kernel alone at block 16 vs 256, in the cost model's form (1 + overhead / block_size);
- prefill attention: the runner's prompt attention in place, causal FLOPs per second over the
  peak, for prompts of 16 ... 2048 tokens;
- engine overheads: an executor step less its forward pass (scheduling-side Python: batch
  preparation, sampling), for 1 and 64 decoding sequences and for 16- and 512-token prompts;
- swap: the runner's block moves between its device and host pools (here both in RAM).

Every case runs `--rounds` times, interleaved, and the median is kept: this machine is shared and
its speed drifts by about 10% over seconds to minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.calib.timing import ForwardTimer, median_ms, median_s, timed_forward
from harness.results import atomic_write
from harness.sim.cost_model import roofline_ms
from paged.model_runner import StepInputs
from paged.presets import load_model

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def measure(model_name: str, reps: int = 7, rounds: int = 3) -> tuple[dict, dict]:
    """(hardware preset fields, calibration JSON) for this machine and model."""
    from paged.model_loader import load_hf_model
    from paged.model_runner import ModelRunner
    from pagelab_kernels import cpu_native

    spec = load_model(model_name)
    dt = torch.bfloat16
    h, L = spec.hidden_size, spec.num_hidden_layers

    n = 128 * 2**20  # 256 MiB, 8x the last-level cache of the machines we run on
    src, dst = torch.randn(n).to(dt), torch.empty(n, dtype=dt)
    copy_gbps = 2 * n * 2 / median_s(lambda: dst.copy_(src), reps) / 1e9
    a, w = torch.randn(2048, h).to(dt), torch.randn(4 * h, h).to(dt)
    peak_tflops = 2 * 2048 * h * 4 * h / median_s(lambda: F.linear(a, w), reps) / 1e12

    shapes = [
        (h, spec.qkv_width),
        (h, h),
        (h, (spec.num_mlp_matrices - 1) * spec.mlp_width),
        (spec.mlp_width, h),
    ]
    bytes_per_ms, flops_per_ms = copy_gbps * 1e9 / 1e3, peak_tflops * 1e12 / 1e3

    def roof(t: int, k: int, m: int) -> float:  # bf16
        return roofline_ms(t, k, m, 2, bytes_per_ms, flops_per_ms)

    if not cpu_native.available():
        raise RuntimeError(f"the native CPU kernel did not build: {cpu_native.build_error}")
    hf, _ = load_hf_model(model_name, dt, "cpu", 0)
    bs, num_blocks = 16, 4096
    runner = ModelRunner(hf, num_blocks, bs, 0)
    runner.warmup()
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).int()

    def decode_inputs(n: int, ctx: int) -> StepInputs:
        """n sequences decoding their token ctx, their blocks scattered over the cache."""
        nb = -(-ctx // bs)
        assert n * nb <= num_blocks
        tables = perm[: n * nb].view(n, nb)
        return StepInputs(
            input_ids=torch.arange(n) % spec.vocab_size,
            positions=torch.full((n,), ctx - 1, dtype=torch.long),
            slot_mapping=tables[:, (ctx - 1) // bs].long() * bs + (ctx - 1) % bs,
            block_tables=tables,
            is_prefill=False,
            context_lens=torch.full((n,), ctx, dtype=torch.int32),
            logit_rows=torch.arange(n),
        )

    def prefill_inputs(n: int) -> StepInputs:
        nb = -(-n // bs)
        table = perm[:nb].view(1, nb)
        slots = torch.arange(n)
        return StepInputs(
            input_ids=torch.arange(n) % spec.vocab_size,
            positions=slots,
            slot_mapping=table[0, slots // bs].long() * bs + slots % bs,
            block_tables=table,
            is_prefill=True,
            cu_seqlens=torch.tensor([0, n]),
            cached_lens=torch.tensor([0]),
            logit_rows=torch.tensor([n - 1]),
        )

    # The runner's own forward pass, its parts timed where they run (ForwardTimer; Vidur's operator
    # profile, in place). N one-token sequences at context 1: linears, LM head and the rest of a layer
    # at N tokens. Decode attention: the kernel's cost per context token (64 sequences at 512 tokens
    # less the same at 16; the per-sequence part is already in the rest), as bandwidth over the
    # copy's. Prefill attention: causal FLOPs per second over the peak, by prompt length.
    batch, ctx = 64, 512
    prefill_tokens = [16, 64, 128, 256, 512, 1024, 2048]
    cases = [("decode", t, decode_inputs(t, 1)) for t in TOKENS]  # N one-token sequences, context 1
    cases += [("long", batch, decode_inputs(batch, ctx)), ("short", batch, decode_inputs(batch, bs))]
    cases += [("prefill", n, prefill_inputs(n)) for n in prefill_tokens]
    # Every case is measured in `rounds` interleaved rounds and the median kept: this shared machine's
    # speed drifts by ~10% over seconds to minutes (docs/real_engine.md), and samples spread over the
    # profile's whole span keep one fast or slow moment from setting a table.
    samples: dict[tuple[str, int], list[dict]] = {(kind, n): [] for kind, n, _ in cases}
    probes = []
    for _ in range(rounds):
        probes.append(speed_probe(runner))
        for kind, n, inputs in cases:
            samples[kind, n].append(timed_forward(runner, inputs, reps))

    def part(kind: str, n: int, name: str) -> float:
        return statistics.median(s[name] for s in samples[kind, n])

    gemm_eff, head_eff, norm_ms = [], [], []
    for t in TOKENS:
        linear, head = part("decode", t, "linear"), part("decode", t, "lm_head")
        gemm_eff.append(L * sum(roof(t, k, m) for k, m in shapes) / linear)
        head_eff.append(roof(t, h, spec.vocab_size) / head)
        norm_ms.append(
            statistics.median((s["total"] - s["linear"] - s["lm_head"]) / L for s in samples["decode", t])
        )
    kv_bytes_per_token = spec.kv_bytes_per_token()
    ms_per_token = (part("long", batch, "attention") - part("short", batch, "attention")) / (
        batch * (ctx - bs)
    )
    decode_eff = kv_bytes_per_token / ms_per_token / bytes_per_ms
    # The block-size overhead from the kernel alone, block 16 vs 256 (cost model: 1 + overhead / block).
    block_overhead = _block_overhead(spec, dt, reps)
    prefill_eff = [L * 2 * h * n * n / flops_per_ms / part("prefill", n, "attention") for n in prefill_tokens]

    # Engine overheads: an executor step less its forward pass.
    runs = [_overheads(hf, reps) for _ in range(rounds)]
    overheads = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    # Swap: the runner's block moves (one indexed copy for all layers), blocks of one token.
    swapper = ModelRunner(hf, 64, 1, 64)
    t1 = median_s(lambda: swapper.swap([(0, 0)], to_host=True), reps)
    t64 = median_s(lambda: swapper.swap([(i, i) for i in range(64)], to_host=True), reps)
    block_bytes_layer = spec.kv_bytes_per_block(1, dt.itemsize) // L // 2  # block size 1, K or V, one layer
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
    source = f"harness/calib/profile.py --model {model_name}, {torch.get_num_threads()} threads, bf16"
    calibration = {
        "command": f"python -m harness.calib.profile --model {model_name} --reps {reps} --rounds {rounds}",
        "cpu": {
            "gemm": {"tokens": TOKENS, "efficiency": {"1": gemm_eff}},
            "lm_head": {"tokens": TOKENS, "efficiency": head_eff},
            "norm_ops": {"tokens": TOKENS, "ms_per_layer": norm_ms, "hidden_size": h},
            "allreduce": {},
            "source": source,
        },
        "paged_kernel": {"block_overhead": block_overhead, "source": source},
        "attention": {
            "decode_bandwidth_efficiency_contiguous": decode_eff,
            "prefill_flops_efficiency": prefill_eff[prefill_tokens.index(512)],
            "prefill_flops_efficiency_by_tokens": {"tokens": prefill_tokens, "efficiency": prefill_eff},
            "source": source,
        },
        "swap": {"pcie_efficiency": 1.0, "per_copy_us": t1 * 1e6 / (2 * L), "source": source},
        "overheads": {"by_tp": {"1": overheads}},
        "probe": {
            "ms": statistics.median(probes),
            "rounds_ms": probes,
            "what": "harness.calib.profile.speed_probe",
        },
    }
    return hardware, calibration


PROBE_SEQS = 16


def speed_probe(runner, reps: int = 11, n: int = PROBE_SEQS) -> float:
    """Median ms of one fixed forward (n one-token sequences at context 1, in the runner's first n
    blocks): a yardstick of how fast this machine runs right now. The profile records it; sim_vs_real
    takes it again around every real run, so a gap can be read against the machine's drift. Writes
    KV into blocks 0 to n-1: call it only while the cache holds nothing."""
    bs = runner.block_size
    inputs = StepInputs(
        input_ids=torch.arange(n), positions=torch.zeros(n, dtype=torch.long),
        slot_mapping=torch.arange(n) * bs, block_tables=torch.arange(n, dtype=torch.int32)[:, None],
        is_prefill=False, context_lens=torch.ones(n, dtype=torch.int32), logit_rows=torch.arange(n),
    )  # fmt: skip
    return median_ms(lambda: runner.forward(inputs), reps)


def _block_overhead(spec, dt, reps: int) -> float:
    """The native kernel's extra time at block 16 over block 256 (a contiguous layout), in the cost
    model's form: time(16) = time(contiguous) * (1 + overhead / 16)."""
    from pagelab_kernels import cpu_native

    hkv, d, batch, ctx = spec.num_key_value_heads, spec.head_dim, 32, 512
    q = torch.randn(batch, spec.num_attention_heads, d).to(dt)
    lens = torch.full((batch,), ctx, dtype=torch.int32)

    def attn_s(bs: int) -> float:
        nb = ctx // bs
        kc = torch.randn(batch * nb, bs, hkv, d).to(dt)
        vc = torch.randn_like(kc)
        table = torch.randperm(batch * nb).view(batch, nb).int()
        return median_s(lambda: cpu_native.paged_decode_attention(q, kc, vc, table, lens, d**-0.5), reps)

    return max(0.0, (attn_s(16) / attn_s(256) - 1) * 16)


def _overheads(hf, reps: int) -> dict:
    """Executor time outside the forward pass (prepare + sample), per step and per sequence/token."""
    from paged import CacheConfig, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup
    from paged.block_manager import BlockManager
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor

    runner = ModelRunner(hf, 2048, 16, 0)
    cache = CacheConfig(num_gpu_blocks=2048, block_size=16, num_cpu_blocks=0)

    def step_outside_forward(prompts: list[list[int]], decode: bool) -> float:
        cfg = SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=256, max_model_len=2048)
        memory = BlockManager(cache, 2048)
        sched = Scheduler(cfg, memory)
        params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
        for i, p in enumerate(prompts):
            sched.add(SequenceGroup(str(i), p, params))
        ex = RealExecutor(runner)
        out = sched.schedule(0.0)
        if decode:
            sched.postprocess(out, ex.execute(out).outputs, 0.0)
            out = sched.schedule(0.0)
        forward_ms = []  # every call's forward pass, from the runner's timing hook
        with ForwardTimer(runner, linears=False) as timer:

            def step() -> None:
                timer.reset()
                ex.execute(out)
                forward_ms.append(timer.parts["forward"])

            total = median_ms(step, reps)
        return total - statistics.median(forward_ms)

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
    ap.add_argument("--reps", type=int, default=7, help="timed runs per case and round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases (median)")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.rounds < 1:
        raise SystemExit("error: --reps and --rounds must be at least 1")
    try:
        load_model(args.model)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        hardware, calibration = measure(args.model, args.reps, args.rounds)
    except RuntimeError as e:  # the native kernel did not build
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cal_path = out.with_name(out.name + ".calibration.json")
    hardware["calibration_file"] = cal_path.name
    atomic_write(cal_path, json.dumps(calibration, indent=1))
    atomic_write(
        out.with_name(out.name + ".yaml"), f"# {calibration['cpu']['source']}\n" + yaml.safe_dump(hardware)
    )
    print(json.dumps(hardware, indent=1))
    print(f"wrote {out}.yaml and {cal_path}")


if __name__ == "__main__":
    main()
