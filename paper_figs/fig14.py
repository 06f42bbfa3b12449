"""Figure 14: parallel sampling (n = 2, 4, 6) and beam search (width 2, 4, 6), OPT-13B, Alpaca:
normalized latency against request rate for the three Orca variants and vLLM (`exp=parallel_n2` ...
`exp=beam_n6`, the artifact's rate grids). Quantities: capacities at 0.5 s/token (the paper's
eye-read knees) and vLLM over Orca (Oracle)."""

from paper_figs.core import latency_grid

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
    return latency_grid(s, PANELS, SYSTEMS, "fig14")
