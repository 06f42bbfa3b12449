"""The report: index.html beside the figures, readable offline (no script, no remote asset), and its
rendering by headless Chromium for a check that it shows."""

from __future__ import annotations

import html
import math
import shutil
import subprocess
from pathlib import Path

from harness.results import atomic_write, environment

STYLE = """
body { font-family: sans-serif; max-width: 1300px; margin: 1em auto; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
th { background: #f0f0f0; }
tr.no td { background: #fde8e8; } tr.yes td { background: #eaf6ea; } tr.na td { color: #888; }
.fig { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; border-top: 2px solid #ddd;
       padding-top: 1em; }
.fig img { max-width: 760px; width: 100%; border: 1px solid #eee; }
.err { color: #a00; white-space: pre-wrap; font-size: 12px; }
.note { color: #555; font-size: 13px; }
"""


def _num(x) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.4g}"
    return html.escape(str(x))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        ok = r.get("within_tolerance")
        cls = "" if ok is None else {"yes": "yes", "no": "no"}.get(ok, "na")
        cells = []
        for c in columns:
            v = r.get(c, "")
            if c == "deviation" and isinstance(v, float) and not math.isnan(v):
                cells.append(f"<td>{v:+.0%}</td>")
            else:
                cells.append(f"<td>{_num(v)}</td>")
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(out: Path, results: list[dict], tier: str, wall_s: float) -> Path:
    """out/index.html: a summary (quantities within tolerance, the misses with the fidelity row most
    likely responsible), then every figure beside its compare table."""
    env = environment()
    rows = [r for res in results for r in res["compare"]]
    n_ok = sum(r["within_tolerance"] == "yes" for r in rows)
    n_no = sum(r["within_tolerance"] == "no" for r in rows)
    n_na = len(rows) - n_ok - n_no
    per_fig = [
        {
            "figure": res["name"],
            "quantities": len(res["compare"]),
            "within": sum(r["within_tolerance"] == "yes" for r in res["compare"]),
            "outside": sum(r["within_tolerance"] == "no" for r in res["compare"]),
            "wall_s": round(res["wall_s"], 1),
            "status": "failed" if res["error"] else "ok",
        }
        for res in results
    ]
    misses = [r for r in rows if r["within_tolerance"] == "no"]
    by_row: dict[str, int] = {}
    for r in misses:
        by_row[r["fidelity_row"] or "(none named)"] = by_row.get(r["fidelity_row"] or "(none named)", 0) + 1
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pagelab: the paper's figures</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>pagelab: the paper's figures, regenerated</h1>",
        f"<p class='note'>Tier <b>{html.escape(tier)}</b>; wall time {wall_s:.0f} s; started "
        f"{html.escape(env['started'])}; commit {html.escape(env['git_commit'][:10] or 'unknown')}; "
        f"{html.escape(env['processor'] or env['machine'])}, {env['cpu_count']} CPUs. "
        "Simulated figures are pagelab's simulator of the paper's GPUs; microbenchmarks say what they "
        "measured. Paper values: T = the paper's text, A = read off its figure by eye, F = printed on "
        "its figure. Reproduce: <code>python -m paper_figs all"
        f"{' --quick' if tier == 'quick' else ''}</code>.</p>",
        "<h2>Summary</h2>",
        f"<p><b>{n_ok} of {len(rows)}</b> quantities within tolerance; {n_no} outside; {n_na} not "
        "measured or undefined.</p>",
        _table(per_fig, ["figure", "quantities", "within", "outside", "wall_s", "status"]),
    ]
    if misses:
        parts.append("<h3>Outside tolerance, by the docs/paper_fidelity.md row most likely responsible</h3>")
        parts.append(_table([{"fidelity row": k, "quantities": v} for k, v in by_row.items()],
                            ["fidelity row", "quantities"]))  # fmt: skip
        parts.append(
            _table(
                misses,
                [
                    "figure",
                    "quantity",
                    "paper_value",
                    "kind",
                    "pagelab_value",
                    "deviation",
                    "fidelity_row",
                    "note",
                ],
            )  # fmt: skip
        )
    for res in results:
        parts.append(f"<h2 id='{res['name']}'>{html.escape(res['title'])}</h2><div class='fig'>")
        for f in res["files"]:
            if f.endswith(".png"):
                pdf = f[:-4] + ".pdf"
                parts.append(f"<div><img src='{f}' alt='{f}'><br><a href='{pdf}'>{pdf}</a></div>")
        parts.append("<div>")
        if res["error"]:
            parts.append(f"<p class='err'>{html.escape(res['error'])}</p>")
        if res["compare"]:
            parts.append(
                _table(
                    res["compare"],
                    [
                        "quantity",
                        "paper_value",
                        "kind",
                        "op",
                        "pagelab_value",
                        "deviation",
                        "tolerance",
                        "within_tolerance",
                        "source",
                        "note",
                    ],
                )  # fmt: skip
            )
        else:
            parts.append("<p class='note'>The paper states no values for this figure.</p>")
        runs = "; ".join(
            f"{html.escape(r['path'])} (commit {html.escape(r['commit'][:10] or 'unknown')}"
            + (", not this report's" if r["commit"] and r["commit"] != env["git_commit"] else "")
            + ")"
            for r in res.get("runs", [])
        )
        parts.append(f"<p class='note'>{res['wall_s']:.0f} s. Runs: {runs or 'none'}</p></div></div>")
    parts.append("</body></html>\n")
    index = out / "index.html"
    atomic_write(index, "\n".join(parts))
    return index


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(index: Path, png: Path, width: int = 1300, height: int = 2400) -> Path:
    """Render the report with headless Chromium into png (Debian: apt-get install chromium)."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(
            "no Chromium found for the screenshot: install it (Debian: apt-get install chromium)"
        )
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={png.resolve()}",
        index.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot to {png}")
    return png
