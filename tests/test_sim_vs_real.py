"""A measured hardware preset plugs into the cost model, and the sim-vs-real comparison prices every
real step with the cost model (harness/profile_cpu.py, harness/sim_vs_real.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import yaml

from harness.cost_model import CALIBRATION_FILE, CostModel
from harness.presets import load_hardware, load_model
from harness.sim_vs_real import ShadowExecutor, compare, step_gaps
from harness.simulate import SimConfig, build
from harness.workload import synthetic


def test_a_preset_with_its_own_calibration_file(tmp_path):
    cal = json.loads(CALIBRATION_FILE.read_text())
    cal["overheads"]["by_tp"]["1"]["step_ms"] += 100.0  # a machine with a slow engine loop
    (tmp_path / "mine.calibration.json").write_text(json.dumps(cal))
    hw = yaml.safe_load(open("conf/hardware/a100_40gb.yaml"))
    hw["calibration_file"] = "mine.calibration.json"  # relative to the YAML
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(hw))
    model = load_model("opt-13b")
    base = CostModel(model, load_hardware("a100-40gb")).decode_ms(8, 4000)
    mine = CostModel(model, load_hardware(str(tmp_path / "mine.yaml"))).decode_ms(8, 4000)
    assert abs(mine - base - 100.0) < 1e-9


def test_sim_vs_real_prices_every_real_step():
    cfg = SimConfig(
        model="opt-125m", hardware="a100-40gb", kv_cache_gib=0.05, real_dtype="bfloat16", max_model_len=512,
        track_memory=False,
    )  # fmt: skip
    row = compare(cfg, "alpaca", rate=2.0, duration=3.0, seed=0)
    assert row["num_requests"] > 0
    assert row["normalized_latency_real"] > 0 and row["normalized_latency_sim"] > 0
    # Every real step that ran a batch was priced: the step counts add up to the real run's.
    workload = synthetic("alpaca", 2.0, 3.0, 0)
    engine, _, cost = build(replace(cfg, backend="real"))
    shadow = ShadowExecutor(engine.executor, cost)
    engine.executor = shadow
    engine.run(workload.to_sequence_groups(seed=0))
    assert len(shadow.records) == len(engine.steps)
    assert all(measured > 0 and predicted > 0 for _, _, measured, predicted in shadow.records)
    gaps = step_gaps(shadow.records)
    assert gaps["decode"]["steps"] + gaps["prefill"]["steps"] == len(engine.steps)
