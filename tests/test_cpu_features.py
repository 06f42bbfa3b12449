"""The CPU dtype rule (paged/cpu_features.py): bf16 only where the processor computes it natively."""

from paged import cpu_features


def test_bf16_only_with_native_support(monkeypatch):
    for flags, dtype in [
        ({"avx2", "fma"}, "float32"),  # AVX2 machines emulate bf16: fp32 is faster
        ({"avx2", "avx512f"}, "float32"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"amx_bf16"}, "bfloat16"),
        (set(), "float32"),  # flags unreadable
    ]:
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda f=frozenset(flags): f)
        assert cpu_features.default_cpu_dtype() == dtype, flags


def test_describe_names_the_cpu_and_its_vector_flags():
    d = cpu_features.describe()
    assert d["cpu"] and set(d["vector_flags"]) <= set(cpu_features.VECTOR_FLAGS)
