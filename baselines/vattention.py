"""vAttention (Prabhu et al., ASPLOS 2025) as a memory policy: each request owns a contiguous virtual
KV region per layer, and physical memory is mapped into it on demand, a page at a time (64 KiB or
2 MiB pages per layer and K or V tensor). Attention reads contiguous memory, so the kernel needs no
block table.

In pagelab's terms that is paging at page granularity: a "block" is one page in each of the 2 x layers
tensors, holding as many tokens as fit in a page (`tokens_per_page`; a token's keys never straddle two
pages, so 64 KiB holds 6 of OPT-13B's 10 KiB-per-layer tokens and 4 KiB stays unused, 6%). Waste is then
at most a page per request and tensor, and the simulator prices its attention without the paged
kernel's per-block overhead (harness/sim/cost_model.py, `contiguous`). Decisions (docs/baselines.md):

- parallel samples and beams share pages as paging shares blocks (optimistic for vAttention, whose
  virtual tensors would copy them); the prefix cache and explicit shared prefixes are not offered;
- mapping a page costs nothing in the step: vAttention maps pages in the background, ahead of the
  decode that needs them (its latency-hiding optimizations); no public per-page measurement is in the
  reference data to price a synchronous mapping with.
"""

from __future__ import annotations

from paged.block_manager import BlockManager
from paged.config import CacheConfig
from paged.presets import ModelSpec

# System name -> page size in KiB (the two sizes the issue and vAttention's evaluation compare).
PAGE_KIB = {"vattention": 64, "vattention_2m": 2048}


def tokens_per_page(model: ModelSpec, page_kib: int, dtype_bytes: float | None = None, tp: int = 1) -> int:
    """Tokens whose keys (or values) of one layer fit in a page, per GPU under tensor parallelism."""
    per_token = model.kv_bytes_per_token(dtype_bytes, tp) / model.num_hidden_layers / 2
    tokens = int(page_kib * 1024 // per_token)
    if tokens < 1:
        raise ValueError(
            f"a {page_kib} KiB page holds no token of {model.name} ({per_token:.0f} bytes per token and "
            "layer): use a larger page"
        )
    return tokens


class VAttention(BlockManager):
    """BlockManager with page-sized blocks (the cache config's block_size is tokens_per_page)."""

    name = "vattention"

    def __init__(self, cache_config: CacheConfig, max_model_len: int | None = None) -> None:
        if cache_config.enable_prefix_caching:
            raise ValueError(
                "vattention has no prefix cache (its KV lives in per-request virtual tensors): set "
                "enable_prefix_caching=false"
            )
        super().__init__(cache_config, max_model_len)
