"""pagelab's PagedAttention engine core: block manager, scheduler, engine loop."""

from paged.block_manager import BlockManager
from paged.config import CacheConfig, SchedulerConfig
from paged.engine import Engine, StepRecord
from paged.executor import Executor, ExecutorResult, NullExecutor, Sample
from paged.memory import AllocPlan, AllocStatus, KVCacheManager, MemoryUsage
from paged.sampling_params import SamplingParams
from paged.scheduler import Scheduler, SchedulerOutput
from paged.sequence import Sequence, SequenceGroup, SequenceStatus, SharedPrefix

__all__ = [
    "AllocPlan",
    "AllocStatus",
    "BlockManager",
    "CacheConfig",
    "Engine",
    "Executor",
    "ExecutorResult",
    "KVCacheManager",
    "MemoryUsage",
    "NullExecutor",
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
]
