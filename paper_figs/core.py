"""The one shared place of paper_figs: running experiments (Hydra's compose API, finished runs reused,
unfinished ones resumed), the two tiers, the comparison with the paper's reference values, and saving
figures. A figure module only names experiments, draws, and returns the quantities it measured.

Runs land in `<results>/paper_figs/runs/<tier>/<name>/<timestamp>/`, the harness's own run directories
(results/README.md), where <name> is the preset plus a digest of any overrides. A later
`python -m paper_figs` finds a finished run of the same resolved configuration and only reads it; an
unfinished one resumes where it stopped (the harness writes point by point).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REFERENCE_DIR = Path(__file__).parent / "reference"
COMPARE_COLUMNS = [
    "figure",
    "quantity",
    "paper_value",
    "kind",
    "op",
    "pagelab_value",
    "deviation",
    "within_tolerance",
    "tolerance",
    "fidelity_row",
    "source",
    "note",
]

# The paper's series order and look (Figure 12's legend: FT, Orca Max, Pow2, Oracle, vLLM).
SYSTEM_ORDER = ["fastertransformer", "orca_max", "orca_pow2", "orca_oracle", "vllm"]
LABELS = {
    "vllm": "vLLM",
    "orca_max": "Orca (Max)",
    "orca_pow2": "Orca (Pow2)",
    "orca_oracle": "Orca (Oracle)",
    "fastertransformer": "FasterTransformer",
}
COLORS = {
    "vllm": "#c44e52",
    "orca_oracle": "#4c72b0",
    "orca_pow2": "#55a868",
    "orca_max": "#8172b3",
    "fastertransformer": "#937860",
}
MARKERS = {"vllm": "o", "orca_max": "s", "orca_pow2": "^", "orca_oracle": "D", "fastertransformer": "x"}


@dataclass(frozen=True)
class Tier:
    """How much of the paper's setup a run keeps. full: the presets as they are (the paper's
    durations, the artifact's rate grids). quick: traces cut to `max_duration_s` (metric windows scaled
    with them) and at most `max_rates` rates per system, spread over its grid and keeping its highest
    (so each curve still crosses the threshold where the full grid does)."""

    name: str
    max_duration_s: float | None = None
    max_rates: int | None = None
    microbench_reps: int = 20


TIERS = {
    "full": Tier("full"),
    "quick": Tier("quick", max_duration_s=300.0, max_rates=5, microbench_reps=5),
}


def thin(rates: list[float], k: int | None) -> list[float]:
    """At most k of the sorted rates, evenly spread, the lowest and highest always kept."""
    rates = sorted(rates)
    if k is None or len(rates) <= k:
        return rates
    if k == 1:
        return rates[-1:]
    idx = sorted({round(i * (len(rates) - 1) / (k - 1)) for i in range(k)})
    return [rates[i] for i in idx]


class Measured(float):
    """A measured value with a note the compare table shows (a capacity that is only a bound)."""

    note: str = ""

    def __new__(cls, value: float, note: str = ""):
        obj = super().__new__(cls, value)
        obj.note = note
        return obj


@dataclass
class Run:
    """One finished harness run: its directory, points.csv and capacity.csv as data frames."""

    exp: str
    path: Path
    points: pd.DataFrame
    capacity: pd.DataFrame

    def cap(self, system: str, **params) -> float:
        """A system's capacity (req/s at the 0.5 s/token threshold) at the given swept values; NaN if
        the run has no such system."""
        c = _select(self.capacity, system, params)
        if len(c) > 1:
            raise ValueError(f"{self.path}/capacity.csv has {len(c)} rows for {system} {params}")
        if not len(c):
            return math.nan
        cap = float(c["capacity_rps"].iloc[0])
        pts = self.series(system, **params)
        if len(pts) and cap == float(pts["request_rate"].iloc[-1]):
            return Measured(cap, "a lower bound: below the threshold up to the grid's highest rate")
        if cap == 0:
            return Measured(cap, "above the threshold already at the grid's lowest rate")
        return cap

    def series(self, system: str, **params) -> pd.DataFrame:
        """A system's points at the given swept values, by request rate."""
        return _select(self.points, system, params).sort_values("request_rate")

    def value(self, system: str, column: str, **params) -> float:
        """One column of a system's only point (a single-rate run); NaN if the run has no such point."""
        p = self.series(system, **params)
        return float(p[column].iloc[0]) if len(p) else math.nan


def _select(df: pd.DataFrame, system: str, params: dict) -> pd.DataFrame:
    """Rows of `system` at the swept values `params`, compared as numbers where both are numeric
    (16 matches 16.0) and as text otherwise."""
    df = df[df["system"] == system]
    for k, v in params.items():
        col = pd.to_numeric(df[k], errors="coerce")
        if isinstance(v, int | float) and col.notna().all():
            df = df[col == v]
        else:
            df = df[df[k].astype(str) == str(v)]
    return df


@dataclass
class Session:
    """What a figure module works with: run experiments, find reference values, save figures."""

    tier: Tier
    runs_dir: Path  # <results>/paper_figs/runs/<tier>
    out_dir: Path  # this report's directory: figures and compare tables
    progress: bool = True
    figure: str = ""  # the figure being made (set by __main__)
    files: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)  # the run directories the figure read

    # ------------------------------------------------------------------ experiments
    def config(self, exp: str, overrides: tuple[str, ...] = ()):
        """The harness Config of preset `exp` with Hydra overrides, cut to this tier."""
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        import harness
        from harness.config import register

        register()
        conf_dir = str(Path(harness.__file__).parent / "conf")
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            dcfg = compose(config_name="config", overrides=[f"exp={exp}", *overrides])
        cfg = OmegaConf.to_object(dcfg)
        t = self.tier
        duration = cfg.duration_s if t.max_duration_s is None else min(cfg.duration_s, t.max_duration_s)
        window = cfg.metrics_window_s
        if window is not None and duration != cfg.duration_s:
            window = [w * duration / cfg.duration_s for w in window]
        name = exp
        if overrides:
            name += "-" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]
        return replace(
            cfg,
            name=name,
            duration_s=duration,
            metrics_window_s=window,
            request_rates=thin(list(cfg.request_rates), t.max_rates),
            rates_by_system={s: thin(list(r), t.max_rates) for s, r in cfg.rates_by_system.items()},
            # Points far past capacity stop early (harness/overload.py): capacity is unchanged (tested),
            # and such points plot above the paper's y-limit either way. Not where a metric averages
            # over a window of the trace (Figures 2, 13, 15): those runs go to the end.
            early_stop=window is None,
            results_dir=str(self.runs_dir),
            resume=True,
            workers=0,  # one process per core
            plots=False,
        )

    def run(self, exp: str, *overrides: str) -> Run:
        """Preset `exp` (with Hydra overrides such as "system.preemption_mode=swap") run at this tier,
        or read back when a finished run of the same configuration exists."""
        from omegaconf import OmegaConf

        from harness.experiment import run_experiment

        cfg = self.config(exp, tuple(overrides))
        config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        latest = self.runs_dir / cfg.name / "latest"
        done = latest / "DONE"
        if done.exists() and (latest / "config.yaml").read_text() == config_yaml:
            path = latest.resolve()
        else:
            path = run_experiment(cfg, config_yaml, progress=self.progress)
        self.runs.append(path)
        return Run(exp, path, pd.read_csv(path / "points.csv"), pd.read_csv(path / "capacity.csv"))

    def cached(self, name: str, measure):
        """A microbenchmark's result (JSON-able), measured once per tier and machine's results
        directory and read back after (delete <runs>/<name>.json to measure again)."""
        from harness.results import atomic_write

        path = self.runs_dir / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        data = measure()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, indent=1) + "\n")
        return data

    # ------------------------------------------------------------------ the paper's values
    def reference(self) -> list[dict]:
        """This figure's rows of paper_figs/reference/*.csv."""
        return [r for r in load_reference() if r["figure"] == self.figure]

    def ref(self, quantity: str) -> float:
        """The paper's value of one quantity of this figure (NaN if the reference has none)."""
        for r in self.reference():
            if r["quantity"] == quantity:
                return float(r["paper_value"])
        return math.nan

    # ------------------------------------------------------------------ output
    def save(self, fig, name: str) -> None:
        """PNG (for the report) and PDF (for a paper) of a figure."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "pdf"):
            path = self.out_dir / f"{name}.{ext}"
            fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
            self.files.append(path)
        plt.close(fig)


def ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 or NaN (a capacity below the lowest rate measured has no ratio)."""
    return a / b if b and not math.isnan(b) else math.nan


def span(xs) -> tuple[float, float]:
    """(min, max) of xs, both NaN if any is NaN or there are none (min() would skip a NaN or not,
    depending on where it stands)."""
    xs = list(xs)
    if not xs or any(math.isnan(x) for x in xs):
        return math.nan, math.nan
    return min(xs), max(xs)


def load_reference() -> list[dict]:
    """Every row of paper_figs/reference/*.csv. Columns: figure, quantity, paper_value, kind (T: the
    paper's text; A: read off a figure by eye; F: printed on a figure), op (= within tolerance, <= or
    >= a bound), rel_tol, abs_tol, fidelity_row (the docs/paper_fidelity.md row most likely to explain
    a miss), source. New rows need no code: a figure module computes many quantities, and a row picks
    one by name."""
    rows = []
    for path in sorted(REFERENCE_DIR.glob("*.csv")):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("figure") and not r["figure"].startswith("#"):
                    rows.append(r)
    return rows


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def compare(figure: str, values: dict[str, float]) -> list[dict]:
    """Each reference row of `figure` against the value the figure's module measured for it.

    Deviation is relative, pagelab / paper - 1. `=`: within when |pagelab - paper| <= rel_tol x
    |paper| + abs_tol; `<=` / `>=`: within when pagelab is at most / at least the paper's value by
    that margin. A quantity the module did not compute is reported ("not measured"), not dropped; one
    it computed as NaN is "undefined"."""
    out = []
    for r in load_reference():
        if r["figure"] != figure:
            continue
        paper = float(r["paper_value"])
        measured = r["quantity"] in values
        ours = values.get(r["quantity"])
        ours = math.nan if ours is None else float(ours)
        rel, ab = _float(r.get("rel_tol")), _float(r.get("abs_tol"))
        margin = rel * abs(paper) + ab
        op = r.get("op") or "="
        if not measured:
            ok = "not measured"  # no module computes it: a misspelt row (CI fails on it)
        elif math.isnan(ours):
            ok = "undefined"  # computed but undefined, e.g. a ratio to a capacity below the grid
        elif op == "<=":
            ok = "yes" if ours <= paper + margin else "no"
        elif op == ">=":
            ok = "yes" if ours >= paper - margin else "no"
        else:
            ok = "yes" if abs(ours - paper) <= margin else "no"
        tol = (
            " + ".join(x for x in (f"{rel * 100:g}%" if rel else "", f"{ab:g}" if ab else "") if x) or "exact"
        )
        out.append(
            {
                "figure": figure,
                "quantity": r["quantity"],
                "paper_value": paper,
                "kind": r["kind"],
                "op": op,
                "pagelab_value": ours,
                "deviation": (ours / paper - 1) if paper and not math.isnan(ours) else math.nan,
                "within_tolerance": ok,
                "tolerance": tol,
                "fidelity_row": r.get("fidelity_row", ""),
                "source": r.get("source", ""),
                "note": getattr(values.get(r["quantity"]), "note", ""),
            }
        )
    return out


# ---------------------------------------------------------------------- drawing helpers
def latency_panel(ax, run: Run, systems: list[str], title: str, ymax: float = 1.0, knees: dict | None = None,
                  xmax: float | None = None, **params) -> None:  # fmt: skip
    """Normalized latency against request rate, one line per system in the paper's order, clipped at
    the paper's y-limit (points above it are drawn at the limit, hollow); knees: the paper's eye-read
    knee of each system, drawn as a star on the x axis."""
    for s in [s for s in SYSTEM_ORDER if s in systems]:
        pts = run.series(s, **params)
        if pts.empty:
            continue
        x, y = pts["request_rate"].to_numpy(), pts["normalized_latency"].to_numpy()
        yc = [min(v, ymax) for v in y]
        ax.plot(x, yc, color=COLORS[s], marker=MARKERS[s], ms=4, lw=1.5, label=LABELS[s])
        over = [i for i, v in enumerate(y) if v > ymax]
        if over:
            ax.plot(x[over], [ymax] * len(over), ls="", marker=MARKERS[s], ms=7, mfc="none", color=COLORS[s])
        if knees and not math.isnan(knees.get(s, math.nan)):
            ax.plot(
                [knees[s]], [0.02 * ymax], ls="", marker="*", ms=11, color=COLORS[s], mec="black", mew=0.5
            )
    ax.set_ylim(0, ymax * 1.04)
    if xmax:
        ax.set_xlim(0, xmax)
    else:
        ax.set_xlim(left=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def figure_note(fig, text: str) -> None:
    """A line under the figure saying what it is (the tier, the machine for measurements)."""
    fig.text(0.01, -0.02, text, fontsize=7, color="#555555", ha="left", va="top")


def latency_grid(s: Session, panels: list[tuple], systems: list[str], name: str) -> dict[str, float]:
    """The paper's 2 x 3 grid of latency panels (Figures 12 and 14): panels are (letter, preset, title,
    the paper's x limit). Saves the figure as `name`; returns each panel's capacity per system
    ("a/capacity/vllm") and vLLM's over each other system ("a/ratio/vllm:orca_oracle")."""
    values = {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (panel, exp, title, xmax) in zip(axes.flat, panels):
        run = s.run(exp)
        knees = {sys: s.ref(f"{panel}/capacity/{sys}") for sys in systems}
        latency_panel(ax, run, systems, title, knees=knees, xmax=max(xmax, run.points.request_rate.max()))
        for sys in systems:
            values[f"{panel}/capacity/{sys}"] = run.cap(sys)
            if sys != "vllm":
                values[f"{panel}/ratio/vllm:{sys}"] = ratio(run.cap("vllm"), run.cap(sys))
    for ax in axes[:, 0]:
        ax.set_ylabel("Normalized latency (s/token)")
    for ax in axes[1]:
        ax.set_xlabel("Request rate (req/s)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", ncol=len(systems), frameon=False, bbox_to_anchor=(0.5, 1.03)
    )
    figure_note(
        fig,
        f"pagelab simulator, {s.tier.name} tier; stars: the paper's eye-read knees; "
        "hollow markers: points above the paper's 1.0 s/token limit",
    )
    fig.tight_layout()
    s.save(fig, name)
    return values
