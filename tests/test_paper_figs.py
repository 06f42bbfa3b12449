"""paper_figs: the tier's rate thinning, the comparison with the paper, the reuse of finished runs, the
figure registry, and the report rendering in headless Chromium. (.ci/run runs every figure at the quick
tier and checks its outputs: scripts/check_paper_figs.py.)"""

import csv
import importlib
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paper_figs import core
from paper_figs.__main__ import FIGURES, _name
from paper_figs.core import TIERS, Session, compare, load_reference, thin
from paper_figs.report import find_chromium, screenshot, write_report


@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=20, unique=True), st.integers(1, 8))
def test_thin_keeps_the_ends_and_at_most_k(rates, k):
    out = thin(rates, k)
    assert out == sorted(out) and set(out) <= set(rates)
    assert len(out) == min(k, len(rates))
    assert out[-1] == max(rates)
    if k > 1:
        assert out[0] == min(rates)


def test_thin_without_limit_keeps_all():
    assert thin([3, 1, 2], None) == [1, 2, 3]


def _write_reference(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "figure",
                "quantity",
                "paper_value",
                "kind",
                "op",
                "rel_tol",
                "abs_tol",
                "fidelity_row",
                "source",
            ]
        )
        w.writerows(rows)


def test_compare_ops_tolerances_and_unmeasured(tmp_path, monkeypatch):
    _write_reference(
        tmp_path / "x.csv",
        [
            ("figX", "cap", 2.0, "A", "=", 0.25, "", "9 KV sizing", "eye"),
            ("figX", "cap_far", 2.0, "A", "=", 0.25, "", "9 KV sizing", "eye"),
            ("figX", "ratio", 1.2, "T", "<=", "", "", "23", "text"),
            ("figX", "best", 16, "A", ">=", "", "", "22", "text"),
            ("figX", "absent", 5, "T", "=", "", 1, "", "text"),
            ("figX", "nan", 5, "T", "=", "", 1, "", "text"),
            ("figY", "cap", 1.0, "A", "=", 0.1, "", "", "other figure"),
        ],
    )
    monkeypatch.setattr(core, "REFERENCE_DIR", tmp_path)
    rows = {
        r["quantity"]: r
        for r in compare("figX", {"cap": 2.4, "cap_far": 2.6, "ratio": 1.3, "best": 16, "nan": math.nan})
    }
    assert set(rows) == {"cap", "cap_far", "ratio", "best", "absent", "nan"}  # figY's row is not figX's
    assert rows["cap"]["within_tolerance"] == "yes" and rows["cap"]["deviation"] == pytest.approx(0.2)
    assert rows["cap_far"]["within_tolerance"] == "no"
    assert rows["ratio"]["within_tolerance"] == "no"
    assert rows["best"]["within_tolerance"] == "yes"
    assert rows["nan"]["within_tolerance"] == "undefined"
    assert rows["absent"]["within_tolerance"] == "not measured" and math.isnan(
        rows["absent"]["pagelab_value"]
    )


def test_a_new_reference_file_needs_no_code(tmp_path, monkeypatch):
    """Rows added later (say, figure-printed values, kind F) are read and compared as they are."""
    for src in core.REFERENCE_DIR.glob("*.csv"):
        (tmp_path / src.name).write_text(src.read_text())
    _write_reference(
        tmp_path / "printed.csv", [("fig2", "token_states/vllm", 96.3, "F", "=", "", 1, "13", "bar")]
    )
    monkeypatch.setattr(core, "REFERENCE_DIR", tmp_path)
    rows = [r for r in compare("fig2", {"token_states/vllm": 96.0}) if r["kind"] == "F"]
    assert len(rows) == 1 and rows[0]["within_tolerance"] == "yes"


def test_reference_rows_are_well_formed():
    rows = load_reference()
    assert len(rows) > 50
    for r in rows:
        assert r["figure"] in FIGURES, r
        assert r["kind"] in {"T", "A", "F"}, r
        assert r["op"] in {"=", "<=", ">="}, r
        float(r["paper_value"])
        assert r["source"], r


def test_every_figure_module_names_a_title_and_make():
    for name in FIGURES:
        m = importlib.import_module(f"paper_figs.{name}")
        assert m.TITLE and callable(m.make), name
    # The list: Figures 2, 11-19 and Table 1.
    assert set(FIGURES) == {"table1", *(f"fig{n}" for n in (2, 11, 12, 13, 14, 15, 16, 17, 18, 19))}


def test_figure_names_on_the_command_line():
    assert _name("12") == "fig12" and _name("fig12a") == "fig12" and _name("Table1") == "table1"
    with pytest.raises(SystemExit, match="unknown figure"):
        _name("fig99")


def test_quick_tier_cuts_the_trace_scales_the_window_and_thins_rates(tmp_path):
    s = Session(TIERS["quick"], tmp_path / "runs", tmp_path / "out")
    full = Session(TIERS["full"], tmp_path / "runs", tmp_path / "out").config("memory_waste")
    q = s.config("memory_waste")
    assert full.duration_s == 900 and q.duration_s == TIERS["quick"].max_duration_s
    assert q.metrics_window_s == pytest.approx([w * q.duration_s / 900 for w in full.metrics_window_s])
    q12 = s.config("sharegpt_opt13b")
    assert all(len(r) <= TIERS["quick"].max_rates for r in q12.rates_by_system.values())
    assert q12.early_stop and not q12.plots


def test_a_finished_run_is_reused_and_overrides_get_their_own(tmp_path):
    s = Session(TIERS["quick"], tmp_path / "runs", tmp_path / "out", progress=False)
    first = s.run("smoke")
    again = s.run("smoke")
    assert again.path == first.path and (first.path / "DONE").exists()
    assert len(list((tmp_path / "runs" / "smoke").glob("2*"))) == 1
    other = s.run("smoke", "systems=[vllm]")
    assert other.path != first.path and set(other.points["system"]) == {"vllm"}
    assert other.cap("vllm") == pytest.approx(first.cap("vllm"))


def _fake_results(out: Path) -> list[dict]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [0.1, 0.2, 0.9], marker="o", color="#c44e52")
    fig.savefig(out / "figX.png")
    plt.close(fig)
    cmp = [
        {"figure": "figX", "quantity": "a/capacity/vllm", "paper_value": 1.9, "kind": "A", "op": "=",
         "pagelab_value": 2.0, "deviation": 0.05, "within_tolerance": "yes", "tolerance": "25%",
         "fidelity_row": "9 KV sizing", "source": "eye"},
        {"figure": "figX", "quantity": "ratio", "paper_value": 2.0, "kind": "T", "op": "=",
         "pagelab_value": 3.0, "deviation": 0.5, "within_tolerance": "no", "tolerance": "15%",
         "fidelity_row": "4 Orca admission", "source": "text"},
    ]  # fmt: skip
    return [{"name": "figX", "title": "Figure X <test>", "files": ["figX.png"], "compare": cmp, "wall_s": 1.0,
             "error": None}]  # fmt: skip


def test_report_lists_every_figure_and_the_misses(tmp_path):
    index = write_report(tmp_path, _fake_results(tmp_path), "quick", 12.0)
    html = index.read_text()
    assert "<img src='figX.png'" in html and "Figure X &lt;test&gt;" in html
    assert "1 of 2</b> quantities within tolerance" in html
    assert "4 Orca admission" in html  # the miss names its fidelity row
    assert "http" not in html  # readable offline: no remote asset


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    index = write_report(tmp_path, _fake_results(tmp_path), "quick", 12.0)
    png = screenshot(index, tmp_path / "index.png", width=900, height=1200)
    img = Image.open(png).convert("RGB")
    assert img.size == (900, 1200)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors and len(colors) > 50  # text, tables and the plot, not a blank page
    # The plot's red line and the miss's pink row are on the page.
    rgb = {c for _, c in colors}
    assert any(abs(r - 0xC4) < 12 and abs(g - 0x4E) < 12 and abs(b - 0x52) < 12 for r, g, b in rgb)
    assert (0xFD, 0xE8, 0xE8) in rgb


def test_run_selects_swept_values_as_numbers_or_text():
    import pandas as pd

    from paper_figs.core import Run

    points = pd.DataFrame(
        {"system": ["vllm"] * 3, "request_rate": [2.0, 1.0, 1.0], "block_size": [16, 16, 32],
         "preemption_mode": ["swap", "swap", "recompute"], "normalized_latency": [0.3, 0.1, 0.2]}
    )  # fmt: skip
    capacity = pd.DataFrame({"system": ["vllm", "vllm"], "block_size": [16, 32], "capacity_rps": [2.5, 1.5]})
    run = Run("x", Path("."), points, capacity)
    assert run.cap("vllm", block_size=16.0) == 2.5 and run.cap("vllm", block_size="32") == 1.5
    assert math.isnan(run.cap("orca_max")) and math.isnan(run.value("orca_max", "normalized_latency"))
    assert list(run.series("vllm", block_size=16)["request_rate"]) == [1.0, 2.0]
    assert run.value("vllm", "normalized_latency", preemption_mode="recompute") == 0.2
    assert getattr(run.cap("vllm", block_size=16), "note", "") == ""
    bound = Run("x", Path("."), points, capacity.assign(capacity_rps=[2.0, 0.0]))
    assert "lower bound" in bound.cap("vllm", block_size=16).note  # never crossed within the grid
    assert "lowest rate" in bound.cap("vllm", block_size=32).note
    rows = compare("fig12", {"a/capacity/vllm": bound.cap("vllm", block_size=16)})
    assert any("lower bound" in r["note"] for r in rows)
    dup = Run("x", Path("."), points, pd.concat([capacity, capacity]))
    with pytest.raises(ValueError, match="rows for vllm"):
        dup.cap("vllm", block_size=16)
