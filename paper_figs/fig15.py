"""Figure 15: the share of KV memory vLLM saves by sharing blocks, OPT-13B, Alpaca; (a) parallel
sampling n = 2, 4, 6, (b) beam search width 2, 4, 6. The artifact's definition
(`sharing_saving_pct_artifact`: 1 - 1 / mean(logical / physical blocks) over [300, 900] s of a 900 s
trace at 20 req/s; `exp=sharing_parallel`, `exp=sharing_beam`)."""

import matplotlib.pyplot as plt

from paper_figs.core import figure_note, span

TITLE = "Figure 15: memory saved by sharing, OPT-13B, Alpaca"
PANELS = [
    ("parallel", "sharing_parallel", "n", "(a) parallel sampling", "# Output sequences"),
    ("beam", "sharing_beam", "beam_width", "(b) beam search", "Beam width"),
]


def make(s):
    values = {}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (key, exp, param, title, xlabel) in zip(axes, PANELS):
        run = s.run(exp)
        pts = run.series("vllm").sort_values(param)
        xs, ys = pts[param].astype(int).tolist(), pts["sharing_saving_pct_artifact"].astype(float).tolist()
        ax.bar([str(x) for x in xs], ys, color="#c44e52", width=0.5)
        for i, y in enumerate(ys):
            ax.text(i, y, f"{y:.1f}", ha="center", va="bottom", fontsize=8)
            values[f"{key}/saving/{xs[i]}"] = y
        values[f"{key}/saving_min"], values[f"{key}/saving_max"] = span(ys)
        lo, hi = s.ref(f"{key}/saving_min"), s.ref(f"{key}/saving_max")
        ax.axhspan(lo, hi, color="black", alpha=0.12, label=f"paper: {lo:g}-{hi:g}%")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Memory saving (%)")
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; the artifact's definition (docs/metrics.md)")
    fig.tight_layout()
    s.save(fig, "fig15")
    return values
