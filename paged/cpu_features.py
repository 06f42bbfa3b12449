"""What this CPU can do, for choosing the real engine's dtype: bf16 only where the processor computes it
natively (AVX-512 BF16 or AMX); elsewhere (AVX2 machines) bf16 is emulated and far slower than fp32."""

from __future__ import annotations

import platform
from functools import lru_cache

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "asimd", "sve")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (/proc/cpuinfo on Linux; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def default_cpu_dtype() -> str:
    """bfloat16 where the CPU computes it natively, else float32."""
    return "bfloat16" if native_bf16() else "float32"


def describe() -> dict:
    """The CPU model and its vector flags, for benchmark records."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "vector_flags": [f for f in VECTOR_FLAGS if f in flags]}
