"""Check a paper_figs report directory (CI, after `python -m paper_figs all --quick`): every figure's
PNG and PDF present and non-empty, compare.csv complete (every reference row there, each measured),
index.html naming every figure.

    python scripts/check_paper_figs.py results/paper_figs/latest
"""

import csv
import sys
from pathlib import Path

from paper_figs.__main__ import FIGURES
from paper_figs.core import COMPARE_COLUMNS, load_reference


def main(report: Path) -> None:
    errors = []
    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = report / f"{name}.{ext}"
            if not f.is_file() or f.stat().st_size < 1000:
                errors.append(f"{f} missing or empty")
    with open(report / "compare.csv", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COMPARE_COLUMNS:
            errors.append(f"compare.csv columns {reader.fieldnames}, expected {COMPARE_COLUMNS}")
        rows = list(reader)
    ref = {(r["figure"], r["quantity"], r["op"]) for r in load_reference()}
    got = {(r["figure"], r["quantity"], r["op"]) for r in rows}
    errors += [f"compare.csv lacks {k}" for k in sorted(ref - got)]
    errors += [
        f"{r['figure']} {r['quantity']}: not measured"
        for r in rows
        if r["within_tolerance"] == "not measured"
    ]
    html = (report / "index.html").read_text()
    errors += [f"index.html does not show {n}" for n in FIGURES if f"id='{n}'" not in html]
    if errors:
        sys.exit("paper_figs report check failed:\n  " + "\n  ".join(errors))
    ok = sum(r["within_tolerance"] == "yes" for r in rows)
    print(
        f"paper_figs outputs OK: {report} ({len(FIGURES)} figures, {ok} of {len(rows)} quantities within tolerance)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
