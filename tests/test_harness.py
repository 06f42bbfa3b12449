"""The Hydra front door: presets, the results contract, resuming, and errors."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.capacity import capacity
from harness.config import CONF_DIR, Config, register
from harness.experiment import ExperimentError, points, run_experiment, sweep_grid, validate
from harness.results import POINT_COLUMNS

CONF = str(CONF_DIR)
REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in Path(CONF, "exp").glob("*.yaml"))
register()


def load(*overrides: str) -> tuple[Config, str]:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True)


def test_the_paper_presets_exist():
    expected = {
        "sharegpt_opt13b",
        "sharegpt_opt66b",
        "sharegpt_opt175b",
        "alpaca_opt13b",
        "alpaca_opt66b",
        "alpaca_opt175b",
        "parallel_sampling",
        "beam_search",
        "shared_prefix",
        "chatbot",
        "block_size_sweep",
        "swap_vs_recompute",
        "smoke",
        "memory_waste",
        "batched_requests",
        "batched_requests_alpaca",
        "sharing_parallel",
        "sharing_beam",
        "block_size_alpaca",
        *(f"parallel_n{n}" for n in (2, 4, 6)),
        *(f"beam_n{n}" for n in (2, 4, 6)),
    }
    assert expected <= set(EXPERIMENTS)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_preset_composes_and_is_possible(exp):
    cfg, _ = load(f"exp={exp}")
    assert cfg.name == exp
    validate(cfg)
    per_grid = sum(len(cfg.rates_by_system.get(s) or cfg.request_rates) for s in cfg.systems)
    assert len(points(cfg)) == per_grid * len(sweep_grid(cfg))
    assert len(sweep_grid(cfg)) == math.prod(len(v) for v in cfg.sweep.values()) or cfg.sweep_exclude
    from harness.datasets import WorkloadError
    from harness.experiment import _probe

    try:
        _probe(cfg, points(cfg)[0])  # the model fits the hardware, the workload builds
    except WorkloadError as e:
        if "not found" not in str(e):
            raise
        pytest.skip(f"the preset reads real data that this machine lacks: {e}")


def test_default_is_sharegpt_opt13b_in_the_simulator():
    cfg, _ = load()
    assert cfg.name == "sharegpt_opt13b" and cfg.backend.name == "sim" and cfg.model.name == "opt-13b"
    assert cfg.systems == ["vllm", "orca_max", "orca_pow2", "orca_oracle", "fastertransformer"]


def test_smoke_writes_the_results_contract(tmp_path):
    cfg, text = load("exp=smoke", f"results_dir={tmp_path}", "workers=1")
    run = run_experiment(cfg, text, progress=False)
    assert run.parent == tmp_path / "smoke" and (run.parent / "latest").resolve() == run
    assert (run / "config.yaml").read_text() == text  # the exact configuration, for resume
    for name in (
        "config.yaml",
        "env.json",
        "workload.jsonl",
        "points.csv",
        "capacity.csv",
        "DONE",
        "run.log",
        "normalized_latency.png",
        "batched_requests.png",
        "memory_waste.png",
    ):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert len(rows) == 4 and set(POINT_COLUMNS) <= set(rows[0])
    for r in rows:
        assert float(r["normalized_latency"]) > 0 and int(r["num_requests"]) > 0
    caps = list(csv.DictReader(open(run / "capacity.csv")))
    assert {c["system"] for c in caps} == {"vllm", "orca_oracle"}
    assert float(next(c for c in caps if c["system"] == "vllm")["ratio_to_vllm"]) == 1.0
    assert len(list((run / "requests").glob("*.csv"))) == 4


def test_an_interrupted_run_resumes_and_skips_finished_points(tmp_path, monkeypatch):
    import harness.experiment as experiment

    cfg, text = load("exp=smoke", f"results_dir={tmp_path}", "workers=1", "plots=false")
    calls = []
    real = experiment.run_point

    def crash_after_two(c, point):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(point)
        return real(c, point)

    monkeypatch.setattr(experiment, "run_point", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    run = (tmp_path / "smoke" / "latest").resolve()
    assert len(list(csv.DictReader(open(run / "points.csv")))) == 2 and not (run / "DONE").exists()
    calls.clear()
    monkeypatch.setattr(experiment, "run_point", lambda c, p: (calls.append(p), real(c, p))[1])
    again = run_experiment(cfg, text, progress=False)
    assert again == run and len(calls) == 2  # only the two missing points ran
    assert len(list(csv.DictReader(open(run / "points.csv")))) == 4 and (run / "DONE").exists()
    third = run_experiment(cfg, text, progress=False)
    assert third != run  # a finished run is not reopened


def test_a_resumed_sweep_keeps_one_capacity_row_per_swept_value(tmp_path, monkeypatch):
    """Rows read back from points.csv hold swept values as text; new rows must group with them."""
    import harness.experiment as experiment

    cfg, text = load(
        "exp=smoke", f"results_dir={tmp_path}", "workers=1", "plots=false", "systems=[vllm]",
        "request_rates=[1.0,4.0]", "duration_s=30", "+sweep={block_size:[16,32]}",
    )  # fmt: skip
    real, calls = experiment.run_point, []

    def crash_after_one(c, point):
        if calls:
            raise KeyboardInterrupt
        calls.append(point)
        return real(c, point)

    monkeypatch.setattr(experiment, "run_point", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    monkeypatch.setattr(experiment, "run_point", real)
    run = run_experiment(cfg, text, progress=False)
    caps = list(csv.DictReader(open(run / "capacity.csv")))
    assert sorted(c["block_size"] for c in caps) == ["16", "32"], caps


def test_a_multi_worker_run_resumes_and_runs_only_the_missing_points(tmp_path, monkeypatch):
    """workers=2: points run in worker processes and are written by the parent as they finish; an
    interruption keeps the finished rows, and the re-run computes only the points not in points.csv."""
    import harness.experiment as experiment
    from harness.results import read_csv

    cfg, text = load("exp=smoke", f"results_dir={tmp_path}", "workers=2", "plots=false")
    real_write = experiment.write_csv
    written: list[str] = []  # requests/<slug>.csv of every point the parent finished
    interrupt = [True]

    def write_csv(path, rows, columns):
        if interrupt[0] and path.name == "points.csv" and len(rows) == 3:
            raise KeyboardInterrupt  # interrupted while recording the third finished point
        if path.parent.name == "requests":
            written.append(path.stem)
        real_write(path, rows, columns)

    monkeypatch.setattr(experiment, "write_csv", write_csv)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    run = (tmp_path / "smoke" / "latest").resolve()
    done = {(r["system"], r["request_rate"]) for r in read_csv(run / "points.csv")}
    assert len(done) == 2 and not (run / "DONE").exists()
    missing = {p.slug for p in points(cfg) if p.key not in done}
    written.clear()
    interrupt[0] = False
    again = run_experiment(cfg, text, progress=False)
    assert again == run and sorted(written) == sorted(missing) and len(missing) == 2
    rows = read_csv(run / "points.csv")
    assert len(rows) == 4 and {(r["system"], r["request_rate"]) for r in rows} >= done
    assert (run / "DONE").exists()


def test_capacity_interpolates_the_crossing():
    assert capacity([1, 2, 3], [0.1, 0.3, 0.9], 0.5) == pytest.approx(2 + (0.5 - 0.3) / (0.9 - 0.3))
    assert capacity([1, 2], [0.1, 0.2], 0.5) == 2  # never crosses: the highest rate measured
    assert capacity([1, 2], [0.6, 0.9], 0.5) == 0.0


def test_impossible_settings_name_the_fix():
    cfg, _ = load("exp=smoke", "systems=[vllm,orca_turbo]")
    with pytest.raises(ExperimentError, match="choose from"):
        validate(cfg)
    with pytest.raises(ValueError, match="positive number of tokens"):  # ServerConfig checks itself
        load("exp=smoke", "system.block_size=0")
    cfg, _ = load("exp=block_size_sweep", "sweep.block_size=[16,0]")
    with pytest.raises(ExperimentError, match="positive number of tokens"):
        validate(cfg)
    cfg, _ = load("exp=block_size_sweep", "sweep.block_size=[16,24]", "systems=[vllm,orca_max]")
    with pytest.raises(ExperimentError, match="power of two"):
        validate(cfg)
    cfg, _ = load("exp=smoke", "request_rates=[0.5,-1]")
    with pytest.raises(ExperimentError, match="positive req/s"):
        validate(cfg)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_errors_are_one_clear_line(tmp_path):
    cwd = tmp_path / "elsewhere"  # not the repository: the presets ship inside the package
    cwd.mkdir()
    unknown = run_cli("exp=smoke", "no_such_key=1", cwd=cwd)
    assert unknown.returncode != 0 and "no_such_key" in unknown.stderr
    bad_value = run_cli("exp=smoke", "model=opt_14b", cwd=cwd)
    assert bad_value.returncode != 0 and "opt_14b" in bad_value.stderr
    too_big = run_cli("exp=smoke", "model=opt_66b", f"results_dir={tmp_path}", cwd=cwd)
    assert too_big.returncode == 2 and "error:" in too_big.stderr and "tensor parallelism" in too_big.stderr
    assert "Traceback" not in too_big.stderr
    out_of_range = run_cli("exp=smoke", "system.watermark=2", cwd=cwd)
    assert out_of_range.returncode == 2 and "watermark" in out_of_range.stderr
    assert list(cwd.iterdir()) == []  # no Hydra log or output folder where the command ran


def test_multirun_in_parallel_with_joblib(tmp_path):
    r = run_cli(
        "-m",
        "exp=smoke",
        "request_rates=[1],[2]",
        "workers=1",
        "plots=false",
        f"results_dir={tmp_path}",
        "hydra/launcher=joblib",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    runs = [p for p in (tmp_path / "smoke").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 2 and all((p / "DONE").exists() for p in runs)
    # Hydra writes no log file (harness/conf/config.yaml); each run writes its own run.log
    assert sorted(p.relative_to(tmp_path).parent for p in tmp_path.rglob("*.log")) == sorted(
        r.relative_to(tmp_path) for r in runs
    )


def test_sweeps_write_the_figure_14_and_15_plots(tmp_path):
    cfg, text = load(
        "exp=parallel_sampling",
        "systems=[vllm,orca_oracle]",
        "request_rates=[2]",
        "duration_s=20",
        "sweep.n=[2,4]",
        f"results_dir={tmp_path}",
        "workers=1",
    )
    run = run_experiment(cfg, text, progress=False)
    assert (run / "capacity_vs_n.png").is_file() and (run / "sharing_saving_vs_n.png").is_file()
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert {r["n"] for r in rows} == {"2", "4"}
    assert all(float(r["sharing_saving_pct"]) > 0 for r in rows if r["system"] == "vllm")


def test_smoke_real_runs_the_real_engine_and_systems_agree_token_for_token(tmp_path):
    cfg, text = load("exp=smoke_real", f"results_dir={tmp_path}", "duration_s=2", "plots=false")
    run = run_experiment(cfg, text, progress=False)
    rows = list(csv.DictReader(open(run / "points.csv")))
    assert {r["system"] for r in rows} == {"vllm", "orca_oracle"}
    assert all(int(r["num_completed"]) == int(r["num_requests"]) > 0 for r in rows)
    assert len({r["output_digest"] for r in rows}) == 1  # greedy: identical tokens under both policies


def test_chunked_prefill_sweeps_leave_out_excluded_combinations_and_resume(tmp_path, monkeypatch):
    """enable_chunked_prefill (a bool) and max_num_batched_tokens are sweepable; sweep_exclude drops the
    combination the scheduler rejects (whole prompts in a 512-token step); bool values survive the trip
    through points.csv, so an interrupted capacity search resumes with exactly the points an
    uninterrupted one runs."""
    import harness.experiment as experiment

    args = ["exp=chunked_prefill_long", "duration_s=120", "capacity_search.rel_tol=0.3", "workers=1"]
    args.append("plots=false")

    def run_points(run):
        rows = list(csv.DictReader(open(run / "points.csv")))
        keys = ("enable_chunked_prefill", "max_num_batched_tokens", "request_rate")
        return sorted(tuple(r[k] for k in keys) for r in rows), rows

    cfg, text = load(*args, f"results_dir={tmp_path / 'a'}")
    assert sweep_grid(cfg) == [(False, 2560), (True, 2560), (True, 512)]
    expected, rows = run_points(run_experiment(cfg, text, progress=False))
    assert {e[:2] for e in expected} == {("False", "2560"), ("True", "2560"), ("True", "512")}
    blocks = {r["max_num_batched_tokens"]: int(r["num_gpu_blocks"]) for r in rows}
    assert blocks["512"] > blocks["2560"]  # vLLM's profiling: a smaller step leaves more KV

    cfg, text = load(*args, f"results_dir={tmp_path / 'b'}")
    real, calls = experiment.run_point, []

    def crash_after_four(c, point):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(point)
        return real(c, point)

    monkeypatch.setattr(experiment, "run_point", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, text, progress=False)
    calls.clear()
    monkeypatch.setattr(experiment, "run_point", lambda c, p: (calls.append(p), real(c, p))[1])
    got, _ = run_points(run_experiment(cfg, text, progress=False))
    assert got == expected and len(calls) == len(expected) - 4

    # Without the exclusion the scheduler's own check fails before anything runs, naming the fix.
    cfg, _ = load(*args, "sweep_exclude=[]")
    with pytest.raises(ExperimentError, match="enable chunked prefill"):
        validate(cfg)
    cfg, _ = load(*args, "sweep_exclude=[{max_num_batched_tokens:1024}]")
    with pytest.raises(ExperimentError, match="not in sweep.max_num_batched_tokens"):
        validate(cfg)
    cfg, _ = load(*args, "sweep.enable_chunked_prefill=[0,1]")
    with pytest.raises(ExperimentError, match="true or false"):
        validate(cfg)


def test_every_sweepable_key_reaches_the_config_it_names():
    """Each key of SWEEPABLE, given a value unlike the default, lands at its dotted path in the
    point's config (a key with no line in _apply would sweep nothing while points.csv lists it); a
    true/false key refuses other values."""
    from harness.config import SWEEPABLE
    from harness.experiment import ExperimentError, _apply, validate

    cfg, _ = load("exp=smoke", "system.enable_prefix_caching=true")  # a host tier needs the cache
    values = {
        "block_size": 32,
        "preemption_mode": "swap",
        "n": 3,
        "beam_width": 3,
        "prefix_len": 64,
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 1024,
        "scheduling_policy": "priority",
        "prefix_eviction": "radix",
        "host_cache_gib": 2.0,
        "page_map_overlap": False,
        "host_offload_overlap": True,
    }
    assert set(values) == set(SWEEPABLE)
    for key, path in SWEEPABLE.items():
        section, field_name = path.split(".")
        before = getattr(getattr(cfg, section), field_name)
        after = getattr(getattr(_apply(cfg, [(key, values[key])]), section), field_name)
        assert after == values[key] != before, key
    with pytest.raises(ExperimentError, match="sweep.page_map_overlap lists true or false"):
        validate(load("exp=smoke", "+sweep.page_map_overlap=[1,0]")[0])
