"""pagelab's PagedAttention engine: block manager, scheduler, engine loop, and the real engine's API.

`from paged import LLM, SamplingParams` is vLLM's spelling. `LLM` (and its output types) load torch and
transformers, so they are imported on first use: the scheduler and the simulator stay torch-free.
"""

from paged.block_manager import BlockManager
from paged.config import CacheConfig, SchedulerConfig
from paged.engine import Engine
from paged.executor import Executor, NullExecutor
from paged.memory import AllocPlan, AllocStatus, KVCacheManager, MemoryUsage
from paged.sampling_params import SamplingParams
from paged.scheduler import Scheduler
from paged.sequence import Sequence, SequenceGroup, SequenceStatus, SharedPrefix
from paged.step import DecodeRun, ExecutorResult, Sample, SchedulerOutput, StepRecord

_LAZY = {"LLM": "paged.llm", "RequestOutput": "paged.llm", "CompletionOutput": "paged.llm"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'paged' has no attribute {name!r}")


__all__ = [
    "AllocPlan",
    "AllocStatus",
    "BlockManager",
    "CacheConfig",
    "CompletionOutput",
    "Engine",
    "Executor",
    "ExecutorResult",
    "KVCacheManager",
    "LLM",
    "MemoryUsage",
    "NullExecutor",
    "RequestOutput",
    "Sample",
    "SamplingParams",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "Sequence",
    "SequenceGroup",
    "SequenceStatus",
    "SharedPrefix",
    "StepRecord",
    "DecodeRun",
]
