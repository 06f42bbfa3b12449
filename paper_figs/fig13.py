"""Figure 13: average number of batched requests, OPT-13B; (a) ShareGPT, (b) Alpaca. The artifact's
definition (`batched_requests_artifact`: running groups per recorded step, new prompts included, over
[600, 900] s of a 900 s trace) at the artifact's rates: 1.5 req/s (its script; the caption says 2) and
30 req/s (`exp=batched_requests`, `exp=batched_requests_alpaca`)."""

import matplotlib.pyplot as plt

from paper_figs.core import COLORS, LABELS, figure_note, ratio

TITLE = "Figure 13: average number of batched requests, OPT-13B"
SYSTEMS = ["orca_max", "orca_pow2", "orca_oracle", "vllm"]
PANELS = [("a", "batched_requests", "(a) ShareGPT"), ("b", "batched_requests_alpaca", "(b) Alpaca")]


def make(s):
    values = {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (panel, exp, title) in zip(axes, PANELS):
        run = s.run(exp)
        rate = float(run.points["request_rate"].iloc[0])
        for i, sys in enumerate(SYSTEMS):
            v = run.value(sys, "batched_requests_artifact")
            values[f"{panel}/batched_requests/{sys}"] = v
            ax.bar(i, v, color=COLORS[sys], width=0.6)
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        for sys in SYSTEMS[:3]:
            values[f"{panel}/ratio/vllm:{sys}"] = ratio(
                values[f"{panel}/batched_requests/vllm"], values[f"{panel}/batched_requests/{sys}"]
            )
        ax.set_xticks(range(len(SYSTEMS)), [LABELS[x] for x in SYSTEMS], fontsize=8)
        ax.set_ylabel("# Batched requests")
        ax.set_title(f"{title}, {rate:g} req/s", fontsize=9)
    figure_note(
        fig, f"pagelab simulator, {s.tier.name} tier; the artifact's definition (docs/metrics.md, row 12)"
    )
    fig.tight_layout()
    s.save(fig, "fig13")
    return values
