from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under Triton's interpreter on CPU tensors; it must be chosen before triton is
# imported (tests/test_kernels.py imports the kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from paged import BlockManager, CacheConfig, SamplingParams, Scheduler, SchedulerConfig, SequenceGroup


def make_group(request_id, prompt, max_tokens=8, n=1, arrival=0.0, beam=False, prefix=None):
    params = SamplingParams(max_tokens=max_tokens, n=n, use_beam_search=beam, ignore_eos=True)
    return SequenceGroup(str(request_id), list(prompt), params, arrival_time=arrival, prefix=prefix)


def make_manager(
    num_gpu_blocks=16, block_size=4, num_cpu_blocks=16, watermark=0.0, caching=False, max_model_len=256
):
    cache = CacheConfig(
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        num_cpu_blocks=num_cpu_blocks,
        watermark=watermark,
        enable_prefix_caching=caching,
    )
    return BlockManager(cache, max_model_len)


def make_scheduler(num_gpu_blocks=64, block_size=4, num_cpu_blocks=64, watermark=0.0, caching=False, **kw):
    cfg = SchedulerConfig(**{"max_num_batched_tokens": 256, "max_model_len": 256, **kw})
    manager = make_manager(num_gpu_blocks, block_size, num_cpu_blocks, watermark, caching, cfg.max_model_len)
    return Scheduler(cfg, manager), manager


@pytest.fixture
def sched():
    return make_scheduler()


@pytest.fixture
def llm_engines(monkeypatch):
    """The engines paged.llm.LLM builds (one per generate call), in order, to read their steps."""
    import paged.llm

    engines = []

    class Recording(paged.llm.Engine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            engines.append(self)

    monkeypatch.setattr(paged.llm, "Engine", Recording)
    return engines
