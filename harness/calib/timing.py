"""Timing on a shared machine: the one median-timing loop, and a model runner's forward pass timed by part.

This machine's speed drifts by about 10% over seconds to minutes (docs/real_engine.md), so every number
is a median of several runs after a warm-up, never a mean or a single run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_s(fn: Callable[[], object], reps: int = 7, warmup: int = 1, device: str = "cpu") -> float:
    """Median seconds of `reps` calls of fn() after `warmup` untimed ones. On a CUDA device each call
    is timed by CUDA events around it (the launch is asynchronous; wall time would measure the queue)."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        import torch

        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], reps: int = 7, warmup: int = 1, device: str = "cpu") -> float:
    """median_s in milliseconds."""
    return median_s(fn, reps, warmup, device) * 1e3


class _Span:
    """Adds the wall time of its `with` block to one part of a ForwardTimer."""

    __slots__ = ("parts", "name", "start")

    def __init__(self, parts: dict[str, float], name: str) -> None:
        self.parts, self.name = parts, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.parts[self.name] += (time.perf_counter() - self.start) * 1e3


class ForwardTimer:
    """Times a model runner's forward passes by part, where they run: the runner's own timing hook
    (`runner.timer`: "forward", the whole pass; "attention", the attention kernels; "lm_head") and
    PyTorch module hooks on every nn.Linear, PackedLinear or FusedLinear of the layers ("linear";
    `linears=False`: none). Milliseconds accumulate in `parts` until `reset()`, inside `with
    ForwardTimer(runner):` only; leaving it removes the hooks and unsets the runner's timer."""

    PARTS = ("forward", "linear", "attention", "lm_head")

    def __init__(self, runner, linears: bool = True) -> None:
        self.runner, self.linears = runner, linears
        self.parts = dict.fromkeys(self.PARTS, 0.0)
        self._starts: dict[int, float] = {}
        self._handles: list = []

    def reset(self) -> None:
        self.parts = dict.fromkeys(self.PARTS, 0.0)

    def part(self, name: str) -> _Span:
        """The runner's hook: a context manager timing one part."""
        return _Span(self.parts, name)

    def _pre(self, module, args) -> None:
        self._starts[id(module)] = time.perf_counter()

    def _post(self, module, args, out) -> None:
        self.parts["linear"] += (time.perf_counter() - self._starts[id(module)]) * 1e3

    def __enter__(self) -> ForwardTimer:
        import torch

        from pagelab_kernels.cpu_linear import FusedLinear, PackedLinear

        r = self.runner
        kinds = (torch.nn.Linear, PackedLinear, FusedLinear)  # a CPU runner packs its linears
        linears = [m for layer in r.layers for m in layer.modules() if isinstance(m, kinds)]
        linears = linears if self.linears else []
        self._handles = [m.register_forward_pre_hook(self._pre) for m in linears]
        self._handles += [m.register_forward_hook(self._post) for m in linears]
        r.timer = self
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.runner.timer = None


def timed_forward(runner, inputs, reps: int) -> dict[str, float]:
    """runner.forward(inputs) timed by part (ForwardTimer), in ms, with "total" the whole forward:
    the run with the median total of `reps` runs (its parts from the same run), after a warm-up run."""
    runs = []
    with ForwardTimer(runner) as timer:
        runner.forward(inputs)
        for _ in range(reps):
            timer.reset()
            runner.forward(inputs)
            runs.append({"total": timer.parts["forward"], **timer.parts})
    return sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
