"""The simulator's beam-dynamics model (paged/beam_model.py), its use by the NullExecutor, and the real
checkpoint it is calibrated on (paged/checkpoints.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paged import Engine, NullExecutor, SequenceStatus
from paged.beam_model import (
    BeamModel,
    count_vector_probs,
    distinct_parents_probs,
    fit,
    load_beam_model,
)
from tests.conftest import make_group, make_scheduler


def draw_counts(model: BeamModel, width: int, steps: int, seed: int) -> Counter:
    rng = random.Random(seed)
    out: Counter = Counter()
    for _ in range(steps):
        parents = Counter(model.draw(width, width, rng))
        out[tuple(parents.get(r, 0) for r in range(width))] += 1
    return out


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 6),
    theta=st.floats(0.05, 3.0, allow_subnormal=False),
    keep=st.floats(0.0, 1.0, allow_subnormal=False),
)
def test_slot_and_count_vector_probabilities_are_distributions(width, theta, keep):
    m = BeamModel(theta=theta, keep=keep)
    for row in m.slot_probs(width):
        assert sum(row) == pytest.approx(1.0) and min(row) >= 0.0
    assert sum(count_vector_probs(m, width).values()) == pytest.approx(1.0)
    assert sum(distinct_parents_probs(m, width)) == pytest.approx(1.0)


@pytest.mark.parametrize("theta,keep", [(0.3, 0.0), (0.4, 0.7), (1.0, 0.0), (2.0, 0.3)])
def test_draws_follow_the_model(theta, keep):
    model, width, steps = BeamModel(theta=theta, keep=keep), 4, 20_000
    rng = random.Random(1)
    slot = [[0] * width for _ in range(width)]
    distinct = Counter()
    for _ in range(steps):
        parents = model.draw(width, width, rng)
        for j, r in enumerate(parents):
            slot[j][r] += 1
        distinct[len(set(parents))] += 1
    for j, row in enumerate(model.slot_probs(width)):
        for r, p in enumerate(row):
            assert slot[j][r] / steps == pytest.approx(p, abs=0.015)
    for k, p in enumerate(distinct_parents_probs(model, width), start=1):
        assert distinct[k] / steps == pytest.approx(p, abs=0.015)


def test_extremes():
    rng = random.Random(0)
    assert all(BeamModel(keep=1.0).draw(5, 5, rng) == [0, 1, 2, 3, 4] for _ in range(50))
    assert all(BeamModel(theta=1e-9).draw(5, 5, rng) == [0] * 5 for _ in range(50))
    assert distinct_parents_probs(BeamModel(keep=1.0), 5)[-1] == pytest.approx(1.0)


def test_uniform_is_the_earlier_draw():
    a, b = random.Random(7), random.Random(7)
    for _ in range(100):
        assert BeamModel(kind="uniform").draw(4, 4, a) == sorted(b.choices(range(4), k=4))


def test_draws_are_deterministic_given_the_seed():
    m = BeamModel(theta=0.4, keep=0.6)
    assert draw_counts(m, 6, 500, seed=3) == draw_counts(m, 6, 500, seed=3)
    assert draw_counts(m, 6, 500, seed=3) != draw_counts(m, 6, 500, seed=4)


@pytest.mark.parametrize("width,theta,keep", [(2, 0.1, 0.7), (4, 0.3, 0.7), (4, 0.6, 0.0), (6, 0.45, 0.5)])
def test_fit_recovers_known_parameters(width, theta, keep):
    observed = draw_counts(BeamModel(theta=theta, keep=keep), width, 4000, seed=11)
    got = fit(observed)
    assert got.keep == pytest.approx(keep, abs=0.1)  # the likelihood is flat near keep = 0
    assert got.theta == pytest.approx(theta, rel=0.25, abs=0.03)
    fixed = fit(observed, keep=keep)
    assert fixed.keep == keep and fixed.theta == pytest.approx(theta, rel=0.2, abs=0.03)


def test_widths_without_a_fit_use_the_nearest():
    m = BeamModel(theta=0.9, keep=0.1, theta_by_width={2: 0.1, 6: 0.5}, keep_by_width={2: 0.7, 6: 0.6})
    assert (m.theta_for(2), m.theta_for(3), m.theta_for(4), m.theta_for(5), m.theta_for(8)) == (
        0.1,
        0.1,
        0.1,
        0.5,
        0.5,
    )
    assert m.keep_for(6) == 0.6 and BeamModel(theta=0.9).theta_for(4) == 0.9
    assert BeamModel.from_dict(m.to_dict()) == m


def test_specs():
    assert load_beam_model("uniform").kind == "uniform"
    calibrated = load_beam_model("calibrated")
    assert calibrated.kind == "geometric" and calibrated.theta_by_width and calibrated.keep_by_width
    assert load_beam_model(None) == calibrated
    g = load_beam_model("geometric:theta=0.3,keep=0.5")
    assert (g.theta, g.keep) == (0.3, 0.5)
    k = load_beam_model("calibrated:keep=0.9")
    assert k.keep_for(4) == 0.9 and k.theta_for(4) == calibrated.theta_for(4)
    for bad in ("geometric:tau=1", "beta", "geometric:0.3", "calibrated:keep=2"):
        with pytest.raises(ValueError):
            load_beam_model(bad)


@pytest.mark.parametrize("beam_model", ["uniform", "calibrated", "geometric:theta=0.01", "geometric:keep=1"])
@pytest.mark.parametrize("num_gpu_blocks", [200, 40])  # 40: the width-6 group preempts
def test_beam_steps_leak_no_blocks(beam_model, num_gpu_blocks):
    sched, manager = make_scheduler(num_gpu_blocks=num_gpu_blocks, block_size=2)
    groups = [make_group(i, range(3 + i), max_tokens=12, n=w, beam=True) for i, w in enumerate((2, 4, 6))]
    Engine(sched, NullExecutor(seed=5, beam_model=beam_model)).run(groups)
    for g in groups:
        assert len(g.seqs) == g.sampling_params.n
        assert all(s.num_output_tokens == 12 and s.status is not SequenceStatus.RUNNING for s in g.seqs)
    assert manager.block_tables == {} and manager.gpu.num_free == num_gpu_blocks


def test_ranked_beams_keep_their_drawn_order():
    """Under a geometric model each new beam's cumulative log-probability puts it at its slot's rank,
    so keep=1 (every beam continues itself) never forks: the group's three sequences stay the same."""
    sched, manager = make_scheduler(num_gpu_blocks=64, block_size=2)
    g = make_group("b", range(5), max_tokens=10, n=3, beam=True)
    ids = [s.seq_id for s in g.seqs]
    Engine(sched, NullExecutor(seed=0, beam_model="geometric:keep=1")).run([g])
    assert [s.seq_id for s in g.seqs] == ids
    logps = [s.cumulative_logprob for s in g.seqs]
    assert logps == sorted(logps, reverse=True) and all(-20 < x < 0 for x in logps)


def test_simulator_uses_the_calibrated_model_and_keeps_uniform_available():
    from harness.simulate import SimConfig, build, simulate
    from harness.workload import synthetic

    engine, cap, _ = build(SimConfig())
    assert engine.executor.beam_model == load_beam_model("calibrated")
    w = synthetic("alpaca", 2.0, 30, seed=0, n=4, use_beam_search=True)
    a = simulate(w, SimConfig()).metrics
    b = simulate(w, SimConfig()).metrics
    u = simulate(w, SimConfig(beam_model="uniform")).metrics
    assert a["sharing_saving_pct"] == b["sharing_saving_pct"]  # deterministic with the seed
    assert a["num_completed"] == u["num_completed"] == len(w)
    assert a["sharing_saving_pct"] != u["sharing_saving_pct"]


# ------------------------------------------------------------------ the real checkpoint


def _smollm2_dir():
    from paged.checkpoints import CheckpointUnavailable, smollm2_135m

    try:
        return smollm2_135m()
    except CheckpointUnavailable as e:
        pytest.skip(f"SmolLM2-135M unavailable: {e}")


def test_smollm2_greedy_tokens_equal_transformers_and_read_as_english():
    torch = pytest.importorskip("torch")
    from paged import LLM, SamplingParams

    llm = LLM(model=str(_smollm2_dir()), dtype="float32", kv_cache_gib=0.05, max_model_len=256)
    tok = llm.tokenizer
    questions = ["What is the capital of France?", "Give three tips for staying healthy."]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    ids = [tok.encode(p) for p in prompts]
    outs = llm.generate(ids, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    never = llm.model.config.vocab_size + 1  # EOS as an ordinary token on both sides (ignore_eos)
    for prompt, out in zip(ids, outs):
        hf = llm.model.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=never, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert out.outputs[0].token_ids == hf
    first = outs[0].outputs[0].text
    print("SmolLM2 greedy:", [o.outputs[0].text for o in outs])
    assert "Paris" in first
    words = outs[1].outputs[0].text.lower().split()
    assert sum(w.strip(".,:;") in {"a", "the", "and", "to", "of", "your", "water"} for w in words) >= 2
