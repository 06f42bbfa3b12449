"""A run's per-step time series, kept as steps/<point>.npz in its run directory, and every windowed
step metric recomputed from them without re-running:

    python -m harness.step_series results/sharegpt_opt13b/latest --window 300 900

prints, for every point, pagelab's own step metrics and the artifact-style variants (docs/metrics.md)
over the steps that start in [300, 900] s, and writes them to <run>/windowed_300-900.csv.

File format: numpy's savez_compressed (no pickles), one array per column of
`harness.metrics.step_series` in the narrow dtypes of `DTYPES` (counts in 16 or 32 bits; memory columns
float32, NaN on steps without a Figure 2 sample: token slots are integers below 2^24, exact in float32).
Step times are whole microseconds: `duration_us` (uint32), and the starts as `start_us0` (the first)
plus `gap_us` (int32: each start minus the previous step's end, zero but for idle clock jumps), which
compress to almost nothing. Then `paged` (bool), `point` (a JSON string: system, request_rate, the
sweep values) and `format_version`. Loaded back, every column is float64 / int64 / bool again, times
in seconds (rounded to the microsecond: metrics recomputed from a file match the run's own to about
1e-6 relative).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from harness.metrics import (
    ARTIFACT_COLUMNS,
    KV_CLASSES,
    MEMORY_COLUMNS,
    STEP_COUNTS,
    artifact_metrics,
    check_window,
    series_step_metrics,
)
from harness.results import atomic_open, write_csv

FORMAT_VERSION = 1
STEPS_DIR = "steps"
# Counts that fit 16 bits in any run the harness makes (max_num_seqs <= 65535); the others 32 bits.
# A value out of range is stored in 64 bits instead (`_narrow`), never wrapped.
_SMALL = ("num_groups", "num_running_groups", "num_seqs", "num_preempted", "num_finished")
DTYPES: dict[str, np.dtype] = {
    "executed": np.dtype(bool),
    "is_prefill": np.dtype(bool),
    **{c: np.dtype(np.uint16 if c in _SMALL else np.uint32) for c in STEP_COUNTS},
    **{c: np.dtype(np.float32) for c in MEMORY_COLUMNS},
}


def series_path(run_dir: str | Path, slug: str) -> Path:
    return Path(run_dir) / STEPS_DIR / f"{slug}.npz"


def _narrow(name: str, values: np.ndarray) -> np.ndarray:
    dtype = DTYPES[name]
    return _fit(values, dtype) if dtype.kind in "ui" else values.astype(dtype)


def _encode_times(start: np.ndarray, duration: np.ndarray) -> dict[str, np.ndarray]:
    """Step times in whole microseconds: each duration, and each start as the previous step's end plus
    a gap (zero but for idle jumps of the clock and rounding), so the starts cost almost nothing after
    compression (float64 starts would take half the file)."""
    start_us = np.rint(start * 1e6).astype(np.int64)
    duration_us = np.rint(duration * 1e6).astype(np.int64)
    gap_us = np.zeros(len(start), dtype=np.int64)
    gap_us[1:] = np.diff(start_us) - duration_us[:-1]
    return {
        "start_us0": np.array(start_us[0] if len(start) else 0),
        "duration_us": _fit(duration_us, np.uint32),
        "gap_us": _fit(gap_us, np.int32),
    }


def _decode_times(z) -> tuple[np.ndarray, np.ndarray]:
    duration_us = z["duration_us"].astype(np.int64)
    steps_us = np.zeros(len(duration_us), dtype=np.int64)
    steps_us[1:] = duration_us[:-1] + z["gap_us"][1:]
    start_us = int(z["start_us0"]) + np.cumsum(steps_us)
    return start_us / 1e6, duration_us / 1e6


def _fit(values: np.ndarray, dtype) -> np.ndarray:
    """`values` in `dtype` if they fit, else in 64 bits (never wrapped)."""
    info = np.iinfo(dtype)
    if len(values) and (values.min() < info.min or values.max() > info.max):
        return values.astype(np.int64)
    return values.astype(dtype)


def save_series(path: str | Path, series: dict[str, np.ndarray], point: dict) -> None:
    """Write one point's series, compressed, whole or not at all (atomic_open)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _encode_times(series["start_time"], series["duration_s"])
    arrays.update((name, _narrow(name, series[name])) for name in DTYPES)
    arrays["paged"] = np.array(bool(series["paged"]))
    arrays["point"] = np.array(json.dumps(point))
    arrays["format_version"] = np.array(FORMAT_VERSION)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_series(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(series in the in-memory dtypes of harness.metrics.step_series, the point it belongs to)."""
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: step series format {version}, this harness reads {FORMAT_VERSION}")
        start, duration = _decode_times(z)
        series: dict[str, np.ndarray] = {"start_time": start, "duration_s": duration}
        for name in DTYPES:
            a = z[name]
            series[name] = a.astype(
                bool if a.dtype == bool else np.float64 if a.dtype.kind == "f" else np.int64
            )
        series["paged"] = z["paged"].astype(bool)
        point = json.loads(str(z["point"]))
    return series, point


def windowed_metrics(series: dict[str, np.ndarray], window: list[float] | None = None) -> dict:
    """Every step metric over the steps starting in `window`: pagelab's own and the artifact's."""
    return {**series_step_metrics(series, window), **artifact_metrics(series, window)}


def recompute(run_dir: str | Path, window: list[float] | None = None) -> list[dict]:
    """One row per point of the run (every steps/*.npz): the point, then `windowed_metrics`."""
    files = sorted((Path(run_dir) / STEPS_DIR).glob("*.npz"))
    if not files:
        raise FileNotFoundError(
            f"no {STEPS_DIR}/*.npz in {run_dir}: was it run before step series were kept?"
        )
    rows = []
    for path in files:
        series, point = load_series(path)
        rows.append({**point, "num_records": len(series["start_time"]), **windowed_metrics(series, window)})
    return rows


METRIC_COLUMNS = [
    "num_records",
    "num_steps",
    "avg_batched_requests",
    "batched_requests_artifact",
    *KV_CLASSES,
    "sharing_saving_pct",
    *ARTIFACT_COLUMNS[1:],
    "num_preemptions",
    "num_swapped_blocks",
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Recompute every windowed step metric of a run from its steps/*.npz (no re-run)."
    )
    ap.add_argument("run_dir", type=Path, help="a run directory (results/<exp>/<timestamp> or .../latest)")
    ap.add_argument(
        "--window", type=float, nargs=2, metavar=("START", "END"), help="seconds of the run; default: all"
    )
    ap.add_argument("--out", type=Path, help="CSV to write; default <run_dir>/windowed_<start>-<end>.csv")
    args = ap.parse_args(argv)
    window = list(check_window(args.window)) if args.window else None
    try:
        rows = recompute(args.run_dir, window)
    except (FileNotFoundError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    point_keys = [k for k in rows[0] if k not in METRIC_COLUMNS]
    columns = point_keys + METRIC_COLUMNS
    tag = f"{window[0]:g}-{window[1]:g}" if window else "all"
    out = args.out or args.run_dir / f"windowed_{tag}.csv"
    write_csv(out, rows, columns)
    print(f"step metrics over {'[' + tag.replace('-', ', ') + '] s' if window else 'the whole run'}:")
    width = max(len(c) for c in columns)
    for row in rows:
        print("  " + " ".join(f"{k}={row[k]}" for k in point_keys))
        for c in METRIC_COLUMNS:
            v = row[c]
            print(f"    {c:<{width}} {v:.4g}" if isinstance(v, float) else f"    {c:<{width}} {v}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
