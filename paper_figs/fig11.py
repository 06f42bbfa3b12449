"""Figure 11: input and output length distributions of ShareGPT (the artifact's own length pairs,
prompt + output <= 2048: the pairs whose means the paper prints) and Alpaca (pagelab's table, 50,000
draws: the artifact's Alpaca file is not retrievable, docs/workloads.md)."""

import matplotlib.pyplot as plt
import numpy as np

from harness.datasets import ARTIFACT_SHAREGPT, SHAREGPT_HINT, find_data_file, read_length_pairs
from harness.workload import sample_lengths
from paper_figs.core import figure_note

TITLE = "Figure 11: input and output length distributions, ShareGPT and Alpaca"


def make(s):
    pairs = read_length_pairs(find_data_file(ARTIFACT_SHAREGPT, hint=SHAREGPT_HINT))
    pairs = pairs[pairs.sum(axis=1) <= 2048]
    alpaca = sample_lengths("alpaca", 50_000, np.random.default_rng(0))
    data = {"sharegpt": (pairs[:, 0], pairs[:, 1]), "alpaca": alpaca}
    values = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, (name, (inp, out)), bins in zip(
        axes, data.items(), (np.arange(0, 2049, 32), np.arange(0, 513, 8))
    ):
        ax.hist(inp, bins=bins, density=True, alpha=0.6, label="Input (prompt)", color="#4c72b0")
        ax.hist(out, bins=bins, density=True, alpha=0.6, label="Output", color="#dd8452")
        values[f"{name}/mean_input"], values[f"{name}/mean_output"] = float(inp.mean()), float(out.mean())
        label = "(a) ShareGPT" if name == "sharegpt" else "(b) Alpaca"
        ax.set_title(f"{label}: mean in {inp.mean():.2f}, out {out.mean():.2f}", fontsize=9)
        for q, color in (("mean_input", "#4c72b0"), ("mean_output", "#dd8452")):  # the paper's means
            ax.axvline(s.ref(f"{name}/{q}"), color=color, ls="--", lw=1)
        ax.set_xlabel("# tokens (dashed: the paper's means)")
        ax.set_ylabel("Density")
        ax.legend(fontsize=8)
    figure_note(
        fig, f"ShareGPT: {len(pairs):,} pairs of the artifact's file; Alpaca: 50,000 draws of pagelab's table"
    )
    fig.tight_layout()
    s.save(fig, "fig11")
    return values
