"""Checkpoint loading for the real engine: a transformers model from a local directory or a preset.

`model` is either a local directory holding a transformers checkpoint (its tokenizer is loaded when
present, so prompts may be text) or the name of a model preset (paged/presets/model/*.yaml), which
gives a model of the preset's shapes with random weights: shapes decide speed and memory. No hub
access: a name that is neither a directory nor a preset is an error that names both options.
"""

from __future__ import annotations

from pathlib import Path

import torch

from paged.presets import ModelSpec, load_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hf_config(spec: ModelSpec):
    """A transformers config with a preset's dimensions."""
    if spec.family == "opt":
        from transformers import OPTConfig

        return OPTConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            ffn_dim=spec.ffn_dim,
            vocab_size=spec.vocab_size,
            max_position_embeddings=spec.max_position_embeddings,
            word_embed_proj_dim=spec.hidden_size,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
    )


def load_hf_model(model: str | ModelSpec, dtype: torch.dtype, device: str, seed: int):
    """(model in eval mode on `device`, tokenizer or None) from a local directory, a preset name or a
    ModelSpec. Random weights are drawn after `torch.manual_seed(seed)`: the same seed gives the same
    weights on every tensor-parallel rank before sharding."""
    from transformers import AutoModelForCausalLM

    if isinstance(model, ModelSpec):
        spec = model
    else:
        path = Path(model)
        if path.is_dir():
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError):
                tokenizer = None  # no tokenizer in the directory: prompts must be token ids
            return hf.eval(), tokenizer
        if "/" in model or path.suffix:
            raise FileNotFoundError(
                f"model directory {model!r} does not exist; give a local transformers checkpoint "
                "directory or a preset name (opt-125m, opt-13b, llama-7b, ...)"
            )
        spec = load_model(model)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(hf_config(spec), dtype=dtype)
    return hf.to(device).eval(), None
