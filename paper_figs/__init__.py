"""The paper's figures and tables, regenerated through the harness and compared with the paper's values:
`python -m paper_figs all [--quick]` (paper_figs/README.md). One module per figure names its experiments
and draws; core.py runs, reuses and compares; report.py writes the HTML report."""
