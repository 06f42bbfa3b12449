"""Figure 16: shared prefix, LLaMA-13B on one A100-40GB, (a) one-shot (80-token prefix) and (b)
five-shot (341 tokens): normalized latency against request rate, Orca (Oracle) and vLLM
(`exp=shared_prefix`; the task lengths are Alpaca's, WMT16's are not available: docs/paper_fidelity.md
row 20)."""

import matplotlib.pyplot as plt

from paper_figs.core import figure_note, latency_panel, ratio

TITLE = "Figure 16: shared prompt prefix, LLaMA-13B"
SYSTEMS = ["orca_oracle", "vllm"]
PANELS = [
    ("a", 80, "(a) 1-shot prefix prompt (80 tokens)"),
    ("b", 341, "(b) 5-shot prefix prompt (341 tokens)"),
]


def make(s):
    run = s.run("shared_prefix")
    values = {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for ax, (panel, prefix, title) in zip(axes, PANELS):
        knees = {sys: s.ref(f"{panel}/capacity/{sys}") for sys in SYSTEMS}
        latency_panel(ax, run, SYSTEMS, title, knees=knees, xmax=40, prefix_len=prefix)
        for sys in SYSTEMS:
            values[f"{panel}/capacity/{sys}"] = run.cap(sys, prefix_len=prefix)
        values[f"{panel}/ratio/vllm:orca_oracle"] = ratio(
            values[f"{panel}/capacity/vllm"], values[f"{panel}/capacity/orca_oracle"]
        )
        ax.set_xlabel("Request rate (req/s)")
    axes[0].set_ylabel("Normalized latency (s/token)")
    axes[0].legend(fontsize=8)
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; stars: the paper's eye-read knees")
    fig.tight_layout()
    s.save(fig, "fig16")
    return values
