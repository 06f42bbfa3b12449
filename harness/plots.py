"""The run's figures as PNG: normalized latency vs rate (Figure 12), batched requests (Figure 13), the
memory breakdown (Figure 2), and capacity against each swept parameter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from baselines import SYSTEMS  # noqa: E402
from harness.config import Config  # noqa: E402

LABELS = {
    "vllm": "vLLM",
    "orca_max": "Orca (Max)",
    "orca_pow2": "Orca (Pow2)",
    "orca_oracle": "Orca (Oracle)",
    "fastertransformer": "FasterTransformer",
}
MARKERS = {"vllm": "o", "orca_max": "s", "orca_pow2": "^", "orca_oracle": "D", "fastertransformer": "x"}
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
    order = {s: i for i, s in enumerate(SYSTEMS)}
    out = []
    for (system, *values), pts in sorted(lines.items(), key=lambda kv: (kv[0][1:], order.get(kv[0][0], 9))):
        pts = sorted(pts, key=lambda p: float(p["request_rate"]))
        extra = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
        label = LABELS.get(system, system) + (f" ({extra})" if extra else "")
        out.append((label, system, [float(p["request_rate"]) for p in pts], pts))
    return out


def _title(cfg: Config) -> str:
    gpus = f"{cfg.tensor_parallel_size} x " if cfg.tensor_parallel_size > 1 else ""
    return f"{cfg.model.name} on {gpus}{cfg.hardware.name}, {cfg.workload.dataset} ({cfg.name})"


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
    for key in ("n", "beam_width", "prefix_len"):
        if key in cfg.sweep and "vllm" in cfg.systems:
            _sharing_plot(run_dir / f"sharing_saving_vs_{key}.png", rows, key, cfg)


def _line_plot(path, series, column, ylabel, cfg, ymax=None, threshold=None) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    for label, system, rates, pts in series:
        ax.plot(rates, [float(p[column]) for p in pts], marker=MARKERS.get(system, "."), label=label)
    if threshold is not None:
        ax.axhline(
            threshold, color="grey", lw=0.8, ls="--", label=f"capacity threshold ({threshold} s/token)"
        )
    if ymax is not None:
        ax.set_ylim(0, ymax)
    _finish(fig, ax, path, "Request rate (req/s)", ylabel, _title(cfg))


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
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("KV cache memory used (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Memory use at {common:g} req/s: {_title(cfg)}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _capacity_plot(path, capacity_rows, key, cfg) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    others = [k for k in cfg.sweep if k != key]
    lines: dict[tuple, list[dict]] = {}
    for r in capacity_rows:
        lines.setdefault((r["system"], *(r[k] for k in others)), []).append(r)
    for (system, *values), pts in lines.items():
        pts = sorted(pts, key=lambda p: _num(p[key]))
        extra = ", ".join(f"{k}={v}" for k, v in zip(others, values))
        label = LABELS.get(system, system) + (f" ({extra})" if extra else "")
        ax.plot(
            [str(p[key]) for p in pts],
            [float(p["capacity_rps"]) for p in pts],
            marker=MARKERS.get(system, "."),
            label=label,
        )
    _finish(fig, ax, path, key, f"Capacity (req/s at {cfg.capacity_threshold} s/token)", _title(cfg))


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
