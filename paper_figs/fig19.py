"""Figure 19: (a) swapping the KV of 256 tokens out, in, and both, against recomputing them, by block
size: the cost model's A100 prediction for OPT-13B beside a measurement of the real engine on this
machine (paper_figs/micro.py); (b) normalized latency against block size, vLLM on OPT-13B, ShareGPT
at 2.01 req/s, preempting by swap or by recompute (`exp=swap_vs_recompute`)."""

import matplotlib.pyplot as plt

from paper_figs import micro
from paper_figs.core import figure_note, span

TITLE = "Figure 19: (a) swap vs recompute overhead, (b) end-to-end latency by preemption mode"
SERIES = [
    ("swap_out_ms", "Swap out", "#4c72b0"),
    ("swap_in_ms", "Swap in", "#55a868"),
    ("swap_in_out_ms", "Swap in + out", "#8172b3"),
    ("recompute_ms", "Recompute", "#c44e52"),
]
TICKS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _micro(ax, rows, title, log=False):
    bs = [r["block_size"] for r in rows]
    for key, label, color in SERIES:
        ax.plot(bs, [r[key] for r in rows], marker="o", ms=3, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(TICKS, [str(t) for t in TICKS])
    ax.set_xlabel("Block size")
    ax.set_ylabel("Time (ms)")
    if log:  # on a CPU a swap is a memory copy, far below a forward pass: both visible on a log axis
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def make(s):
    pred = micro.swap_recompute_prediction()
    meas = s.cached("fig19a_swap", lambda: micro.swap_recompute(s.tier.microbench_reps))
    values = {}
    for tag, rows in (("a100", pred), ("measured", meas["rows"])):
        for r in rows:
            for key, *_ in SERIES:
                values[f"{tag}/{key}@{r['block_size']}"] = r[key]
    values["a100/recompute_ms"] = pred[0]["recompute_ms"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    _micro(axes[0], pred, "(a) predicted: cost model, OPT-13B, A100-40GB")
    for q, x in (
        ("swap_out_ms@1", 1),
        ("swap_in_ms@1", 1),
        ("swap_in_out_ms@1", 1),
        ("swap_in_out_ms@256", 256),
    ):
        axes[0].plot(x, s.ref(f"a100/{q}"), marker="*", ms=10, color="black", ls="")
    axes[0].plot(
        [1, 256], [s.ref("a100/recompute_ms")] * 2, marker="*", ms=10, color="#c44e52", mec="black", ls=""
    )
    _micro(axes[1], meas["rows"], f"(a) measured: {meas['what']}\n{meas['machine']}", log=True)
    ax = axes[2]
    run = s.run("swap_vs_recompute")
    lat = {}
    for mode, color in (("recompute", "#c44e52"), ("swap", "#4c72b0")):
        pts = run.series("vllm", preemption_mode=mode).sort_values("block_size")
        ax.plot(
            pts["block_size"], pts["normalized_latency"], marker="o", color=color, label=mode.capitalize()
        )
        lat[mode] = dict(zip(pts["block_size"].astype(int), pts["normalized_latency"]))
    ratios = {b: lat["recompute"][b] / lat["swap"][b] for b in lat["swap"] if b in lat["recompute"]}
    for b, r in ratios.items():
        values[f"recompute_over_swap/{b}"] = r
    values["recompute_over_swap_max"] = span(ratios.values())[1]
    ax.set_xscale("log", base=2)
    ax.set_xticks(TICKS, [str(t) for t in TICKS])
    ax.set_xlabel("Block size")
    ax.set_ylabel("Normalized latency (s/token)")
    rate = float(run.points["request_rate"].max())
    ax.set_title(f"(b) end-to-end, ShareGPT {rate:g} req/s", fontsize=9)
    ax.legend(fontsize=7)
    figure_note(fig, micro.note(s.tier.name))
    fig.tight_layout()
    s.save(fig, "fig19")
    return values
