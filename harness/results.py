"""The results contract (results/README.md): a run directory, its files, atomic point-by-point writes.

    results/<exp>/<timestamp>/   config.yaml, env.json, workload.jsonl, points.csv, capacity.csv,
                                 requests/<point>.csv, steps/<point>.npz, *.png, DONE
    results/<exp>/latest -> <timestamp>

Every file is written to a temporary name and renamed into place, so an interrupted run never leaves a
half-written file; points.csv gains one row per finished point (after its requests/ and steps/ files),
and a re-run of the same configuration continues the latest unfinished run, skipping its finished
points. steps/<point>.npz is the point's per-step series (harness/step_series.py: its format, and the
command that recomputes every windowed step metric from it).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

POINT_COLUMNS = [
    "system",
    "request_rate",
    "actual_request_rate",
    "num_requests",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "normalized_latency",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_e2el_ms",
    "p99_e2el_ms",
    "avg_batched_requests",
    "kv_token_states_pct",
    "kv_reservation_pct",
    "kv_internal_frag_pct",
    "kv_external_frag_pct",
    "num_preemptions",
    "num_swapped_blocks",
]


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open() for writing, into a temporary file beside `path` that replaces it when the block ends
    without an error (os.replace: a reader sees the old file or the new one, never half of one); on an
    error the temporary file is removed and `path` is untouched. The harness's and the benchmarks' one
    write-then-rename (atomic_write for a whole text or bytes, this for a caller that streams); only
    pagelab_kernels/cpu_native.py keeps its own, as the core may not import the harness."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: parallel writers of one file
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a text or bytes file whole or not at all (atomic_open)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def environment() -> dict:
    """Versions, machine and git commit, for env.json."""
    import numpy
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {"python": sys.version.split()[0], "numpy": numpy.__version__, "torch": torch.__version__}
    for name in ("hydra", "omegaconf", "pandas", "matplotlib"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None  # not installed
    return {
        "versions": versions,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }


def open_run_dir(results_dir: str, name: str, config_yaml: str, resume: bool) -> tuple[Path, bool]:
    """The run directory: the latest one when it holds this very configuration and is unfinished
    (resume), else a new timestamped one. Returns (path, resumed)."""
    base = Path(results_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    latest = base / "latest"
    if resume and latest.is_dir():
        previous = latest.resolve()
        config = previous / "config.yaml"
        if config.is_file() and not (previous / "DONE").exists():
            old = config.read_text()
            if old == config_yaml:
                return previous, True
            # Said, not silent: an unfinished run of another configuration (or of an older pagelab,
            # whose config.yaml lacks a setting added since) is left as it is.
            diff = difflib.unified_diff(old.splitlines(), config_yaml.splitlines(), lineterm="", n=0)
            first = next((d for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---")), "")
            print(
                f"not resuming {previous}: it is unfinished, but its config.yaml differs from this run's "
                f"(first difference: {first!r}); starting a new run"
            )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run, suffix = base / stamp, 1
    while True:  # parallel jobs (Hydra multirun) may start in the same second
        try:
            run.mkdir()
            break
        except FileExistsError:
            run, suffix = base / f"{stamp}-{suffix}", suffix + 1
    (run / "requests").mkdir()
    (run / "steps").mkdir()
    atomic_write(run / "config.yaml", config_yaml)
    atomic_write(run / "env.json", json.dumps(environment(), indent=2) + "\n")
    tmp_link = base / f".latest.{os.getpid()}.{run.name}.tmp"  # unique: parallel jobs share the folder
    tmp_link.symlink_to(run.name)
    os.replace(tmp_link, latest)
    return run, False


def request_rows(groups) -> list[dict]:
    """Per-request records with every timestamp (seconds on the engine clock)."""
    rows = []
    for g in groups:
        m = g.metrics
        rows.append(
            {
                "request_id": g.request_id,
                "arrival_time": m.arrival_time,
                "first_scheduled_time": m.first_scheduled_time,
                "first_token_time": m.first_token_time,
                "finished_time": m.finished_time,
                "prompt_len": g.num_prompt_tokens,
                "output_len": max(s.num_output_tokens for s in g.seqs),
                "num_seqs": len(g.seqs),
                "num_preemptions": len(m.preemption_times),
                "num_swaps": m.num_swaps,
                "priority": g.priority,
                "rejected": g.reject_reason or "",
            }
        )
    return rows


REQUEST_COLUMNS = [
    "request_id",
    "arrival_time",
    "first_scheduled_time",
    "first_token_time",
    "finished_time",
    "prompt_len",
    "output_len",
    "num_seqs",
    "priority",
    "num_preemptions",
    "num_swaps",
    "rejected",
]
