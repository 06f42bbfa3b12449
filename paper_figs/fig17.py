"""Figure 17: chatbot, OPT-13B on one A100-40GB: normalized latency against request rate for the three
Orca variants and vLLM; the history cut to its last 1024 tokens (`exp=chatbot`, the artifact's
construction on etalon's conversations: docs/paper_fidelity.md row 21)."""

import matplotlib.pyplot as plt

from paper_figs.core import figure_note, latency_panel, ratio

TITLE = "Figure 17: chatbot, OPT-13B"
SYSTEMS = ["orca_max", "orca_pow2", "orca_oracle", "vllm"]


def make(s):
    run = s.run("chatbot")
    values = {f"capacity/{sys}": run.cap(sys) for sys in SYSTEMS}
    for sys in SYSTEMS[:3]:
        values[f"ratio/vllm:{sys}"] = ratio(values["capacity/vllm"], values[f"capacity/{sys}"])
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    knees = {sys: s.ref(f"capacity/{sys}") for sys in SYSTEMS}
    latency_panel(
        ax, run, SYSTEMS, "Chatbot, OPT-13B", knees=knees, xmax=max(0.8, run.points.request_rate.max())
    )
    ax.set_xlabel("Request rate (req/s)")
    ax.set_ylabel("Normalized latency (s/token)")
    ax.legend(fontsize=7)
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; stars: the paper's eye-read knees")
    s.save(fig, "fig17")
    return values
