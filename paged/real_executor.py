"""The engine's executor on a real model: block operations, the forward pass, sampling, wall time.

Everything it needs comes in the scheduler's output (paged/step.py): the model runner turns it into
tensors (`ModelRunner.prepare`), applies the block operations and runs the forward pass; the sampler
turns logits into samples. Under tensor parallelism the step is broadcast first, so every rank
applies the one scheduler's decisions (paged/tensor_parallel.py).
"""

from __future__ import annotations

import time

import torch

from paged.model_runner import ModelRunner
from paged.sampler import Sampler
from paged.step import ExecutorResult, SchedulerOutput


class RealExecutor:
    needs_block_tables = True

    def __init__(self, runner: ModelRunner, seed: int = 0) -> None:
        self.runner = runner
        self.sampler = Sampler(seed)

    def execute(self, out: SchedulerOutput) -> ExecutorResult:
        start = time.perf_counter()
        r = self.runner
        inputs, rows = r.prepare(out) if out.scheduled_groups else (None, [])
        step = (out.blocks_to_swap_out, out.blocks_to_swap_in, out.blocks_to_copy, inputs)
        if r.tp_size > 1:  # one scheduler: every rank applies this rank's decisions
            from paged.tensor_parallel import broadcast_step

            broadcast_step(step)
        logits = r.run_step(*step)
        outputs = [] if inputs is None else self.sampler.sample(logits.cpu(), out.scheduled_groups, rows)
        if r.device.type == "cuda":
            torch.cuda.synchronize()
        return ExecutorResult(outputs, time.perf_counter() - start)
