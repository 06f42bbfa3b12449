"""A measured hardware preset plugs into the cost model, and the sim-vs-real comparison prices every
real step with the cost model (harness/calib/profile.py, harness/calib/sim_vs_real.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

from harness.calib.sim_vs_real import ShadowExecutor, compare, step_gaps, write_report
from harness.calib.timing import timed_forward
from harness.sim.cost_model import CALIBRATION_FILE, CostModel
from harness.sim.executor import SimulatedExecutor
from harness.sim.hardware import HARDWARE_DIR, load_hardware
from harness.simulate import ServerConfig, SimConfig, build
from harness.workload import synthetic
from paged.model_runner import ModelRunner, StepInputs
from paged.presets import load_model


def test_a_preset_with_its_own_calibration_file(tmp_path):
    cal = json.loads(CALIBRATION_FILE.read_text())
    cal["overheads"]["by_tp"]["1"]["step_ms"] += 100.0  # a machine with a slow engine loop
    (tmp_path / "mine.calibration.json").write_text(json.dumps(cal))
    hw = yaml.safe_load((HARDWARE_DIR / "a100_40gb.yaml").read_text())
    hw["calibration_file"] = "mine.calibration.json"  # relative to the YAML
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(hw))
    model = load_model("opt-13b")
    base = CostModel(model, load_hardware("a100-40gb")).decode_ms(8, 4000)
    mine = CostModel(model, load_hardware(str(tmp_path / "mine.yaml"))).decode_ms(8, 4000)
    assert abs(mine - base - 100.0) < 1e-9


def test_sim_vs_real_prices_every_real_step(tmp_path):
    cfg = SimConfig(
        model="opt-125m", hardware="a100-40gb", server=ServerConfig(kv_cache_gib=0.05, max_model_len=512),
        real_dtype="bfloat16", track_memory=False,
    )  # fmt: skip
    row = compare(cfg, "alpaca", rate=2.0, duration=3.0, seed=0, real_runs=2, components=True)
    assert row["num_requests"] > 0
    assert len(row["normalized_latency_real_runs"]) == 2 and row["real_run_spread"] >= 0
    assert len(row["probe_ms"]) == 4 and all(ms > 0 for ms in row["probe_ms"])
    assert row["probe_over_profile"] is None  # a GPU preset: no probe to compare with
    # Every part of both kinds of step measured and predicted; the parts add up to the steps.
    for kind in ("decode", "prefill"):
        c = row["components"][kind]
        assert c["steps"] == row["steps"][kind]["steps"]
        assert all(c[p]["predicted_ms"] > 0 for p in ("linear", "attention", "lm_head", "rest"))
        assert all(c[p]["measured_ms"] > 0 for p in ("linear", "attention", "lm_head"))
        total = sum(c[p]["measured_ms"] for p in ShadowExecutor.PARTS)
        assert total == pytest.approx(row["steps"][kind]["mean_measured_ms"], rel=1e-6)
    write_report(tmp_path / "r", {}, [row])
    assert "Where the time goes" in (tmp_path / "r.md").read_text()
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


def test_optional_per_size_tables_of_a_measured_calibration():
    """A machine profile may give the LM head its own efficiency and prefill attention one per prompt
    length; the cost model then prices those parts from them (and from the shared tables otherwise)."""
    cal = json.loads(CALIBRATION_FILE.read_text())
    model, gpu = load_model("opt-13b"), load_hardware("a100-40gb")
    base = CostModel(model, gpu, calibration=cal)
    cal["a100"]["lm_head"] = {"tokens": [1, 1024], "efficiency": [0.5, 0.5]}
    cal["attention"]["prefill_flops_efficiency_by_tokens"] = {"tokens": [16, 2048], "efficiency": [0.1, 0.4]}
    mine = CostModel(model, gpu, calibration=cal)
    h, vocab, b = model.hidden_size, model.vocab_size, model.dtype_bytes
    roofline = max(
        (h * vocab + h + vocab) * b / (gpu.hbm_bytes_per_s / 1e3), 2 * h * vocab / (gpu.peak_flops / 1e3)
    )
    assert mine.decode(1, 100).lm_head == pytest.approx(roofline / 0.5)
    assert base.decode(1, 100).lm_head != pytest.approx(roofline / 0.5)
    peak = model.num_hidden_layers * 2 * h / (gpu.peak_flops / 1e3)
    assert mine.prefill_attention_ms(16, 0) == pytest.approx(16 * 16 * peak / 0.1)
    assert mine.prefill_attention_ms(2048, 0) == pytest.approx(2048 * 2048 * peak / 0.4)
    mid = (0.1 + 0.4) / 2  # linear in between
    assert mine.prefill_attention_ms(1032, 10) == pytest.approx((2 * 1032 * 10 + 1032**2) * peak / mid)
    assert mine.prefill([(16, 0), (2048, 0)]).attention == pytest.approx(
        mine.prefill_attention_ms(16, 0) + mine.prefill_attention_ms(2048, 0)
    )


def test_timed_forward_parts_are_measured_in_place():
    """The profiler's in-place timing: linears, attention and the LM head each measured, within the
    forward's total, and the runner left as it was (no module hooks, no timer)."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=120,
        max_position_embeddings=128, word_embed_proj_dim=64,
    )  # fmt: skip
    runner = ModelRunner(OPTForCausalLM(cfg).eval(), 16, 4, 0)
    n = 3
    inputs = StepInputs(
        input_ids=torch.arange(n), positions=torch.zeros(n, dtype=torch.long),
        slot_mapping=torch.arange(n) * 4,
        block_tables=torch.arange(n, dtype=torch.int32)[:, None], is_prefill=False,
        context_lens=torch.ones(n, dtype=torch.int32), logit_rows=torch.arange(n),
    )  # fmt: skip
    parts = timed_forward(runner, inputs, reps=3)
    assert all(parts[k] > 0 for k in ("total", "linear", "attention", "lm_head"))
    assert parts["linear"] + parts["attention"] + parts["lm_head"] < parts["total"]
    assert runner.timer is None and "forward" not in vars(runner)  # the hook, no monkeypatching
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in runner.model.modules())


def test_time_scale_multiplies_every_simulated_step():
    cfg = SimConfig(
        model="opt-125m", server=ServerConfig(kv_cache_gib=0.05, max_model_len=512), track_memory=False
    )
    engine, _, cost = build(cfg)
    out = None
    for g in synthetic("alpaca", 2.0, 3.0, 0).to_sequence_groups(seed=0):
        engine.scheduler.add(g)
    out = engine.scheduler.schedule(0.0)
    base = SimulatedExecutor(cost).execute(out).duration_s
    slow = SimulatedExecutor(cost, time_scale=1.3).execute(out).duration_s
    assert base > 0 and slow == pytest.approx(1.3 * base)


def test_a_rerun_skips_the_rates_already_done(tmp_path, monkeypatch, capsys):
    """Rows are written after every rate; a re-run with the same settings and calibration keeps them
    and runs only the missing rates; changed settings start afresh."""
    import harness.calib.sim_vs_real as svr

    ran = []

    def fake_compare(cfg, dataset, rate, *args):
        ran.append(rate)
        steps = {"decode": {"mean_abs_rel_error": 0.0, "predicted_over_measured": 1.0}}
        return {
            "rate": rate, "num_requests": 1, "normalized_latency_real": 1.0,
            "normalized_latency_real_runs": [1.0], "real_run_spread": 0.0, "normalized_latency_sim": 1.0,
            "normalized_latency_gap": 0.0, "steps": steps,
        }  # fmt: skip

    monkeypatch.setattr(svr, "compare", fake_compare)
    out = str(tmp_path / "r")
    svr.main(["--hardware", "a100-40gb", "--rates", "1", "--out", out])
    svr.main(["--hardware", "a100-40gb", "--rates", "1", "2", "--out", out])
    assert ran == [1.0, 2.0]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["rate"] for r in rows] == [1.0, 2.0]
    svr.main(["--hardware", "a100-40gb", "--rates", "1", "--duration", "30", "--out", out])
    assert ran == [1.0, 2.0, 1.0]  # other settings: nothing reused
    with pytest.raises(SystemExit, match="real-runs"):
        svr.main(["--hardware", "a100-40gb", "--real-runs", "0", "--out", out])
