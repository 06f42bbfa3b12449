"""Figure 2: the average share of KV cache memory by class (token states, reservation, internal
fragmentation, external fragmentation and others) for the three Orca variants and vLLM, OPT-13B on
one A100-40GB serving ShareGPT. The artifact's own classes (`kv_*_pct_artifact`, docs/metrics.md) at its
setting: 4.0 req/s, the window [300, 900] s of a 900 s trace (`exp=memory_waste`)."""

import matplotlib.pyplot as plt

from paper_figs.core import LABELS, figure_note, span

TITLE = "Figure 2: KV cache memory by class, OPT-13B, ShareGPT"
SYSTEMS = ["orca_max", "orca_pow2", "orca_oracle", "vllm"]  # the paper's bar order
CLASSES = [
    ("kv_token_states_pct_artifact", "Token states", "#4c72b0", "token_states"),
    ("kv_reservation_pct_artifact", "Reservation", "#dd8452", "reservation"),
    ("kv_internal_frag_pct_artifact", "Internal frag.", "#c44e52", "internal_frag"),
    ("kv_external_frag_pct_artifact", "External frag. & others", "#8172b3", "external_frag"),
]


def make(s):
    run = s.run("memory_waste")
    values = {}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, sys in enumerate(SYSTEMS):
        bottom = 0.0
        for col, label, color, key in CLASSES:
            v = run.value(sys, col)
            values[f"{key}/{sys}"] = v
            ax.bar(i, v, bottom=bottom, color=color, label=label if i == 0 else None, width=0.6)
            if v >= 4:
                ax.text(i, bottom + v / 2, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
            bottom += v
    orca = [values[f"token_states/{x}"] for x in SYSTEMS[:3]]
    values["token_states/orca_min"], values["token_states/orca_max_of_variants"] = span(orca)
    lo, hi = s.ref("token_states/orca_min"), s.ref("token_states/orca_max_of_variants")
    for y in (lo, hi):  # the paper's text: Orca's token states span 20.4-38.2% of KV memory
        ax.plot([-0.4, 2.4], [y, y], ls="--", color="black", lw=0.8)
    ax.text(2.45, hi, f"paper: {lo:g}-{hi:g}%\ntoken states", fontsize=6, va="bottom")
    ax.set_xticks(range(len(SYSTEMS)), [LABELS[x] for x in SYSTEMS], fontsize=8)
    ax.set_ylabel("KV cache usage (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.22), ncol=2, frameon=False)
    figure_note(fig, f"pagelab simulator, {s.tier.name} tier; the artifact's classes (docs/metrics.md)")
    s.save(fig, "fig2")
    return values
