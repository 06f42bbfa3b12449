"""Figure 18: (a) decode attention kernel latency, paged (vLLM, 16-token blocks) against contiguous
(FasterTransformer's layout), OPT-13B's 40 heads of 128, batch 8 and 32, contexts 64-256: the cost
model's A100 prediction beside a measurement on this machine (paper_figs/micro.py); (b) normalized
latency against block size, vLLM on OPT-13B, ShareGPT at 2.01 req/s and Alpaca at 30.1 req/s
(`exp=block_size_sweep`, `exp=block_size_alpaca`)."""

import math

import matplotlib.pyplot as plt
import numpy as np

from paper_figs import micro
from paper_figs.core import figure_note, span

TITLE = "Figure 18: (a) attention kernel latency, (b) end-to-end latency vs block size"


def _bars(ax, rows, title):
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["paged_us"] for r in rows], 0.4, label="vLLM (paged, block 16)", color="#c44e52")
    ax.bar(x + 0.2, [r["contiguous_us"] for r in rows], 0.4, label="FT layout (contiguous)", color="#937860")
    ax.set_xticks(x, [f"bs {r['batch']}\nctx {r['context']}" for r in rows], fontsize=7)
    ax.set_ylabel("Kernel latency (µs)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def make(s):
    pred = micro.kernel_prediction()
    meas = s.cached("fig18a_kernel", lambda: micro.kernel_latency(s.tier.microbench_reps))
    values = {}
    for tag, rows in (("a100", pred), ("measured", meas["rows"])):
        slow = []
        for r in rows:
            key = f"b{r['batch']}_c{r['context']}"
            values[f"{tag}/paged_us/{key}"], values[f"{tag}/contiguous_us/{key}"] = (
                r["paged_us"],
                r["contiguous_us"],
            )
            slow.append(r["paged_us"] / r["contiguous_us"] - 1)
        values[f"{tag}/slowdown_min"], values[f"{tag}/slowdown_max"] = span(slow)
        values[f"{tag}/slowdown_mean"] = sum(slow) / len(slow)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    _bars(axes[0], pred, "(a) predicted: cost model, A100-40GB")
    for i, r in enumerate(pred):  # the paper's eye-read latencies (context 256) as stars
        for dx, layout in ((-0.2, "paged"), (0.2, "contiguous")):
            y = s.ref(f"a100/{layout}_us/b{r['batch']}_c{r['context']}")
            if not math.isnan(y):
                axes[0].plot(i + dx, y, marker="*", ms=10, color="black", ls="")
    _bars(axes[1], meas["rows"], f"(a) measured: {meas['what']}\n{meas['machine']}")
    ax = axes[2]
    for name, exp, color in (
        ("ShareGPT", "block_size_sweep", "#4c72b0"),
        ("Alpaca", "block_size_alpaca", "#dd8452"),
    ):
        run = s.run(exp)
        pts = run.series("vllm").sort_values("block_size")
        bs, lat = pts["block_size"].astype(int).to_numpy(), pts["normalized_latency"].to_numpy()
        rate = float(pts["request_rate"].iloc[0]) if len(pts) else math.nan
        ax.plot(bs, lat, marker="o", color=color, label=f"{name} ({rate:g} req/s)")
        key = name.lower()
        ok = len(lat) and not np.isnan(lat).all()
        values[f"{key}/best_block_size"] = float(bs[np.nanargmin(lat)]) if ok else math.nan
        values[f"{key}/worst_block_size"] = float(bs[np.nanargmax(lat)]) if ok else math.nan
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16, 32, 64, 128, 256], ["1", "2", "4", "8", "16", "32", "64", "128", "256"])
    ax.set_xlabel("Block size")
    ax.set_ylabel("Normalized latency (s/token)")
    ax.set_title("(b) end-to-end latency with different block sizes", fontsize=9)
    ax.legend(fontsize=7)
    figure_note(fig, micro.note(s.tier.name))
    fig.tight_layout()
    s.save(fig, "fig18")
    return values
