"""Model presets: transformers-style dimensions read from the YAML files beside this module.

A preset (`paged/presets/model/opt_13b.yaml`, ...) holds a model's shapes, which decide speed and
memory: the real engine builds a random-weight model from it (`LLM(model="opt-125m")`), the simulator
prices its operators. The YAML files ship inside the package, so preset names resolve from an
installed wheel too; the Hydra front door finds the same files as its `model` group
(`hydra.searchpath: pkg://paged.presets`). A user's own preset is a YAML file with the same keys,
passed by path.

`kv_bytes_per_token` is the one place the size of a token's keys and values is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent
GIB = 1024**3


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: float) -> int:
    """Keys and values of one token across all layers (paper Table 1: 800 KiB for OPT-13B in fp16).
    Under tensor parallelism each GPU stores its 1/TP of the heads of every block (section 4.6)."""
    return int(2 * num_layers * num_kv_heads * head_dim * dtype_bytes)  # 0.5: 4-bit KV


def num_blocks_in(gib: float, block_bytes: int) -> int:
    """Whole KV blocks of `block_bytes` bytes in `gib` GiB: how every KV size given in GiB becomes
    blocks (the real engine's kv_cache_gib and swap space, the simulator's overrides)."""
    return int(gib * GIB) // block_bytes


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

    def kv_bytes_per_token(self, dtype_bytes: float | None = None, tp: int = 1) -> int:
        """Keys and values of one token across all layers, per GPU under `tp`-way tensor parallelism;
        `dtype_bytes` overrides the preset's (the real engine may run fp32)."""
        return kv_bytes_per_token(
            self.num_hidden_layers,
            self.num_key_value_heads // tp,
            self.head_dim,
            self.dtype_bytes if dtype_bytes is None else dtype_bytes,
        )

    def kv_bytes_per_block(self, block_size: int, dtype_bytes: float | None = None, tp: int = 1) -> int:
        """One block's keys and values, all layers, per GPU (a block holds `block_size` tokens)."""
        return block_size * self.kv_bytes_per_token(dtype_bytes, tp)


def load_yaml_preset(directory: Path, kind: str, name_or_path: str, cls):
    """A dataclass from `directory/<name>.yaml` (dashes in the name read as underscores) or from a
    YAML path; unknown keys and unknown names are errors that list what is allowed."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):  # a name, not a file
        # opt-13b, opt-1.3b and opt_1_3b all name opt_1_3b.yaml's family of files
        path = directory / f"{name_or_path.replace('-', '_').replace('.', '_')}.yaml"
    if not path.is_file():
        known = sorted(p.stem.replace("_", "-") for p in directory.glob("*.yaml"))
        raise FileNotFoundError(
            f"unknown {kind} preset {name_or_path!r}: known presets are {', '.join(known)}, or give the "
            f"path of a YAML file with the same keys"
        )
    data = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    try:
        return cls(**data), path
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


def load_model(name_or_path: str | ModelSpec) -> ModelSpec:
    """A model preset by name (opt-125m, opt-1.3b as opt-1-3b, opt-13b, opt-66b, opt-175b, llama-7b,
    llama-13b) or the path of a YAML file with the same keys."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    return load_yaml_preset(PRESET_DIR / "model", "model", name_or_path, ModelSpec)[0]
