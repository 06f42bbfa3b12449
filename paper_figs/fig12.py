"""Figure 12: normalized latency against request rate, basic sampling; (a-c) ShareGPT on OPT-13B,
66B and 175B, (d-f) Alpaca; five systems. Quantities: each system's capacity at 0.5 s/token (the
paper's eye-read knees) and vLLM's capacity over each baseline's (the text's ratios)."""

import matplotlib.pyplot as plt

from paper_figs.core import SYSTEM_ORDER, figure_note, latency_panel, ratio, span

TITLE = "Figure 12: single sequence generation, normalized latency vs request rate"
PANELS = [  # (panel, preset, title, the paper's x-axis limit)
    ("a", "sharegpt_opt13b", "(a) OPT-13B, 1 GPU, ShareGPT", 2.0),
    ("b", "sharegpt_opt66b", "(b) OPT-66B, 4 GPUs, ShareGPT", 1.0),
    ("c", "sharegpt_opt175b", "(c) OPT-175B, 8 GPUs, ShareGPT", 2.5),
    ("d", "alpaca_opt13b", "(d) OPT-13B, 1 GPU, Alpaca", 30),
    ("e", "alpaca_opt66b", "(e) OPT-66B, 4 GPUs, Alpaca", 20),
    ("f", "alpaca_opt175b", "(f) OPT-175B, 8 GPUs, Alpaca", 20),
]


def make(s):
    values = {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (panel, exp, title, xmax) in zip(axes.flat, PANELS):
        run = s.run(exp)
        knees = {sys: s.ref(f"{panel}/capacity/{sys}") for sys in SYSTEM_ORDER}
        latency_panel(
            ax, run, SYSTEM_ORDER, title, knees=knees, xmax=max(xmax, run.points.request_rate.max())
        )
        for sys in SYSTEM_ORDER:
            values[f"{panel}/capacity/{sys}"] = run.cap(sys)
            if sys != "vllm":
                values[f"{panel}/ratio/vllm:{sys}"] = ratio(run.cap("vllm"), run.cap(sys))
    for ax in axes[:, 0]:
        ax.set_ylabel("Normalized latency (s/token)")
    for ax in axes[1]:
        ax.set_xlabel("Request rate (req/s)")
    for sys in ("orca_oracle", "orca_max", "fastertransformer"):  # the text's ranges over (a-c)
        r = [values[f"{p}/ratio/vllm:{sys}"] for p in "abc"]
        values[f"abc/ratio_min/vllm:{sys}"], values[f"abc/ratio_max/vllm:{sys}"] = span(r)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=5, frameon=False, bbox_to_anchor=(0.5, 1.03))
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; stars: the paper's eye-read knees; "
                "hollow markers: points above the paper's 1.0 s/token limit")  # fmt: skip
    fig.tight_layout()
    s.save(fig, "fig12")
    return values
