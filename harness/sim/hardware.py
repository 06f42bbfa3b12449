"""Hardware presets: one GPU's datasheet numbers, read from harness/conf/hardware/*.yaml.

A hardware preset holds what the cost model needs of a device (bandwidths, peak FLOPs, memory) and
names the operator calibration that applies to it; each YAML file cites its sources. A user's own
preset is a YAML file with the same keys, passed by path (harness/calib/profile.py writes one for the
machine it runs on). The files ship inside the harness package, so names resolve from an installed
wheel too; the Hydra front door reads the same files as its `hardware` group.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from paged.presets import GIB, load_yaml_preset

HARDWARE_DIR = Path(__file__).resolve().parents[1] / "conf" / "hardware"


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
    # Mapping one physical page into a virtual KV tensor (CUDA VMM: cuMemMap + cuMemSetAccess), in
    # microseconds per page; vAttention pays it as requests grow (baselines/vattention.py). 0: free.
    page_map_us: float = 0.0
    page_unmap_us: float = 0.0  # cuMemUnmap, per page
    # A calibration JSON of the same schema measured for this machine (harness/calib/profile.py),
    # relative to the preset's YAML; empty: the built-in harness/data/calibration.json.
    calibration_file: str = ""

    def __post_init__(self) -> None:
        for key in ("page_map_us", "page_unmap_us"):
            value = getattr(self, key)
            if not value >= 0:
                raise ValueError(f"hardware {self.name}: {key} must be >= 0 us per page, got {value}")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_bandwidth_gbps * 1e9

    @property
    def peak_flops(self) -> float:
        return self.peak_fp16_tflops * 1e12


def load_hardware(name_or_path: str | GPUSpec) -> GPUSpec:
    """A hardware preset by name (a100-40gb, a100-80gb, h100-80gb) or the path of a YAML file."""
    if isinstance(name_or_path, GPUSpec):
        return name_or_path
    gpu, path = load_yaml_preset(HARDWARE_DIR, "hardware", name_or_path, GPUSpec)
    if gpu.calibration_file:
        gpu = replace(gpu, calibration_file=str((path.parent / gpu.calibration_file).resolve()))
    return gpu
