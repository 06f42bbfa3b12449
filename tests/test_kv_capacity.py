"""KV capacity: the one function, against the paper's Table 1."""

from __future__ import annotations

import pytest

from harness.server import ServerConfig
from harness.sim.hardware import load_hardware
from harness.sim.kv_capacity import kv_capacity
from paged.presets import load_model


@pytest.mark.parametrize(
    "model, gpu, tp, paper_slots",
    [
        ("opt-13b", "a100-40gb", 1, 15.7e3),
        ("opt-66b", "a100-40gb", 4, 9.7e3),
        ("opt-175b", "a100-80gb", 8, 60.1e3),
    ],
)
def test_table1_slots_within_3_percent(model, gpu, tp, paper_slots):
    cap = kv_capacity(load_model(model), load_hardware(gpu), tp=tp)
    assert abs(cap.num_slots / paper_slots - 1) < 0.03


def test_kv_bytes_per_token_match_table1():
    # Paper Table 1: 800 KiB, 2304 KiB, 4608 KiB per token in fp16.
    assert [load_model(m).kv_bytes_per_token() // 1024 for m in ("opt-13b", "opt-66b", "opt-175b")] == [
        800,
        2304,
        4608,
    ]


def test_parameter_counts_match_the_model_names():
    for name, billions in [
        ("opt-13b", 12.85),
        ("opt-66b", 65.7),
        ("opt-175b", 174.6),
        ("llama-7b", 6.74),
        ("llama-13b", 13.0),
    ]:
        assert abs(load_model(name).num_params / 1e9 / billions - 1) < 0.01


def test_capacity_arithmetic_and_block_size():
    m, g = load_model("opt-13b"), load_hardware("a100-40gb")
    c16 = kv_capacity(m, g, ServerConfig(block_size=16))
    assert c16.kv_bytes == c16.budget_bytes - c16.weight_bytes - c16.activation_bytes - c16.reserve_bytes
    assert c16.num_gpu_blocks == c16.kv_bytes // c16.block_bytes
    c32 = kv_capacity(m, g, ServerConfig(block_size=32))
    assert c32.num_gpu_blocks == c16.kv_bytes // (2 * c16.block_bytes)
    assert c16.num_cpu_blocks == 4 * 1024**3 // (16 * 800 * 1024)  # 4 GiB of swap space
    assert kv_capacity(m, g, ServerConfig(gpu_memory_utilization=0.9)).num_slots < c16.num_slots
    assert kv_capacity(m, g) == c16  # the defaults: the paper's server


def test_a_fixed_kv_cache_size_replaces_the_computed_one():
    m, g = load_model("opt-13b"), load_hardware("a100-40gb")
    cap = kv_capacity(m, g, ServerConfig(kv_cache_gib=1.0))
    assert (
        cap.num_gpu_blocks == 1024**3 // cap.block_bytes
        and cap.kv_bytes == cap.num_gpu_blocks * cap.block_bytes
    )
    with pytest.raises(ValueError, match="tensor parallelism"):  # the model must still fit
        kv_capacity(load_model("opt-66b"), g, ServerConfig(kv_cache_gib=1.0))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("block_size", 0, "positive number of tokens"),
        ("gpu_memory_utilization", 1.5, "in \\(0, 1\\]"),
        ("preemption_mode", "swapp", "preemption_mode must be one of"),
        ("kv_cache_gib", 0.0, "kv_cache_gib must be positive"),
        ("watermark", 1.0, "watermark"),
    ],
)
def test_server_config_checks_itself(field, value, match):
    with pytest.raises(ValueError, match=match):
        ServerConfig(**{field: value})


def test_a_model_that_does_not_fit_names_the_fix():
    with pytest.raises(ValueError, match="tensor parallelism"):
        kv_capacity(load_model("opt-66b"), load_hardware("a100-40gb"), tp=1)
    with pytest.raises(ValueError, match="must divide"):
        kv_capacity(load_model("opt-13b"), load_hardware("a100-40gb"), tp=3)


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="opt-13b"):
        load_model("opt-14b")
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nfamily: opt\nhidden: 3\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_model(str(bad))


def test_every_model_preset_loads_by_its_own_name_from_the_package():
    from paged.presets import PRESET_DIR

    files = sorted((PRESET_DIR / "model").glob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        spec = load_model(str(path))
        assert load_model(spec.name) == spec  # "opt-1.3b" as well as "opt-13b"


def test_artifact_sizing():
    """system=paper's KV sizing: the artifact's closed-form activation estimate by hand for OPT-13B
    (the step's fp16 logits, 2 x 2560 x 50272 values, exceed the layer activations), a 1 GiB
    workspace, and no term that grows with max_num_seqs."""
    model, gpu = load_model("opt-13b"), load_hardware("a100-40gb")
    paper = ServerConfig(kv_sizing="artifact", runtime_reserve_gib=1.0, max_num_seqs=2048)
    cap = kv_capacity(model, gpu, paper)
    assert cap.activation_bytes == 2 * 2560 * model.vocab_size * 2
    assert cap.reserve_bytes == 2**30
    assert cap.num_gpu_blocks == (cap.budget_bytes - cap.weight_bytes - cap.activation_bytes - 2**30) // (
        cap.block_bytes
    )
    assert [
        kv_capacity(load_model(m), load_hardware(g), paper, tp).num_gpu_blocks
        for m, g, tp in [
            ("opt-13b", "a100-40gb", 1),
            ("opt-66b", "a100-40gb", 4),
            ("opt-175b", "a100-80gb", 8),
        ]
    ] == [1030, 673, 3853]  # docs/simulator.md
    assert kv_capacity(model, gpu, ServerConfig(kv_sizing="artifact", max_num_seqs=256)).activation_bytes == (
        cap.activation_bytes
    )
    # vLLM v0.1's profiled sizing does grow with max_num_seqs (the sampler's buffers).
    assert kv_capacity(model, gpu, ServerConfig(max_num_seqs=2048)).num_gpu_blocks < 987


def test_settings_by_system():
    from harness.server import for_system

    s = ServerConfig(max_num_seqs=2048, by_system={"orca_max": {"max_num_seqs": 256}})
    assert for_system(s, "orca_max").max_num_seqs == 256 and for_system(s, "vllm").max_num_seqs == 2048
    with pytest.raises(ValueError, match="max_num_seq.*settable"):
        ServerConfig(by_system={"orca_max": {"max_num_seq": 256}})


def test_kv_cache_dtype_scales_the_blocks_and_the_kv_reads():
    """kv_cache_dtype (vLLM's): fp8 holds twice the blocks of fp16 in the same memory and int4 four
    times (within one block of rounding); a decode step reads fewer KV bytes; a swap moves fewer."""
    from harness.server import ServerConfig
    from harness.sim.cost_model import CostModel
    from harness.sim.hardware import load_hardware
    from harness.sim.kv_capacity import kv_capacity
    from paged.presets import load_model

    model, gpu = load_model("opt-13b"), load_hardware("a100_40gb")
    blocks = {
        d: kv_capacity(model, gpu, ServerConfig(kv_cache_dtype=d)).num_gpu_blocks
        for d in ("auto", "fp8", "int4")
    }
    assert abs(blocks["fp8"] - 2 * blocks["auto"]) <= 1 and abs(blocks["int4"] - 4 * blocks["auto"]) <= 3
    fp16, fp8 = CostModel(model, gpu), CostModel(model, gpu, kv_dtype_bytes=1)
    assert fp8.decode_ms(64, 64 * 1000) < fp16.decode_ms(64, 64 * 1000)
    assert fp8.swap_ms(100) < fp16.swap_ms(100)
    import pytest

    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        ServerConfig(kv_cache_dtype="fp4")
