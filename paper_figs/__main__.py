"""python -m paper_figs FIGURE... | all [--quick]: regenerate the paper's figures and tables, compare them
with the paper's values, and write a report (paper_figs/README.md).

    python -m paper_figs all --quick       # every figure, short traces and fewer rates (CI)
    python -m paper_figs fig12             # Figure 12 at the paper's durations and rate grids
    python -m paper_figs fig2 table1 --quick
    python -m paper_figs --list

Writes results/paper_figs/<timestamp>/ (results/paper_figs/latest points to it): each figure as PNG and
PDF, compare.csv, index.html (open it in a browser; --screenshot also renders it to index.png with
headless Chromium). Experiments run through the harness into results/paper_figs/runs/<tier>/ and are
reused: a second run only draws. Exit status 1 if any figure failed (the others are still drawn).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import math
import os
import sys
import time
import traceback
from pathlib import Path

from harness.experiment import ExperimentError
from harness.results import write_csv
from harness.workload import WorkloadError
from paper_figs.core import COMPARE_COLUMNS, TIERS, Session, compare
from paper_figs.report import screenshot, write_report

FIGURES = ["table1", "fig2", "fig11", "fig12", "fig13", "fig14", "fig15", "fig16", "fig17", "fig18", "fig19"]


def _name(arg: str) -> str:
    """fig12, 12, Fig12 and table1 name modules; a panel letter is ignored (12a -> fig12)."""
    a = arg.lower().rstrip("abcdef") if arg.lower() != "table1" else "table1"
    a = a if a.startswith(("fig", "table")) else f"fig{a}"
    if a not in FIGURES:
        raise SystemExit(f"error: unknown figure {arg!r}: choose from {', '.join(FIGURES)} or all")
    return a


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper_figs", description=__doc__.split("\n")[0])
    ap.add_argument("figures", nargs="*", help="figure names (fig12, 12, table1) or all")
    ap.add_argument("--quick", action="store_true", help="the quick tier: short traces, fewer rates")
    ap.add_argument("--results", default="results", help="results directory (default: results)")
    ap.add_argument("--screenshot", action="store_true", help="render index.html to index.png (Chromium)")
    ap.add_argument("--list", action="store_true", help="list the figures and exit")
    args = ap.parse_args(argv)
    if args.list:
        for f in FIGURES:
            print(f"{f:8} {importlib.import_module(f'paper_figs.{f}').TITLE}")
        return 0
    if not args.figures:
        ap.error("name figures (e.g. fig12) or all")
    names = FIGURES if "all" in args.figures else list(dict.fromkeys(_name(f) for f in args.figures))
    tier = TIERS["quick" if args.quick else "full"]
    base = Path(args.results) / "paper_figs"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = base / stamp
    out.mkdir(parents=True, exist_ok=False)
    session = Session(tier, base / "runs" / tier.name, out)
    results, rows, t_all = [], [], time.perf_counter()
    for name in names:
        module = importlib.import_module(f"paper_figs.{name}")
        session.figure, session.files, session.runs = name, [], []
        print(f"== {name}: {module.TITLE}", flush=True)
        t0, error = time.perf_counter(), None
        try:
            values = module.make(session)
        except (ExperimentError, WorkloadError, FileNotFoundError) as e:  # bad settings or missing data
            error, values = f"error: {e}", {}
            print(error, file=sys.stderr)
        except Exception:  # one figure failing must not lose the others
            error, values = traceback.format_exc(), {}
            print(error, file=sys.stderr)
        cmp = compare(name, values)
        rows += cmp
        results.append(
            {
                "name": name,
                "title": module.TITLE,
                "files": [p.name for p in session.files],
                "runs": [_run_info(p) for p in session.runs],
                "compare": cmp,
                "wall_s": time.perf_counter() - t0,
                "error": error,
            }
        )
        n_ok = sum(r["within_tolerance"] == "yes" for r in cmp)
        print(
            f"   {n_ok} of {len(cmp)} quantities within tolerance, {results[-1]['wall_s']:.0f} s", flush=True
        )
        # After every figure: an interrupted run keeps the compare table and report of those done.
        wall = time.perf_counter() - t_all
        write_csv(out / "compare.csv", [_fmt(r) for r in rows], COMPARE_COLUMNS)
        index = write_report(out, results, tier.name, wall)
    link = base / f".latest.{os.getpid()}.tmp"
    link.symlink_to(out.name)
    os.replace(link, base / "latest")
    if args.screenshot:
        screenshot(index, out / "index.png")
    n_ok = sum(r["within_tolerance"] == "yes" for r in rows)
    print(f"{n_ok} of {len(rows)} quantities within tolerance; wall {wall:.0f} s; report: {index}")
    return 1 if any(r["error"] for r in results) else 0


def _run_info(path: Path) -> dict:
    """A run the figure read, with the commit that ran it (a reused run may predate the code)."""
    import json

    try:
        commit = json.loads((path / "env.json").read_text()).get("git_commit", "")
    except (OSError, ValueError):
        commit = ""
    return {"path": str(path), "commit": commit}


def _fmt(row: dict) -> dict:
    return {k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()}


if __name__ == "__main__":
    sys.exit(main())
