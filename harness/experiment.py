"""Run an experiment: every point of its grid (system x request rate x sweep values), or of its capacity
searches (a bisection on the rate per system and sweep values), written as it finishes, then the capacity
table and the plots. Takes the plain `harness.config.Config`; Hydra stays in harness/__main__.py.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from baselines import ALL_SYSTEMS
from harness.capacity import RateBisection, capacity, slo_bracket, slo_capacity
from harness.config import SWEEPABLE, Config, WorkloadConf
from harness.metrics import (
    ARTIFACT_COLUMNS,
    SLO_COLUMNS,
    artifact_metrics,
    check_window,
    class_columns,
    class_metrics,
    slo_metrics,
    step_series,
)
from harness.overload import OverloadStop
from harness.prefix_workloads import multi_turn, system_prompts
from harness.results import (
    POINT_COLUMNS,
    REQUEST_COLUMNS,
    atomic_write,
    open_run_dir,
    read_csv,
    request_rows,
    write_csv,
)
from harness.simulate import BACKENDS, SimConfig, build, simulate
from harness.step_series import save_series, series_path
from harness.traces import load_lengths_csv, mooncake_workload, trace_workload
from harness.workload import Workload, assign_priorities, chatbot, shared_prefix, synthetic
from paged.block_manager import BlockManager


class ExperimentError(ValueError):
    """An impossible experiment: one sentence that names the fix."""


@dataclass(frozen=True)
class Point:
    system: str
    rate: float
    params: tuple[tuple[str, object], ...]  # sweep values, in the order of cfg.sweep

    @property
    def key(self) -> tuple[str, ...]:
        return (self.system, _fmt(self.rate)) + tuple(_fmt(v) for _, v in self.params)

    @property
    def slug(self) -> str:
        extra = "".join(f"_{k}={v}" for k, v in self.params)
        return f"{self.system}_rate={_fmt(self.rate)}{extra}"


def _digest(groups) -> str:
    import hashlib

    h = hashlib.sha256()
    for g in sorted(groups, key=lambda g: int(g.request_id) if g.request_id.isdigit() else g.request_id):
        for s in g.seqs:
            h.update(str(s.output_token_ids).encode())
    return h.hexdigest()[:16]


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# points.csv's prefix-cache statistics, with system.enable_prefix_caching (docs/metrics.md)
PREFIX_CACHE_COLUMNS = (
    "prefix_hit_rate",
    "prefix_hit_blocks",
    "prefix_hit_tokens",
    "prefix_evictions",
    "host_offloads",
    "host_restores",
)


# Workload settings that only some kinds read: set with another kind, they fail in validate.
KIND_SETTINGS = {
    "num_system_prompts": ("system_prompts", "multi_turn"),
    "system_prompt_lens": ("system_prompts", "multi_turn"),
    "system_prompt_zipf": ("system_prompts", "multi_turn"),
    "think_time_s": ("multi_turn",),
    "response_time_per_token_s": ("multi_turn",),
    "max_context_len": ("multi_turn",),
}


def import_plugins(cfg: Config) -> None:
    """Import the modules cfg.plugins names (docs/extending.md): their register_policy calls run."""
    import importlib

    for name in cfg.plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ExperimentError(
                f"plugins: cannot import {name!r} ({e}); put the module on PYTHONPATH or fix its name"
            ) from None


def validate(cfg: Config) -> None:
    """Impossible combinations fail here, each with one sentence naming the fix."""
    import_plugins(cfg)
    if cfg.backend.name not in BACKENDS:
        raise ExperimentError(f"backend must be sim or real, got {cfg.backend.name!r}")
    unknown = [s for s in cfg.systems if s not in ALL_SYSTEMS]
    if unknown:
        raise ExperimentError(f"unknown system(s) {unknown}: choose from {', '.join(ALL_SYSTEMS)}")
    if not cfg.systems or not cfg.request_rates:
        raise ExperimentError("systems and request_rates must each list at least one value")
    if any(not r > 0 for r in cfg.request_rates):
        raise ExperimentError(f"request_rates must be positive req/s, got {list(cfg.request_rates)}")
    workload_keys = {f.name for f in fields(cfg.workload)} - {"by_system"}
    w = cfg.workload
    rescale = w.rescale is not None and w.kind != "mooncake"
    if w.kind != "trace_csv" and (w.trace_format != "auto" or rescale or w.trace_model):
        raise ExperimentError(
            f"workload.trace_format, rescale and trace_model apply to workload.kind=trace_csv, not {w.kind} "
            "(rescale also to mooncake): unset them or use kind=trace_csv"
        )
    defaults = WorkloadConf()
    for key, kinds in KIND_SETTINGS.items():
        if w.kind not in kinds and getattr(w, key) != getattr(defaults, key):
            raise ExperimentError(
                f"workload.{key} applies to workload.kind={' or '.join(kinds)}, not {w.kind}: unset it or "
                f"use kind={kinds[0]}"
            )
    for system, overrides in cfg.workload.by_system.items():
        if system not in ALL_SYSTEMS:
            raise ExperimentError(
                f"workload.by_system names unknown system {system!r}: choose from {', '.join(ALL_SYSTEMS)}"
            )
        unknown = set(overrides) - workload_keys
        if unknown:
            raise ExperimentError(
                f"workload.by_system.{system} sets unknown key(s) {sorted(unknown)}: "
                f"choose from {', '.join(sorted(workload_keys))}"
            )
    if cfg.metrics_window_s is not None:
        try:
            check_window(cfg.metrics_window_s)
        except ValueError as e:
            raise ExperimentError(f"metrics_window_s: {e}") from None
    for system, rates in cfg.rates_by_system.items():
        if system not in ALL_SYSTEMS:
            raise ExperimentError(
                f"rates_by_system names unknown system {system!r}: choose from {', '.join(ALL_SYSTEMS)}"
            )
        if not rates or any(not r > 0 for r in rates):
            raise ExperimentError(f"rates_by_system.{system} must list positive req/s, got {list(rates)}")
    if cfg.duration_s <= 0:
        raise ExperimentError(f"duration_s must be positive, got {cfg.duration_s}")
    if cfg.early_stop and not (cfg.early_stop_factor > 0 and cfg.early_stop_window_s >= 60):
        raise ExperimentError(
            "early_stop needs early_stop_factor > 0 (e.g. 10) and early_stop_window_s >= 60 "
            f"(checks run every 60 s), got {cfg.early_stop_factor} and {cfg.early_stop_window_s}"
        )
    for key, values in cfg.sweep.items():
        if key not in SWEEPABLE:
            raise ExperimentError(f"cannot sweep {key!r}: sweepable parameters are {', '.join(SWEEPABLE)}")
        if not values:
            raise ExperimentError(f"sweep.{key} lists no values")
        if key in BOOLEAN_SWEEPS and any(not isinstance(v, bool) for v in values):
            raise ExperimentError(f"sweep.{key} lists true or false, got {list(values)}")
        if key == "max_num_batched_tokens" and any(type(v) is not int for v in values):
            raise ExperimentError(f"sweep.max_num_batched_tokens lists numbers of tokens, got {list(values)}")
    for entry in cfg.sweep_exclude:
        unknown = [k for k in entry if k not in cfg.sweep]
        if not entry or unknown:
            raise ExperimentError(
                f"sweep_exclude entry {dict(entry)} must name swept keys ({', '.join(cfg.sweep) or 'none'})"
            )
        for k, v in entry.items():
            if _fmt(v) not in {_fmt(x) for x in cfg.sweep[k]}:
                raise ExperimentError(f"sweep_exclude entry {dict(entry)}: {v!r} is not in sweep.{k}")
    if not sweep_grid(cfg):
        raise ExperimentError("sweep_exclude leaves out every combination of the sweep")
    for values in sweep_grid(cfg):
        params = list(zip(cfg.sweep, values))
        try:  # every point's server settings pass ServerConfig's own checks
            _apply(cfg, params)
        except ValueError as e:
            raise ExperimentError(f"sweep {dict(params)}: {e}") from None
    for bs in cfg.sweep.get("block_size", [cfg.system.block_size]):
        if bs & (bs - 1) and any(s != "vllm" for s in cfg.systems):
            raise ExperimentError(
                f"block_size {bs} is not a power of two, which the contiguous baselines need"
            )
    if cfg.sweep and cfg.backend.name == "sim":
        # and the scheduler's, which a point would meet only in its worker (cheap to build in the
        # simulator): e.g. whole prompts with a budget under max_model_len
        for values in sweep_grid(cfg):
            params = list(zip(cfg.sweep, values))
            for system in cfg.systems:
                try:
                    build(sim_config(_apply(cfg, params), system))
                except ValueError as e:
                    raise ExperimentError(f"sweep {dict(params)}, {system}: {e}") from None
    classes, shares = list(cfg.workload.priority_classes), list(cfg.workload.priority_shares)
    if len(classes) != len(shares) or len(set(classes)) != len(classes) or any(not x > 0 for x in shares):
        raise ExperimentError(
            f"workload.priority_classes {classes} and priority_shares {shares} must list distinct classes "
            "and one positive share each, e.g. priority_classes=[0,1] priority_shares=[0.2,0.8]"
        )
    bad = {k: v for k, v in cfg.slo.limits().items() if not v > 0}
    if bad:
        raise ExperimentError(f"SLO limits are positive seconds (or null: not checked), got {bad}")
    if not 0 < cfg.slo.target <= 1:
        raise ExperimentError(f"slo.target is a share of requests in (0, 1], e.g. 0.9, got {cfg.slo.target}")
    if cfg.capacity_search.enabled:
        if not cfg.slo.limits():
            raise ExperimentError(
                "capacity_search needs an SLO to search against: set at least one of slo.ttft_s, "
                "slo.tpot_s, slo.e2e_s (e.g. slo.ttft_s=1 slo.tpot_s=0.1)"
            )
        for system in cfg.systems:
            try:
                bisection(cfg, system)
            except ValueError as e:
                raise ExperimentError(f"capacity_search for {system}: {e}") from None


def sweep_grid(cfg: Config) -> list[tuple]:
    """The combinations of swept values that run, in the order of cfg.sweep: the grid (their product)
    less every combination that matches an entry of cfg.sweep_exclude; [()] without a sweep."""
    keys = list(cfg.sweep)
    grid = list(itertools.product(*(cfg.sweep[k] for k in keys))) or [()]

    def excluded(values) -> bool:
        named = {k: _fmt(v) for k, v in zip(keys, values)}
        return any(all(named.get(k) == _fmt(v) for k, v in e.items()) for e in cfg.sweep_exclude)

    return [values for values in grid if not excluded(values)]


def points(cfg: Config) -> list[Point]:
    keys = list(cfg.sweep)
    return [
        Point(system, float(rate), tuple(zip(keys, values)))
        for values in sweep_grid(cfg)
        for system in cfg.systems
        for rate in rates_for(cfg, system)
    ]


def rates_for(cfg: Config, system: str) -> list[float]:
    """The request rates a system runs at: its own grid if the experiment gives one."""
    return list(cfg.rates_by_system.get(system) or cfg.request_rates)


def all_rates(cfg: Config) -> list[float]:
    return sorted({r for system in cfg.systems for r in rates_for(cfg, system)})


def search_range(cfg: Config, system: str) -> tuple[float, float]:
    """[low, high] of a system's capacity search: capacity_search.low / high, else its grid's ends."""
    s, rates = cfg.capacity_search, rates_for(cfg, system)
    return (s.low if s.low is not None else min(rates), s.high if s.high is not None else max(rates))


def bisection(cfg: Config, system: str) -> RateBisection:
    """A system's capacity search (harness.capacity.RateBisection) for the experiment's SLO target."""
    s = cfg.capacity_search
    low, high = search_range(cfg, system)
    return RateBisection(low, high, cfg.slo.target, s.rel_tol, s.abs_tol, s.max_runs)


def search_points(cfg: Config, rows: list[dict]) -> list[Point]:
    """The next point of every capacity search (one per system and combination of swept values) that
    has not ended, replayed from the finished rows: the same rows always give the same points, so a
    resumed search runs exactly the points an uninterrupted one would have."""
    keys = list(cfg.sweep)
    measured: dict[tuple, dict[float, float]] = {}
    for r in rows:  # as points.csv holds them: rates, attainments and swept values as text
        group = (r["system"], *(_fmt(r[k]) for k in keys))
        measured.setdefault(group, {})[float(r["request_rate"])] = float(r["slo_attainment"])
    out = []
    for values in sweep_grid(cfg):
        for system in cfg.systems:
            group = (system, *(_fmt(v) for v in values))
            rate = bisection(cfg, system).next_rate(measured.get(group, {}))
            if rate is not None:
                out.append(Point(system, rate, tuple(zip(keys, values))))
    return out


# Sweep keys whose values are true or false, each a ServerConfig field of the same name.
BOOLEAN_SWEEPS = ("enable_chunked_prefill", "page_map_overlap", "host_offload_overlap")


def _apply(cfg: Config, params) -> Config:
    """The config with a point's sweep values filled in."""
    system, workload = cfg.system, cfg.workload
    for key, value in params:
        if key == "block_size":
            system = replace(system, block_size=value)
        elif key == "preemption_mode":
            system = replace(system, preemption_mode=str(value))
        elif key in ("n", "beam_width"):
            workload = replace(
                workload, n=int(value), use_beam_search=key == "beam_width" or workload.use_beam_search
            )
        elif key == "prefix_len":
            workload = replace(workload, prefix_len=int(value))
        elif key == "max_num_batched_tokens":
            system = replace(system, max_num_batched_tokens=value)
        elif key == "scheduling_policy":
            system = replace(system, scheduling_policy=str(value))
        elif key == "prefix_eviction":
            system = replace(system, prefix_eviction=str(value))
        elif key == "host_cache_gib":
            system = replace(system, host_cache_gib=float(value))
        elif key in BOOLEAN_SWEEPS:
            system = replace(system, **{key: bool(value)})
        else:  # a key added to SWEEPABLE without its line here would sweep nothing
            raise AssertionError(f"sweep key {key!r} is not applied")
    return replace(cfg, system=system, workload=workload)


def make_workload(cfg: Config, rate: float, system: str | None = None) -> Workload:
    """The trace one point replays: the workload settings, with `workload.by_system[system]` applied,
    and each request's priority class (harness.workload.assign_priorities)."""
    w = cfg.workload
    if system is not None and w.by_system.get(system):
        w = replace(w, **dict(w.by_system[system]))
    return assign_priorities(
        _lengths_and_arrivals(cfg, w, rate), list(w.priority_classes), list(w.priority_shares), w.seed
    )


def _lengths_and_arrivals(cfg: Config, w, rate: float) -> Workload:
    data = dict(data_path=w.data_path, arrivals=w.arrivals)
    if w.kind == "synthetic":
        return synthetic(
            w.dataset,
            rate,
            cfg.duration_s,
            w.seed,
            w.burstiness,
            n=w.n,
            use_beam_search=w.use_beam_search,
            **data,
        )
    if w.kind == "shared_prefix":
        if w.prefix_len < 1:
            raise ExperimentError("workload.kind=shared_prefix needs workload.prefix_len >= 1 (e.g. 80)")
        return shared_prefix(w.prefix_len, rate, cfg.duration_s, w.seed, task_dataset=w.dataset, **data)
    if w.kind == "chatbot":
        return chatbot(rate, cfg.duration_s, w.seed, new_conversation_prob=w.new_conversation_prob, **data)
    # docs/workloads.md, "Prefix reuse"
    prompts = dict(
        num_system_prompts=w.num_system_prompts,
        system_prompt_lens=list(w.system_prompt_lens),
        system_prompt_zipf=w.system_prompt_zipf,
    )
    if w.kind == "system_prompts":
        if w.num_system_prompts < 1:
            raise ExperimentError(
                "workload.kind=system_prompts needs workload.num_system_prompts >= 1 (e.g. 16)"
            )
        return system_prompts(w.dataset, rate, cfg.duration_s, w.seed, w.burstiness, **prompts, **data)
    if w.kind == "multi_turn":
        context = w.max_context_len
        if context is None:  # 0 is an error multi_turn names, not "unset"
            context = cfg.system.max_model_len or cfg.model.max_position_embeddings
        return multi_turn(
            rate,
            cfg.duration_s,
            w.seed,
            w.burstiness,
            w.think_time_s,
            w.response_time_per_token_s,
            context,
            **prompts,
            **data,
        )
    if w.kind == "mooncake":
        if not w.path:
            raise ExperimentError("workload.kind=mooncake needs workload.path=<the trace's .jsonl file>")
        return mooncake_workload(w.path, rate, cfg.duration_s, w.rescale)
    if w.kind in ("lengths_csv", "trace_csv"):
        if not w.path:
            raise ExperimentError(f"workload.kind={w.kind} needs workload.path=<your file>")
        if w.kind == "lengths_csv":
            return load_lengths_csv(w.path, rate, cfg.duration_s, w.seed)
        # docs/workloads.md, "Timestamped traces": the rate is the trace's mean rate when rescaled
        return trace_workload(w.path, rate, cfg.duration_s, w.trace_format, w.rescale, w.trace_model)
    raise ExperimentError(
        f"unknown workload.kind {w.kind!r}: use synthetic, shared_prefix, chatbot, lengths_csv, trace_csv, "
        "system_prompts, multi_turn or mooncake"
    )


def sim_config(cfg: Config, system: str) -> SimConfig:
    """One point's run: the experiment's server settings (its `system` node) for one system."""
    server = cfg.system
    # FasterTransformer's batch size by model and dataset, where the profile gives one (the artifact
    # set it by hand per model and dataset; docs/paper_fidelity.md).
    ft_key = f"{cfg.model.name}/{cfg.workload.dataset}"
    if server.ft_batch_size is None and ft_key in server.ft_batch_sizes:
        server = replace(server, ft_batch_size=server.ft_batch_sizes[ft_key])
    return SimConfig(
        system=system,
        model=cfg.model,
        hardware=cfg.hardware,
        tensor_parallel_size=cfg.tensor_parallel_size,
        server=server,
        backend=cfg.backend.name,
        track_memory=True,
        memory_every=cfg.memory_every,
        seed=cfg.workload.seed,
        beam_model=cfg.beam_model,
        fast_forward=cfg.fast_forward,
        early_stop=OverloadStop(cfg.early_stop_factor * cfg.capacity_threshold, cfg.early_stop_window_s)
        if cfg.early_stop
        else None,
    )


def run_point(cfg: Config, point: Point) -> tuple[dict, list[dict], dict]:
    """One simulated run: its points.csv row, its per-request records and its per-step series (the
    parent process writes them all: a worker does not know the run directory)."""
    import_plugins(cfg)  # a worker process started afresh has not imported them
    pcfg = _apply(cfg, point.params)
    workload = make_workload(pcfg, point.rate, point.system)
    t0 = time.perf_counter()
    result = simulate(workload, sim_config(pcfg, point.system))
    series = step_series(result.engine.steps, paged=isinstance(result.engine.scheduler.memory, BlockManager))
    row = {"system": point.system, "request_rate": point.rate, **dict(point.params), **result.metrics}
    row["actual_request_rate"] = workload.mean_rate()  # of the arrivals replayed (docs/metrics.md)
    row.update(artifact_metrics(series, cfg.metrics_window_s))
    if cfg.slo.limits():
        row.update(slo_metrics(result.groups, **cfg.slo.limits()))
    cache = getattr(result.engine.scheduler.memory, "prefix_cache", None)
    if cache is not None:  # automatic prefix caching (docs/metrics.md)
        queried = cache.num_queried_blocks
        row["prefix_hit_rate"] = cache.num_hit_blocks / queried if queried else float("nan")
        row["prefix_hit_blocks"] = cache.num_hit_blocks
        row["prefix_hit_tokens"] = cache.num_hit_tokens
        row["prefix_evictions"] = cache.num_evictions
        tier = result.engine.scheduler.memory.host_tier
        row["host_offloads"] = tier.num_offloads if tier is not None else 0
        row["host_restores"] = tier.num_restores if tier is not None else 0
    if cfg.workload.priority_classes:
        row.update(class_metrics(result.groups, list(cfg.workload.priority_classes), cfg.slo.limits()))
    if cfg.backend.name == "real":
        # The generated tokens themselves, so that runs of different systems can be compared token by token.
        row["output_digest"] = _digest(result.groups)
    row["wall_s"] = time.perf_counter() - t0
    return row, request_rows(result.groups), series


def run_experiment(cfg: Config, config_yaml: str, progress: bool = True) -> Path:
    """Run (or resume) the experiment; returns its run directory."""
    validate(cfg)
    # A capacity search picks its points as it goes (search_points), in place of the grid.
    search = cfg.capacity_search.enabled
    grid = [] if search else points(cfg)
    first = search_points(cfg, [])[0] if search else grid[0]
    # Check the first point's setup (model fits the GPU, workload file readable) before writing anything.
    _probe(cfg, first)
    run_dir, resumed = open_run_dir(cfg.results_dir, cfg.name, config_yaml, cfg.resume)
    top = max(search_range(cfg, s)[1] for s in cfg.systems) if search else max(all_rates(cfg))
    base = make_workload(_apply(cfg, first.params), top, first.system)
    if not (run_dir / "workload.jsonl").exists():
        base.save(run_dir / "workload.jsonl")  # the highest rate's trace; lower rates stretch its times
    rows = read_csv(run_dir / "points.csv")
    done = {tuple(r[c] for c in ["system", "request_rate", *cfg.sweep]) for r in rows}
    todo = [p for p in grid if p.key not in done]
    columns = (
        POINT_COLUMNS
        + [k for k in cfg.sweep]
        + (list(SLO_COLUMNS) if cfg.slo.limits() else [])
        + class_columns(list(cfg.workload.priority_classes), bool(cfg.slo.limits()))
        + (list(PREFIX_CACHE_COLUMNS) if cfg.system.enable_prefix_caching else [])
        + [
            "num_completed",
            "num_rejected",
            "sharing_saving_pct",
            "kv_free_pct",
            *ARTIFACT_COLUMNS,
            "num_steps",
            "early_stopped",
            "stopped_at_s",
            "num_gpu_blocks",
            "kv_slots",
            "mean_itl_ms",
            "p99_itl_ms",
            "median_tpot_ms",
            "median_e2el_ms",
            "mean_queue_ms",
            "wall_s",
            "output_digest",
        ]
    )
    log = _run_log(run_dir)
    if search:
        if resumed:
            print(f"resuming {run_dir}: {len(rows)} points of the capacity search already done")
        log.info(
            "%s %s: capacity search, %d points done", "resume" if resumed else "start", cfg.name, len(rows)
        )
    else:
        if resumed:
            print(f"resuming {run_dir}: {len(grid) - len(todo)} of {len(grid)} points already done")
        log.info(
            "%s %s: %d points, %d to run", "resume" if resumed else "start", cfg.name, len(grid), len(todo)
        )
    bar = None
    if progress:
        from tqdm import tqdm

        total, initial = (None, len(rows)) if search else (len(grid), len(grid) - len(todo))
        bar = tqdm(total=total, initial=initial, unit="point", desc=cfg.name)

    def finish(point: Point, row: dict, requests: list[dict], series: dict) -> None:
        # Series and requests before the row: a point in points.csv has all its files (resume skips it).
        save_series(
            series_path(run_dir, point.slug),
            series,
            {"system": point.system, "request_rate": point.rate, **dict(point.params)},
        )
        write_csv(run_dir / "requests" / f"{point.slug}.csv", requests, REQUEST_COLUMNS)
        # As points.csv reads back: floats and swept values as text, so that a resumed run's rows
        # (read from the file) and new ones group together in the capacity table and the plots.
        rows.append({k: _fmt(v) if isinstance(v, float) or k in cfg.sweep else v for k, v in row.items()})
        write_csv(run_dir / "points.csv", rows, columns)
        log.info(
            "point %s: normalized latency %.4f s/token, %d requests, wall %.1f s%s",
            point.slug,
            row["normalized_latency"],
            row["num_requests"],
            row["wall_s"],
            f", SLO attainment {row['slo_attainment']:.4f}" if "slo_attainment" in row else "",
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(
                f"{point.system} {_fmt(point.rate)} req/s: {row['normalized_latency']:.3f} s/tok"
            )

    workers = cfg.workers or os.cpu_count() or 1
    if cfg.backend.name == "real":
        workers = 1  # real runs measure wall time: one at a time (and torch does not survive a fork)
    if search:
        _run_search(cfg, rows, finish, workers)
    elif workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Longest points first (highest rate, then slowest systems) pack best on few workers; rows are
        # written in the order points finish.
        todo.sort(key=lambda p: -p.rate)
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(run_point, cfg, p): p for p in todo}
            for future in as_completed(futures):
                finish(futures[future], *future.result())
    else:
        for point in todo:
            finish(point, *run_point(cfg, point))
    if bar is not None:
        bar.close()

    cap_rows = capacity_table(rows, cfg)
    slo_cols = list(SLO_CAPACITY_COLUMNS) if cfg.slo.limits() else []
    write_csv(
        run_dir / "capacity.csv", cap_rows, ["system", *cfg.sweep, "capacity_rps", "ratio_to_vllm", *slo_cols]
    )
    if cfg.plots:
        from harness.plots import plot_run

        plot_run(run_dir, rows, cap_rows, cfg)
    atomic_write(run_dir / "DONE", "")
    text = capacity_text(cap_rows, cfg, run_dir)
    print(text)
    log.info("done\n%s", text)
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    return run_dir


def _run_search(cfg: Config, rows: list[dict], finish, workers: int) -> None:
    """Run every capacity search to its end. A search's next rate depends on its last point, so each
    search runs one point at a time, the next as soon as the last is written (finish appends it to
    `rows`); the searches of different systems and swept values run side by side on `workers`."""
    if workers <= 1:
        while todo := search_points(cfg, rows):
            for point in todo:
                finish(point, *run_point(cfg, point))
        return
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers) as pool:
        running: dict = {}
        while True:
            busy = {p.key for p in running.values()}  # a running search proposes its running point again
            for point in search_points(cfg, rows):
                if point.key not in busy:
                    running[pool.submit(run_point, cfg, point)] = point
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), *future.result())


def _run_log(run_dir: Path) -> logging.Logger:
    """The run's own log, run_dir/run.log (appended to on resume): what ran, each point's headline
    numbers, the capacity table. Hydra writes no log file (harness/conf/config.yaml says why)."""
    log = logging.getLogger(f"harness.run.{run_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False  # the console has the progress bar and the table already
    if not log.handlers:
        handler = logging.FileHandler(run_dir / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


def _probe(cfg: Config, point: Point) -> None:
    build(sim_config(_apply(cfg, point.params), point.system))
    make_workload(_apply(cfg, point.params), point.rate, point.system)


# capacity.csv's SLO columns (with an SLO): the SLO capacity (harness.capacity.slo_capacity), its ratio to
# vLLM's, the bracket it was interpolated in (the highest rate run that met the target below the first that
# missed it, and that one) and the points it was read from.
SLO_CAPACITY_COLUMNS = (
    "slo_capacity_rps",
    "slo_ratio_to_vllm",
    "slo_rate_met",
    "slo_rate_missed",
    "slo_runs",
)


def capacity_table(rows: list[dict], cfg: Config) -> list[dict]:
    keys = list(cfg.sweep)
    with_slo = bool(cfg.slo.limits())
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], *(r[k] for k in keys)), []).append(r)
    table = []
    for (system, *values), pts in groups.items():
        rates = [float(p["request_rate"]) for p in pts]
        cap = capacity(rates, [float(p["normalized_latency"]) for p in pts], cfg.capacity_threshold)
        entry = {"system": system, **dict(zip(keys, values)), "capacity_rps": cap}
        if with_slo:
            attainment = [float(p["slo_attainment"]) for p in pts]
            entry["slo_capacity_rps"] = slo_capacity(rates, attainment, cfg.slo.target)
            entry["slo_rate_met"], entry["slo_rate_missed"] = slo_bracket(rates, attainment, cfg.slo.target)
            entry["slo_runs"] = len(pts)
        table.append(entry)
    for row in table:
        ref = next(
            (t for t in table if t["system"] == "vllm" and all(t[k] == row[k] for k in keys)),
            None,
        )
        ratio = row["capacity_rps"] / ref["capacity_rps"] if ref and ref["capacity_rps"] else float("nan")
        row["ratio_to_vllm"] = ratio
        if with_slo:
            ref_slo = ref["slo_capacity_rps"] if ref else float("nan")
            row["slo_ratio_to_vllm"] = row["slo_capacity_rps"] / ref_slo if ref_slo else float("nan")
    order = {s: i for i, s in enumerate(ALL_SYSTEMS)}
    table.sort(key=lambda t: (tuple(str(t[k]) for k in keys), order.get(t["system"], 99)))
    for t in table:
        for key in ("capacity_rps", "ratio_to_vllm", "slo_capacity_rps", "slo_ratio_to_vllm"):
            if key in t:
                t[key] = _round(t[key])
    return table


def _round(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)


def capacity_text(table: list[dict], cfg: Config, run_dir: Path) -> str:
    """The capacity table as printed at the end of a run."""
    keys = list(cfg.sweep)
    vllm = {tuple(str(t[k]) for k in keys): t["capacity_rps"] for t in table if t["system"] == "vllm"}
    lines = [f"\ncapacity: highest rate with normalized latency below {cfg.capacity_threshold} s/token"]
    for t in table:
        extra = " ".join(f"{k}={t[k]}" for k in keys)
        cap = t["capacity_rps"]
        rates = rates_for(cfg, t["system"])
        lo, hi = search_range(cfg, t["system"]) if cfg.capacity_search.enabled else (min(rates), max(rates))
        ref = vllm.get(tuple(str(t[k]) for k in keys))
        if cap == 0:
            text = f"< {lo:g} req/s (above the threshold at the lowest rate measured)"
            vs = f"; vLLM > {ref / lo:.1f}x" if ref else ""
        else:
            text = f"{cap:.3g} req/s" + (" (or more: never crossed)" if cap >= hi else "")
            vs = f"; vLLM {ref / cap:.2f}x" if ref and t["system"] != "vllm" else ""
        lines.append(f"  {t['system']:<18} {extra:<20} {text}{vs}")
    if cfg.slo.limits():
        lines += _slo_capacity_lines(table, cfg)
    lines.append(f"results: {run_dir}")
    return "\n".join(lines)


def _slo_capacity_lines(table: list[dict], cfg: Config) -> list[str]:
    keys = list(cfg.sweep)
    how = "bisection" if cfg.capacity_search.enabled else "interpolated between the rates run"
    share = f">= {100 * cfg.slo.target:g}% of requests within {cfg.slo.describe()}"
    lines = [f"\nSLO capacity: highest rate with {share} ({how})"]
    vllm = {tuple(str(t[k]) for k in keys): t["slo_capacity_rps"] for t in table if t["system"] == "vllm"}
    for t in table:
        extra = " ".join(f"{k}={t[k]}" for k in keys)
        cap, met, missed, runs = t["slo_capacity_rps"], t["slo_rate_met"], t["slo_rate_missed"], t["slo_runs"]
        ref = vllm.get(tuple(str(t[k]) for k in keys))
        vs = ""
        if math.isnan(met):
            text = f"< {missed:g} req/s (the lowest rate run misses the target; {runs} runs)"
        elif math.isnan(missed):
            text = f"{cap:.3g} req/s or more (every rate run meets the target; {runs} runs)"
        else:
            text = f"{cap:.3g} req/s (met at {met:g}, missed at {missed:g} req/s; {runs} runs)"
        if ref and cap and t["system"] != "vllm":
            vs = f"; vLLM {ref / cap:.2f}x"
        lines.append(f"  {t['system']:<18} {extra:<20} {text}{vs}")
    return lines
