"""Figure 12: normalized latency against request rate, basic sampling; (a-c) ShareGPT on OPT-13B,
66B and 175B, (d-f) Alpaca; five systems. Quantities: each system's capacity at 0.5 s/token (the
paper's eye-read knees) and vLLM's capacity over each baseline's (the text's ratios)."""

from paper_figs.core import SYSTEM_ORDER, latency_grid, span

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
    values = latency_grid(s, PANELS, SYSTEM_ORDER, "fig12")
    for sys in ("orca_oracle", "orca_max", "fastertransformer"):  # the text's ranges over (a-c)
        r = [values[f"{p}/ratio/vllm:{sys}"] for p in "abc"]
        values[f"abc/ratio_min/vllm:{sys}"], values[f"abc/ratio_max/vllm:{sys}"] = span(r)
    return values
