"""Model and hardware presets: plain dataclasses read from conf/model/*.yaml and conf/hardware/*.yaml.

A model preset holds transformers-style dimensions (shapes decide speed and memory); a hardware preset
holds one GPU's datasheet numbers, cited in its YAML file. A user's own preset is a YAML file with the
same keys, passed by path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from paged.presets import GIB, ModelSpec, load_model  # noqa: F401  (re-exported)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class GPUSpec:
    """One GPU's datasheet numbers (sources in the preset's YAML)."""

    name: str
    memory_gib: float
    hbm_bandwidth_gbps: float  # GB/s, 1e9 bytes
    peak_fp16_tflops: float  # dense tensor-core
    nvlink_gbps: float  # all links, both directions
    pcie_gbps: float  # host link, one direction
    calibration: str  # which operator calibration applies (harness/data/calibration.json)
    # A calibration JSON of the same schema measured for this machine (harness/profile_cpu.py), relative
    # to the preset's YAML; empty: the built-in harness/data/calibration.json.
    calibration_file: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_bandwidth_gbps * 1e9

    @property
    def peak_flops(self) -> float:
        return self.peak_fp16_tflops * 1e12


def _load(kind: str, name_or_path: str, cls):
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / kind / f"{name_or_path.replace('-', '_')}.yaml"
    if not path.is_file():
        known = sorted(p.stem.replace("_", "-") for p in (CONF_DIR / kind).glob("*.yaml"))
        raise FileNotFoundError(
            f"unknown {kind} preset {name_or_path!r}: known presets are {', '.join(known)}, or give the "
            f"path of a YAML file with the same keys"
        )
    data = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    if data.get("calibration_file"):
        data["calibration_file"] = str((path.parent / data["calibration_file"]).resolve())
    try:
        return cls(**data)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


def load_hardware(name_or_path: str) -> GPUSpec:
    """A hardware preset by name (a100-40gb, a100-80gb, h100-80gb) or path."""
    if isinstance(name_or_path, GPUSpec):
        return name_or_path
    return _load("hardware", name_or_path, GPUSpec)
