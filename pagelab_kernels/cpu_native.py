"""The native CPU decode attention (pagelab_kernels/csrc/paged_decode.c), built on first use with the system C
compiler and called through ctypes.

It reads every cached key and value once, in place through the block table, with OpenMP over
(sequence, KV head): the memory-bound loop vLLM's CPU backend also writes natively. Built with
`-O3 -march=native -fopenmp` into ~/.cache/pagelab/kernels/ (keyed by the source, the flags and the
compiler), so a build happens once per machine and takes about a second. `available()` is False when
there is no C compiler or the build fails (the reason is kept in `build_error`); pagelab_kernels/cpu_ops.py
then falls back to its torch.compile'd function. PAGELAB_NATIVE=0 turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "paged_decode.c"
# -ffast-math: reassociated (vectorised) dot products and glibc's vector expf; the kernel has no
# infinities or NaNs to preserve (no masking: each sequence reads exactly its context).
# PAGELAB_NATIVE_MARCH picks the instruction set instead of the build machine's own (-march=native):
# x86-64-v2 (SSE4.2, the portable path), x86-64-v3 (AVX2 + FMA), x86-64-v4 (AVX-512); the tests build
# and check each one this processor can run (tests/test_native_isa.py).
MARCH = os.environ.get("PAGELAB_NATIVE_MARCH", "native")
FLAGS = ["-O3", f"-march={MARCH}", "-ffast-math", "-fopenmp", "-fPIC"]
# Linked in a second command without -ffast-math: a shared object linked with it carries GCC's
# crtfastmath.o, whose constructor turns on flush-to-zero for the whole process when the library
# loads, and every float computation after it (numpy's included) would lose its subnormals.
LINK = ["-shared", "-fopenmp"]
CACHE = Path(os.environ.get("PAGELAB_CACHE", Path.home() / ".cache" / "pagelab")) / "kernels"
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_lib = None
build_error: str | None = None
NO_COMPILER = "no C compiler (gcc or cc) on PATH"


def _build() -> ctypes.CDLL | None:
    global build_error
    if os.environ.get("PAGELAB_NATIVE", "1") == "0":
        build_error = "PAGELAB_NATIVE=0"
        return None
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        build_error = NO_COMPILER
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS, "|", *LINK]).encode()).hexdigest()[:16]
    path = CACHE / f"paged_decode_{key}.so"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            out, obj = Path(tmp) / path.name, Path(tmp) / "paged_decode.o"
            for cmd in (
                [cc, *FLAGS, "-c", str(SOURCE), "-o", str(obj)],
                [cc, *LINK, str(obj), "-o", str(out), "-lm"],
            ):
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    build_error = f"{cc} failed: {proc.stderr[-2000:]}"
                    return None
            os.replace(out, path)  # atomic: parallel processes may build at once
    lib = ctypes.CDLL(str(path))
    fn = lib.paged_decode_attention
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    g = lib.greedy_rows
    g.restype = None
    g.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.write_kv.restype = lib.rms_norm.restype = lib.silu_and_mul.restype = None
    lib.write_kv.argtypes = [p, p, p, p, p, i, i, i, i]
    lib.rms_norm.argtypes = [p, p, p, i, i, ctypes.c_float, i, i]
    lib.silu_and_mul.argtypes = [p, p, i, i, i, i]
    lib.rotary.restype = None
    lib.rotary.argtypes = [p, ctypes.c_long, i, i, i, p, p, i, i]
    return lib


def greedy_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax token, its log-probability) of each row of fp32 logits [rows, vocab]."""
    assert available(), build_error
    logits = logits.contiguous()
    assert logits.dtype == torch.float32
    rows, vocab = logits.shape
    tokens = torch.empty(rows, dtype=torch.int64)
    logprobs = torch.empty(rows, dtype=torch.float32)
    _lib.greedy_rows(
        logits.data_ptr(), rows, vocab, tokens.data_ptr(), logprobs.data_ptr(), torch.get_num_threads()
    )
    return tokens, logprobs


def available() -> bool:
    global _lib
    if _lib is None and build_error is None:
        _lib = _build()
    return _lib is not None


def paged_decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale) -> torch.Tensor:
    """Same contract as pagelab_kernels/reference.py. CPU tensors; query/caches of one dtype."""
    assert available(), build_error
    query = query.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.dtype == query.dtype == v_cache.dtype
    out = torch.empty_like(query)
    num_seqs, num_heads, head_dim = query.shape
    _lib.paged_decode_attention(
        query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), lens.data_ptr(),
        out.data_ptr(), num_seqs, num_heads, k_cache.shape[2], head_dim, k_cache.shape[1],
        tables.shape[1], float(scale), DTYPES[query.dtype], torch.get_num_threads(),
    )  # fmt: skip
    return out


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    """pagelab_kernels/reference.py's write_kv_cache in one native pass (key/value in the caches' dtype)."""
    assert available(), build_error
    key, value = key.to(k_cache.dtype).contiguous(), value.to(v_cache.dtype).contiguous()
    slots = slot_mapping.to(torch.int64).contiguous()
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    row = key.shape[1] * key.shape[2]
    _lib.write_kv(
        key.data_ptr(), value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(),
        key.shape[0], row, key.element_size(), torch.get_num_threads(),
    )  # fmt: skip


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm over the last dimension of a 2-D x, in one pass."""
    assert available(), build_error
    x = x.contiguous()
    weight = weight.to(x.dtype).contiguous()
    out = torch.empty_like(x)
    rows, n = x.shape
    _lib.rms_norm(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, n, float(eps), DTYPES[x.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :n]) * x[:, n:] for x [rows, 2n], in one pass."""
    assert available(), build_error
    x = x.contiguous()
    rows, n2 = x.shape
    out = torch.empty(rows, n2 // 2, dtype=x.dtype)
    _lib.silu_and_mul(x.data_ptr(), out.data_ptr(), rows, n2 // 2, DTYPES[x.dtype], torch.get_num_threads())
    return out


def rotary(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """transformers' rotary embedding, in place, on the first `heads` heads of each row of x, a 2-D
    view whose rows may be strided (the query or key columns of the fused q/k/v output); cos and sin
    [tokens, head_dim] in x's dtype."""
    assert available(), build_error
    d = cos.shape[-1]
    assert x.stride(1) == 1 and d <= 512 and x.shape[1] >= heads * d
    cos, sin = cos.to(x.dtype).contiguous(), sin.to(x.dtype).contiguous()
    _lib.rotary(
        x.data_ptr(), x.stride(0), x.shape[0], heads, d, cos.data_ptr(), sin.data_ptr(), DTYPES[x.dtype],
        torch.get_num_threads(),
    )  # fmt: skip
