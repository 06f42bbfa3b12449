"""Model and hardware presets: plain dataclasses read from conf/model/*.yaml and conf/hardware/*.yaml.

A model preset holds transformers-style dimensions (shapes decide speed and memory); a hardware preset
holds one GPU's datasheet numbers, cited in its YAML file. A user's own preset is a YAML file with the
same keys, passed by path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GIB = 1024**3


@dataclass
class ModelSpec:
    """Transformer dimensions, with transformers' config names."""

    name: str
    family: str  # opt | llama
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    ffn_dim: int = 0  # OPT
    intermediate_size: int = 0  # LLaMA
    dtype_bytes: int = 2  # fp16

    def __post_init__(self) -> None:
        if self.family not in ("opt", "llama"):
            raise ValueError(f"model {self.name}: family must be opt or llama, got {self.family!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model {self.name}: hidden_size must be a multiple of num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_width(self) -> int:
        return self.ffn_dim if self.family == "opt" else self.intermediate_size

    @property
    def num_mlp_matrices(self) -> int:
        return 2 if self.family == "opt" else 3  # OPT: fc1, fc2; LLaMA: gate, up, down

    @property
    def qkv_width(self) -> int:
        return self.hidden_size + 2 * self.num_key_value_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of the layer's matrix multiplies: QKV, output projection, MLP."""
        h = self.hidden_size
        return h * self.qkv_width + h * h + self.num_mlp_matrices * h * self.mlp_width

    @property
    def num_params(self) -> int:
        h, v = self.hidden_size, self.vocab_size
        per_layer = self.linear_params_per_layer + 4 * h  # + layer norms
        if self.family == "opt":
            # biases, learned positions (OPT offsets them by 2), LM head tied to the embedding
            per_layer += self.qkv_width + h + self.mlp_width + h
            embed = v * h + (self.max_position_embeddings + 2) * h
        else:
            embed = 2 * v * h  # untied LM head
        return self.num_hidden_layers * per_layer + embed + 2 * h

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token across all layers (paper Table 1: 800 KiB for OPT-13B)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * self.dtype_bytes


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


def load_model(name_or_path: str) -> ModelSpec:
    """A model preset by name (opt-13b, opt-66b, opt-175b, opt-125m, llama-7b, llama-13b) or path."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    return _load("model", name_or_path, ModelSpec)


def load_hardware(name_or_path: str) -> GPUSpec:
    """A hardware preset by name (a100-40gb, a100-80gb, h100-80gb) or path."""
    if isinstance(name_or_path, GPUSpec):
        return name_or_path
    return _load("hardware", name_or_path, GPUSpec)
