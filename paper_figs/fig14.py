"""Figure 14: parallel sampling (n = 2, 4, 6) and beam search (width 2, 4, 6), OPT-13B, Alpaca:
normalized latency against request rate for the three Orca variants and vLLM (`exp=parallel_n2` ...
`exp=beam_n6`, the artifact's rate grids). Quantities: capacities at 0.5 s/token (the paper's
eye-read knees) and vLLM over Orca (Oracle)."""

import matplotlib.pyplot as plt

from paper_figs.core import figure_note, latency_panel, ratio

TITLE = "Figure 14: parallel sampling and beam search, OPT-13B, Alpaca"
SYSTEMS = ["orca_max", "orca_pow2", "orca_oracle", "vllm"]
PANELS = [  # (panel, preset, title, the paper's x-axis limit)
    ("a", "parallel_n2", "(a) parallel generation, n = 2", 20),
    ("b", "parallel_n4", "(b) parallel generation, n = 4", 12),
    ("c", "parallel_n6", "(c) parallel generation, n = 6", 8),
    ("d", "beam_n2", "(d) beam search, width 2", 20),
    ("e", "beam_n4", "(e) beam search, width 4", 12),
    ("f", "beam_n6", "(f) beam search, width 6", 8),
]


def make(s):
    values = {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (panel, exp, title, xmax) in zip(axes.flat, PANELS):
        run = s.run(exp)
        knees = {sys: s.ref(f"{panel}/capacity/{sys}") for sys in SYSTEMS}
        latency_panel(ax, run, SYSTEMS, title, knees=knees, xmax=max(xmax, run.points.request_rate.max()))
        for sys in SYSTEMS:
            values[f"{panel}/capacity/{sys}"] = run.cap(sys)
        for sys in SYSTEMS[:3]:
            values[f"{panel}/ratio/vllm:{sys}"] = ratio(run.cap("vllm"), run.cap(sys))
    for ax in axes[:, 0]:
        ax.set_ylabel("Normalized latency (s/token)")
    for ax in axes[1]:
        ax.set_xlabel("Request rate (req/s)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.03))
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; stars: the paper's eye-read knees; "
                "hollow markers: points above the paper's 1.0 s/token limit")  # fmt: skip
    fig.tight_layout()
    s.save(fig, "fig14")
    return values
