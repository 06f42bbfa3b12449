"""The native CPU kernels (pagelab_kernels/csrc/paged_decode.c) built for each x86 instruction set this
processor can run, not only its own (-march=native): the portable SSE build always, AVX2 + FMA and
AVX-512 where present; each build checked against the plain-PyTorch references in a fresh process."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

from paged.cpu_features import cpu_flags

CHECK = r"""
import torch, torch.nn.functional as F
from pagelab_kernels import cpu_native, reference
assert cpu_native.available(), cpu_native.build_error
torch.manual_seed(0)
for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
    k, v = torch.randn(40, 16, 3, 64).to(dt), torch.randn(40, 16, 3, 64).to(dt)
    q = torch.randn(5, 9, 64).to(dt)
    table = torch.randperm(40)[:20].view(5, 4).int()
    lens = torch.tensor([1, 17, 33, 64, 50], dtype=torch.int32)
    got = cpu_native.paged_decode_attention(q, k, v, table, lens, 0.125)
    want = reference.paged_decode_attention(q, k, v, table, lens, 0.125)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    x = torch.randn(7, 96).to(dt); w = torch.randn(96).to(dt)
    h = x.float(); want = w.float() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(cpu_native.rms_norm(x, w, 1e-5).float(), want, rtol=tol, atol=tol)
    gu = torch.randn(7, 160).to(dt)
    want = F.silu(gu[:, :80].float()) * gu[:, 80:].float()
    torch.testing.assert_close(cpu_native.silu_and_mul(gu).float(), want, rtol=tol, atol=tol)
print("ok", cpu_native.FLAGS)
"""

LEVELS = [("x86-64-v2", set()), ("x86-64-v3", {"avx2", "fma"}), ("x86-64-v4", {"avx512f"})]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("march,needs", LEVELS)
def test_each_instruction_set_build_matches_the_references(march, needs, tmp_path):
    if not needs <= cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - cpu_flags())}")
    env = {**os.environ, "PAGELAB_NATIVE_MARCH": march, "PAGELAB_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"-march={march}" in proc.stdout


def test_loading_the_native_library_keeps_subnormals():
    """The library is linked without -ffast-math: GCC's crtfastmath.o would switch flush-to-zero on
    for the whole process at load, and numpy would then round 1e-40 to zero."""
    code = """
import numpy as np
from pagelab_kernels import cpu_native
assert cpu_native.available(), cpu_native.build_error
assert np.float32(1e-40) * np.float32(1.0) != 0, "flush-to-zero is on"
print("ok")
"""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
