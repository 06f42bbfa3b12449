"""Run a workload through one server: the engine with the simulated executor (the paper's experiments
on a CPU) or, with backend="real", with the model runner.

    from harness.simulate import ServerConfig, SimConfig, simulate
    from harness.workload import synthetic
    result = simulate(synthetic("sharegpt", rate=2.0, duration_s=3600), SimConfig())
    result = simulate(workload, SimConfig(system="orca_max", server=ServerConfig(block_size=32)))
    print(result.metrics["normalized_latency"])

Everything but the executor is the engine's own code: the same Scheduler, the same BlockManager.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from baselines.registry import ALL_SYSTEMS, build_system
from baselines.vattention import PAGE_KIB, tokens_per_page
from harness.metrics import summarize
from harness.overload import OverloadStop
from harness.server import REAL_KV_CACHE_GIB, ServerConfig, for_system, kv_dtype_bytes
from harness.sim.cost_model import CostModel
from harness.sim.executor import ModelledPreemptionCosts, SimulatedExecutor
from harness.sim.hardware import GPUSpec, load_hardware
from harness.sim.kv_capacity import KVCapacity, kv_capacity
from harness.workload import BUILTIN, Workload, synthetic
from paged import CacheConfig, Engine, Scheduler, SchedulerConfig, SequenceGroup
from paged.config import PREEMPTION_MODES
from paged.presets import ModelSpec, load_model, num_blocks_in

BACKENDS = ("sim", "real")

__all__ = ["BACKENDS", "ServerConfig", "SimConfig", "SimResult", "build", "simulate"]


@dataclass
class SimConfig:
    """One run: which system serves which model on which hardware, with which server settings.
    Defaults: the paper's OPT-13B server on one A100-40GB with vLLM's settings of the time."""

    system: str = "vllm"  # vllm | orca_max | orca_pow2 | orca_oracle | fastertransformer
    model: str | ModelSpec = "opt-13b"  # a preset name, a YAML path, or a ModelSpec
    hardware: str | GPUSpec = "a100-40gb"
    tensor_parallel_size: int = 1
    server: ServerConfig = field(default_factory=ServerConfig)
    backend: str = "sim"  # sim: the cost model's clock; real: the model runner, wall-clock step times
    real_dtype: str = "auto"  # real backend: float32 | float16 | bfloat16; auto: fp16 on CUDA, fp32 on CPU
    track_memory: bool = True  # Figure 2 accounting after every step
    memory_every: int = 1  # ... or after every k-th step (an unbiased sample, k times cheaper)
    seed: int = 0
    # sim backend: every predicted step time multiplied by this (what-if slower or faster hardware;
    # harness/calib/sim_vs_real.py: the machine's measured drift since its profile)
    time_scale: float = 1.0
    # sim backend: how beam search's surviving beams pick their parents (paged/beam_model.py):
    # "calibrated" (fitted to real beam runs, harness/data/beam_model.json), "uniform" (the earlier
    # draw), "geometric:theta=T,keep=K", or "calibrated:keep=K" for sensitivity runs
    beam_model: str = "calibrated"
    # Advance runs of plain decode steps at once (paged/fast_forward.py): results identical to
    # stepping them one by one (tests/test_fast_forward.py), many times faster. False: step every one.
    fast_forward: bool = True
    # End a run far past capacity early (harness/overload.py): None runs every request to the end.
    early_stop: OverloadStop | None = None

    def __post_init__(self) -> None:
        if self.system not in ALL_SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}: choose one of {', '.join(ALL_SYSTEMS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if self.memory_every < 1 or not self.time_scale > 0:
            raise ValueError("memory_every must be at least 1 and time_scale positive")


@dataclass
class SimResult:
    metrics: dict
    groups: list[SequenceGroup]
    engine: Engine
    capacity: KVCapacity
    wall_s: float


def build(cfg: SimConfig) -> tuple[Engine, KVCapacity, CostModel]:
    """The engine for one server: the chosen system's memory policy on the one scheduler, and an
    executor, the only thing the backends change: the simulated executor on the cost model's clock
    (sim), or the model runner on this machine (real). The cost model is returned for both (the real
    backend's steps can be priced with it: harness/calib/sim_vs_real.py)."""
    model: ModelSpec = load_model(cfg.model)
    gpu: GPUSpec = load_hardware(cfg.hardware)
    tp, s = cfg.tensor_parallel_size, for_system(cfg.server, cfg.system)
    contiguous = cfg.system in PAGE_KIB  # vAttention: blocks are pages, attention reads contiguous KV
    if contiguous:
        s = replace(s, block_size=tokens_per_page(model, PAGE_KIB[cfg.system], kv_dtype_bytes(s), tp))
    cap = kv_capacity(model, gpu, s, tp)
    cost = CostModel(model, gpu, tp, s.block_size, kv_dtype_bytes=kv_dtype_bytes(s), contiguous=contiguous)
    if cfg.backend == "real":
        if contiguous:
            raise ValueError(
                f"{cfg.system} is a simulator baseline (its contiguous virtual KV needs CUDA's virtual "
                "memory API, which the model runner does not use): use backend=sim"
            )
        if s.kv_cache_dtype != "auto":
            raise ValueError(
                f"kv_cache_dtype={s.kv_cache_dtype} is a simulator setting: the real engine stores KV in "
                "the model's dtype; use backend=sim or kv_cache_dtype=auto"
            )
        executor, cap = _real_executor(cfg, model, cap)
    else:
        executor = SimulatedExecutor(
            cost, seed=cfg.seed, time_scale=cfg.time_scale, beam_model=cfg.beam_model
        )
    cache_cfg = CacheConfig(
        num_gpu_blocks=cap.num_gpu_blocks,
        block_size=s.block_size,
        num_cpu_blocks=cap.num_cpu_blocks,
        num_host_cache_blocks=cap.num_host_cache_blocks,
        watermark=s.watermark,
        enable_prefix_caching=s.enable_prefix_caching,
        prefix_eviction=s.prefix_eviction,
    )
    sched_cfg = SchedulerConfig(
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_num_seqs=s.max_num_seqs,
        max_model_len=s.max_model_len or model.max_position_embeddings,
        preemption_mode=s.preemption_mode,
        step_composition=s.step_composition,
        enable_chunked_prefill=s.enable_chunked_prefill,
        policy=s.scheduling_policy,
    )
    memory, sched_cfg = build_system(
        cfg.system, cache_cfg, sched_cfg, s.ft_batch_size, s.ft_max_total_len, s.ft_pad_batch
    )
    scheduler = Scheduler(sched_cfg, memory)
    if cfg.backend != "real":
        executor.overlap_offloads = s.host_offload_overlap
    if contiguous and cfg.backend != "real" and gpu.page_map_us:
        # vAttention's page mapping, priced per step (baselines/vattention.py)
        memory.count_maps = True
        executor.page_ops = memory.take_page_ops
        executor.overlap_mapping = s.page_map_overlap
    if sched_cfg.preemption_mode == "cost":
        scheduler.preemption_costs = (
            ModelledPreemptionCosts(cost, cfg.time_scale)
            if cfg.backend != "real"
            else executor.runner.measure_preemption_costs()
        )
    engine = Engine(
        scheduler,
        executor,
        track_memory=cfg.track_memory,
        memory_every=cfg.memory_every,
        fast_forward=cfg.fast_forward,
    )
    return engine, cap, cost


def _real_executor(cfg: SimConfig, model: ModelSpec, cap: KVCapacity):
    """The real executor over a model runner with random weights of the preset's shapes on this
    machine's device, and the KV capacity it has (`server.kv_cache_gib`, default REAL_KV_CACHE_GIB:
    the GPU presets' capacity is for the paper's GPUs)."""
    import torch

    from paged.model_loader import DTYPES, load_hf_model
    from paged.model_runner import ModelRunner
    from paged.real_executor import RealExecutor

    if cfg.tensor_parallel_size != 1:
        raise ValueError("the real backend runs on one device; set tensor_parallel_size=1")
    s = for_system(cfg.server, cfg.system)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.real_dtype == "auto":
        dtype = torch.float32 if device == "cpu" else torch.float16
    elif cfg.real_dtype in DTYPES:
        dtype = DTYPES[cfg.real_dtype]
    else:
        raise ValueError(f"real_dtype must be auto or one of {', '.join(DTYPES)}, got {cfg.real_dtype!r}")
    hf, _ = load_hf_model(model, dtype, device, cfg.seed)  # the spec itself: a YAML path works too
    block_bytes = model.kv_bytes_per_block(s.block_size, dtype.itemsize)
    gib = s.kv_cache_gib if s.kv_cache_gib is not None else REAL_KV_CACHE_GIB
    num_blocks = max(1, num_blocks_in(gib, block_bytes))
    # On a CPU the "host" pool is the same memory; give it as many blocks as the device pool.
    num_cpu = num_blocks_in(s.swap_space_gib, block_bytes) if device == "cuda" else num_blocks
    num_host = num_blocks_in(s.host_cache_gib, block_bytes)  # the host tier's, after the swap space
    runner = ModelRunner(hf, num_blocks, s.block_size, num_cpu + num_host)
    runner.warmup()  # kernels built before the first measured step
    executor = RealExecutor(runner, seed=cfg.seed)
    return executor, replace(
        cap,
        num_gpu_blocks=num_blocks,
        num_cpu_blocks=num_cpu,
        num_host_cache_blocks=num_host,
        kv_bytes=num_blocks * block_bytes,
    )


def simulate(workload: Workload, cfg: SimConfig | None = None, progress: bool = False) -> SimResult:
    """Replay the workload on the simulated server; returns docs/metrics.md's metrics."""
    cfg = cfg or SimConfig()
    engine, cap, _ = build(cfg)
    groups = workload.to_sequence_groups(seed=cfg.seed)
    bar = None
    on_finish = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(groups), unit="req", desc=f"{cfg.model} {workload.meta.get('rate', '')} req/s")

        def on_finish(_group):
            bar.update(1)

    stop = cfg.early_stop
    if stop is not None:
        stop = replace(stop, num_requests=len(groups))  # a fresh one per run: it keeps its history
        count = on_finish

        def on_finish(group):
            stop.on_finish(group)
            if count is not None:
                count(group)

    start = time.perf_counter()
    engine.run(groups, on_finish=on_finish, stop=stop)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    metrics = summarize(groups, engine.steps)
    metrics["num_gpu_blocks"] = cap.num_gpu_blocks
    metrics["kv_slots"] = cap.num_slots
    stopped = stop is not None and stop.stopped_at is not None
    metrics["early_stopped"] = stopped
    metrics["stopped_at_s"] = stop.stopped_at if stopped else float("nan")
    return SimResult(metrics, groups, engine, cap, wall)


def add_run_arguments(ap, rate: float = 2.0) -> None:
    """The server and trace options shared by this CLI and the benchmarks."""
    ap.add_argument("--model", default="opt-13b")
    ap.add_argument("--hardware", default="a100-40gb")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    ap.add_argument("--dataset", default="sharegpt_synthetic", choices=BUILTIN)
    ap.add_argument("--rate", type=float, default=rate, help="requests per second (Poisson)")
    ap.add_argument("--duration", type=float, default=3600.0, help="trace length in seconds")
    ap.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    """python -m harness.simulate: one simulated run, its metrics printed as a table."""
    import argparse

    ap = argparse.ArgumentParser(description="Simulate one serving run (the paper's servers on a CPU).")
    ap.add_argument("--system", default="vllm", choices=ALL_SYSTEMS)
    add_run_arguments(ap)
    ap.add_argument("--n", type=int, default=1, help="parallel samples (or beam width with --beam)")
    ap.add_argument("--beam", action="store_true")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--preemption-mode", default="auto", choices=PREEMPTION_MODES)
    args = ap.parse_args(argv)
    workload = synthetic(
        args.dataset, args.rate, args.duration, args.seed, n=args.n, use_beam_search=args.beam
    )
    cfg = SimConfig(
        system=args.system,
        model=args.model,
        hardware=args.hardware,
        tensor_parallel_size=args.tp,
        server=ServerConfig(block_size=args.block_size, preemption_mode=args.preemption_mode),
        seed=args.seed,
    )
    result = simulate(workload, cfg, progress=True)
    setting = f"{args.dataset} at {args.rate} req/s for {args.duration:g} s"
    print(f"{args.system}: {args.model} on {args.tp} x {args.hardware}, {setting}:")
    for key, value in result.metrics.items():
        print(f"  {key:<24} {value:.4g}" if isinstance(value, float) else f"  {key:<24} {value}")
    print(f"  {'wall_s':<24} {result.wall_s:.2f}")


if __name__ == "__main__":
    main()
