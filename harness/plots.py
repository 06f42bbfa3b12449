"""The run's figures as PNG: normalized latency vs rate (Figure 12), batched requests (Figure 13), the
memory breakdown (Figure 2), and capacity against each swept parameter; with an SLO (cfg.slo), output
throughput against p99 TPOT, p99 TTFT and p99 inter-token latency (Pareto fronts) and SLO attainment
against rate."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from baselines import ALL_SYSTEMS  # noqa: E402
from harness.config import Config  # noqa: E402

LABELS = {
    "vllm": "vLLM",
    "orca_max": "Orca (Max)",
    "orca_pow2": "Orca (Pow2)",
    "orca_oracle": "Orca (Oracle)",
    "fastertransformer": "FasterTransformer",
    "vattention": "vAttention (64 KiB)",
    "vattention_2m": "vAttention (2 MiB)",
}
MARKERS = {
    "vllm": "o",
    "orca_max": "s",
    "orca_pow2": "^",
    "orca_oracle": "D",
    "fastertransformer": "x",
    "vattention": "v",
    "vattention_2m": "P",
}
KV = [
    ("kv_token_states_pct", "Token states", "#4c72b0"),
    ("kv_reservation_pct", "Reservation", "#dd8452"),
    ("kv_internal_frag_pct", "Internal frag.", "#c44e52"),
    ("kv_external_frag_pct", "External frag. & others", "#8172b3"),
]


def _series(rows: list[dict], cfg: Config):
    """(label, system, rates, rows) per line: one per system and combination of swept values."""
    keys = list(cfg.sweep)
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault((r["system"], *(r[k] for k in keys)), []).append(r)
    order = {s: i for i, s in enumerate(ALL_SYSTEMS)}
    out = []
    for (system, *values), pts in sorted(lines.items(), key=lambda kv: (kv[0][1:], order.get(kv[0][0], 9))):
        pts = sorted(pts, key=lambda p: float(p["request_rate"]))
        extra = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
        label = LABELS.get(system, system) + (f" ({extra})" if extra else "")
        out.append((label, system, [float(p["request_rate"]) for p in pts], pts))
    return out


# The second and later lines of one system (a sweep) get a marker and line style of their own, so that
# lines that coincide stay visible (chunked_prefill's arms often do).
SWEEP_MARKERS = ["o", "s", "^", "D", "v", "P"]
LINESTYLES = ["-", "--", ":", "-."]


def _styles(series) -> list[dict]:
    """plot() keywords of each line of `series`: its system's marker; past a system's first line, the
    k-th line's own hollow marker and line style."""
    seen: dict[str, int] = {}
    out = []
    for _, system, _, _ in series:
        k = seen[system] = seen.get(system, -1) + 1
        if k == 0:
            out.append({"marker": MARKERS.get(system, ".")})
        else:
            out.append(
                {
                    "marker": SWEEP_MARKERS[k % len(SWEEP_MARKERS)],
                    "ls": LINESTYLES[k % len(LINESTYLES)],
                    "mfc": "none",
                }
            )
    return out


def _title(cfg: Config) -> str:
    gpus = f"{cfg.tensor_parallel_size} x " if cfg.tensor_parallel_size > 1 else ""
    # multi_turn and mooncake read no `dataset`: their kind names the data
    data = cfg.workload.kind if cfg.workload.kind in ("multi_turn", "mooncake") else cfg.workload.dataset
    return f"{cfg.model.name} on {gpus}{cfg.hardware.name}, {data} ({cfg.name})"


def plot_run(run_dir: Path, rows: list[dict], capacity_rows: list[dict], cfg: Config) -> None:
    series = _series(rows, cfg)
    _line_plot(
        run_dir / "normalized_latency.png",
        series,
        "normalized_latency",
        "Normalized latency (s/token)",
        cfg,
        ymax=cfg.plot_ymax,
        threshold=cfg.capacity_threshold,
    )
    _line_plot(run_dir / "batched_requests.png", series, "avg_batched_requests", "Avg. batched requests", cfg)
    _memory_plot(run_dir / "memory_waste.png", series, cfg)
    for key in cfg.sweep:
        _capacity_plot(run_dir / f"capacity_vs_{key}.png", capacity_rows, key, cfg)
        if len({r["request_rate"] for r in rows}) == 1:  # one load (Figure 19's kind): the latency itself
            rate = rows[0]["request_rate"]
            ylabel = f"Normalized latency at {rate} req/s (s/token, log scale)"
            _capacity_plot(
                run_dir / f"normalized_latency_vs_{key}.png",
                rows,
                key,
                cfg,
                "normalized_latency",
                ylabel,
                True,
            )
    if cfg.slo.limits():
        _slo_plots(run_dir, series, capacity_rows, cfg)
    if cfg.workload.priority_classes:
        _class_plot(run_dir / "class_latency.png", series, list(cfg.workload.priority_classes), cfg)
    for key in ("n", "beam_width", "prefix_len"):
        if key in cfg.sweep and "vllm" in cfg.systems:
            _sharing_plot(run_dir / f"sharing_saving_vs_{key}.png", rows, key, cfg)
    if cfg.system.enable_prefix_caching:  # the lines of the systems that have the cache (vLLM's)
        cached = [line for line in series if all(p.get("prefix_hit_rate") not in (None, "") for p in line[3])]
        if cached:
            ylabel = "Prefix cache hit rate (share of prompt blocks)"
            _line_plot(run_dir / "prefix_hit_rate.png", cached, "prefix_hit_rate", ylabel, cfg, ymax=1.0)


def _line_plot(path, series, column, ylabel, cfg, ymax=None, threshold=None) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for (label, _, rates, pts), style in zip(series, _styles(series)):
        ax.plot(rates, [float(p[column]) for p in pts], label=label, **style)
    if threshold is not None:
        ax.axhline(
            threshold, color="grey", lw=0.8, ls="--", label=f"capacity threshold ({threshold} s/token)"
        )
    if ymax is not None:
        ax.set_ylim(0, ymax)
    _finish(fig, ax, path, "Request rate (req/s)", ylabel, _title(cfg))


def _class_plot(path, series, classes: list[int], cfg) -> None:
    """Priority classes: p99 TTFT (left) and p99 end-to-end latency (right) of each class against the
    rate, one colour per line (system and swept values), one line style per class."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=150)
    styles = ["-", "--", ":", "-."]
    for ax, (column, title) in zip(
        axes, (("p99_ttft_ms", "p99 TTFT"), ("p99_e2el_ms", "p99 end-to-end latency"))
    ):
        for i, (label, system, rates, pts) in enumerate(series):
            for j, c in enumerate(classes):
                ax.plot(
                    rates,
                    [float(p[f"class{c}_{column}"]) / 1e3 for p in pts],
                    color=f"C{i}",
                    ls=styles[j % len(styles)],
                    marker=MARKERS.get(system, "."),
                    label=f"{label}, priority {c}",
                )
        log = column == "p99_ttft_ms"  # TTFT spans queueing (tens of s) and a prompt step (0.1 s)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("Request rate (req/s)")
        ax.set_ylabel(f"{title} (s{', log scale' if log else ''})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(cfg), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _memory_plot(path, series, cfg) -> None:
    """Figure 2: the KV space used, by class, averaged over the run; one bar per line at the highest
    rate every line ran at, or the rate nearest it where lines ran on their own grids (each bar then
    names its rate); used memory renormalized to 100%, as the paper shows it."""
    fig, ax = plt.subplots(figsize=(8.0, 4.4), dpi=150)
    labels, bottoms = [], None
    common = min(max(rates) for _, _, rates, _ in series)
    values = []
    for label, _, _rates, pts in series:
        p = min(pts, key=lambda p: (abs(float(p["request_rate"]) - common), float(p["request_rate"])))
        used = sum(float(p[k]) for k, _, _ in KV) or 1.0
        values.append([100 * float(p[k]) / used for k, _, _ in KV])
        rate = float(p["request_rate"])
        labels.append(label if rate == common else f"{label} ({rate:g} req/s)")
    bottoms = [0.0] * len(values)
    for i, (_, name, color) in enumerate(KV):
        heights = [v[i] for v in values]
        ax.bar(range(len(values)), heights, bottom=bottoms, color=color, label=name)
        for j, (h, b) in enumerate(zip(heights, bottoms)):
            if h >= 6:
                ax.text(j, b + h / 2, f"{h:.1f}", ha="center", va="center", fontsize=7, color="white")
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    # Long labels (several swept values) wrapped, so that the rotated text stays inside the figure
    labels = [textwrap.fill(label, 32) for label in labels]
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("KV cache memory used (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Memory use at {common:g} req/s: {_title(cfg)}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _capacity_plot(path, capacity_rows, key, cfg, column="capacity_rps", ylabel=None, logy=False) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    others = [k for k in cfg.sweep if k != key]
    lines: dict[tuple, list[dict]] = {}
    for r in capacity_rows:
        lines.setdefault((r["system"], *(r[k] for k in others)), []).append(r)
    # The swept values as evenly spaced ticks in their own order (numbers by value, whatever the
    # order each line lists them in); capacities from zero, so that small differences look small.
    ticks = sorted({str(r[key]) for r in capacity_rows}, key=_num)
    series = [(None, system, None, None) for system, *_ in lines]
    for ((system, *values), pts), style in zip(lines.items(), _styles(series)):
        pts = sorted(pts, key=lambda p: _num(p[key]))
        extra = ", ".join(f"{k}={v}" for k, v in zip(others, values))
        label = LABELS.get(system, system) + (f" ({extra})" if extra else "")
        xs = [ticks.index(str(p[key])) for p in pts]
        (line,) = ax.plot(xs, [float(p[column]) for p in pts], label=label, **style)
        if column == "slo_capacity_rps":  # the bracket the search or the grid left: met to missed
            for x, p in zip(xs, pts):
                met, missed = float(p["slo_rate_met"]), float(p["slo_rate_missed"])
                if not (math.isnan(met) or math.isnan(missed)):
                    ax.vlines(x, met, missed, colors=line.get_color(), lw=3, alpha=0.35)
    ax.set_xticks(range(len(ticks)), ticks)
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.08 * ax.get_ylim()[1])
    ylabel = ylabel or f"Capacity (req/s at {cfg.capacity_threshold} s/token)"
    _finish(fig, ax, path, key, ylabel, _title(cfg))


def _finish(fig, ax, path, xlabel, ylabel, title, legend=True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sharing_plot(path, rows, key, cfg) -> None:
    """Figure 15: vLLM's memory saved by sharing (% of the blocks its tables would need without it),
    averaged over the rates run, for each value of the swept parameter."""
    values = sorted({r[key] for r in rows if r["system"] == "vllm"}, key=_num)
    saving = []
    for v in values:
        pts = [float(r["sharing_saving_pct"]) for r in rows if r["system"] == "vllm" and r[key] == v]
        saving.append(sum(pts) / len(pts))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    ax.bar([str(v) for v in values], saving, color="#4c72b0")
    for i, s in enumerate(saving):
        ax.text(i, s, f"{s:.1f}%", ha="center", va="bottom", fontsize=8)
    _finish(fig, ax, path, key, "Memory saving from sharing (%)", f"vLLM: {_title(cfg)}", legend=False)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def _slo_plots(run_dir: Path, series, capacity_rows: list[dict], cfg: Config) -> None:
    """With an SLO: throughput against tail latency (p99 TPOT, p99 TTFT, p99 ITL) with each line's
    Pareto front, SLO attainment against rate with the target, and the SLO capacity against each swept
    parameter (with the bracket it was read from)."""
    slo = cfg.slo
    tpot = (slo.tpot_s * 1e3, f"TPOT limit ({slo.tpot_s * 1e3:g} ms)") if slo.tpot_s is not None else None
    ttft = (slo.ttft_s, f"TTFT limit ({slo.ttft_s:g} s)") if slo.ttft_s is not None else None
    _pareto_plot(
        run_dir / "throughput_vs_p99_tpot.png", series, "p99_tpot_ms", 1.0, "p99 TPOT (ms)", tpot, cfg
    )
    _pareto_plot(
        run_dir / "throughput_vs_p99_ttft.png", series, "p99_ttft_ms", 1e-3, "p99 TTFT (s)", ttft, cfg
    )
    # The gaps between tokens, which the SLOs do not limit: what a prompt step stalls (chunked prefill)
    _pareto_plot(
        run_dir / "throughput_vs_p99_itl.png",
        series,
        "p99_itl_ms",
        1.0,
        "p99 inter-token latency (ms)",
        None,
        cfg,
    )
    _attainment_plot(run_dir / "slo_attainment.png", series, capacity_rows, cfg)
    for key in cfg.sweep:
        _capacity_plot(
            run_dir / f"slo_capacity_vs_{key}.png",
            capacity_rows,
            key,
            cfg,
            column="slo_capacity_rps",
            ylabel=f"SLO capacity (req/s, {100 * cfg.slo.target:g}% within SLO)",
        )


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (latency, throughput) no other point beats on both (lower or equal latency and higher
    or equal throughput, one of them strictly), by increasing latency; NaNs left out."""
    front: list[tuple[float, float]] = []
    # By latency, the highest throughput first within a latency: a point joins the front when it has
    # more throughput than every point of lower or equal latency before it.
    for x, y in sorted(
        (p for p in points if not (math.isnan(p[0]) or math.isnan(p[1]))), key=lambda p: (p[0], -p[1])
    ):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _pareto_plot(path, series, column, scale, xlabel, limit, cfg) -> None:
    """Output throughput (tokens/s) against a tail latency, one point per rate run: each line's Pareto
    front drawn through its points (labelled with their rates), the dominated points hollow."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    xs_all, labels, any_dominated = [], [], False
    for (label, _, rates, pts), style in zip(series, _styles(series)):
        xy = [(float(p[column]) * scale, float(p["output_throughput"])) for p in pts]
        rate_of = {xy_i: r for xy_i, r in zip(xy, rates)}
        front = pareto_front(xy)
        if not front:
            continue
        # Filled markers on the front: hollow ones here mean dominated points
        (line,) = ax.plot(*zip(*front), label=label, **{k: v for k, v in style.items() if k != "mfc"})
        dominated = [p for p in xy if p not in front and not (math.isnan(p[0]) or math.isnan(p[1]))]
        if dominated:
            hollow = dict(marker=style["marker"], facecolors="none", alpha=0.6)
            ax.scatter(*zip(*dominated), edgecolors=line.get_color(), **hollow)
            any_dominated = True
        labels += [(x, y, rate_of[(x, y)]) for x, y in front]
        xs_all += [x for x, _ in xy if not math.isnan(x) and x > 0]
    if limit is not None:  # (value, label): the per-request limit of the SLO, on this axis
        ax.axvline(limit[0], color="grey", lw=0.8, ls="--", label=limit[1])
        xs_all.append(limit[0])
    if xs_all and max(xs_all) > 30 * min(xs_all):
        ax.set_xscale("log")  # past capacity the tail latency grows by orders of magnitude
    _label_rates(ax, labels)
    if any_dominated:
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="dominated points")
    title = f"{_title(cfg)}\nPareto front per line; labels: request rate (req/s)"
    _finish(fig, ax, path, xlabel, "Output throughput (tokens/s)", title)


def _label_rates(ax, labels: list[tuple[float, float, float]], min_px: float = 14.0) -> None:
    """Each point's request rate beside it, leaving out labels that would overlap one already placed
    (a bisection packs its points near the capacity)."""
    ax.figure.canvas.draw()  # final limits and scales, for the positions in pixels
    placed: list[tuple[float, float]] = []
    for x, y, rate in labels:
        px, py = ax.transData.transform((x, y))
        if all(abs(px - qx) > 2 * min_px or abs(py - qy) > min_px for qx, qy in placed):
            ax.annotate(f"{rate:.3g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
            placed.append((px, py))


def _attainment_plot(path, series, capacity_rows, cfg) -> None:
    """SLO attainment (% of requests meeting every SLO) against request rate, the target as a line and
    each line's SLO capacity as a dotted drop line from it."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for (label, system, rates, pts), style in zip(series, _styles(series)):
        values = [100 * float(p["slo_attainment"]) for p in pts]
        (line,) = ax.plot(rates, values, label=label, **style)
        cap = next(
            (
                c
                for c in capacity_rows
                if c["system"] == system and all(str(c[k]) == str(pts[0][k]) for k in cfg.sweep)
            ),
            None,
        )
        if cap is not None and float(cap["slo_capacity_rps"]) > 0:
            at = float(cap["slo_capacity_rps"])
            ax.vlines(at, 0, 100 * cfg.slo.target, colors=line.get_color(), linestyles=":", lw=1.2)
    ax.axhline(
        100 * cfg.slo.target, color="grey", lw=0.8, ls="--", label=f"target ({100 * cfg.slo.target:g}%)"
    )
    ax.set_ylim(0, 102)
    title = f"{_title(cfg)}\nSLO: {cfg.slo.describe()}; dotted: each line's SLO capacity"
    _finish(fig, ax, path, "Request rate (req/s)", "SLO attainment (% of requests)", title)
