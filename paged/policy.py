"""Scheduling policies: in which order the scheduler serves requests (paged/scheduler.py).

The scheduler's mechanics (admission, the token and sequence budgets, preemption, swapping, chunked
prefill) are the same for every policy; a policy decides only the order of its queues and whether a
waiting request may preempt running ones:

- `key(group)`: the waiting, running and swapped queues are kept in increasing key order. Admission
  takes the head of the waiting queue (it waits at the head when it does not fit: no skipping ahead);
  when memory runs out, the running group with the largest key is preempted first.
- `by_arrival`: the key is the arrival time (FCFS). The scheduler then keeps the paper's queue
  handling exactly (arrivals appended; a recompute-preempted group back at the head of the queue, or
  by arrival under mixed steps, as the artifact did). Otherwise every insertion goes by key.
- `preempts`: a waiting head with a smaller key than the last running group, which cannot be admitted
  now, preempts running groups from the largest key down until it fits (vLLM v0's priority
  preemption; the victims are recomputed).

- `bind(scheduler)`: called once with the scheduler that uses the policy, for a key that needs its
  state (the memory manager, `CacheAware`).

A new policy is a subclass with its own `name` and `key`, registered with `register_policy`; it is then
`SchedulerConfig(policy=name)` and `system.scheduling_policy=name` in the harness. docs/extending.md
has a worked example and the tests every policy must pass.
"""

from __future__ import annotations

from typing import Any

from paged.sequence import SequenceGroup


class SchedulingPolicy:
    """First come, first served (the paper, section 4.5): arrival order, no preemption for waiting."""

    name = "fcfs"
    by_arrival = True
    preempts = False

    def bind(self, scheduler) -> None:
        self.scheduler = scheduler

    def key(self, group: SequenceGroup) -> Any:
        return group.arrival_time


class Priority(SchedulingPolicy):
    """vLLM's scheduling_policy="priority": (SequenceGroup.priority, arrival), lower first; a waiting
    request of a higher priority preempts lower-priority running ones."""

    name = "priority"
    by_arrival = False
    preempts = True

    def key(self, group: SequenceGroup) -> Any:
        return group.priority, group.arrival_time


class CacheAware(SchedulingPolicy):
    """Longest cached prefix first (SGLang's longest-prefix-match admission): the waiting request whose
    prompt has the most leading blocks in the prefix cache when it joins the queue goes first, ties
    by arrival. The count is taken once, when the request first joins the queue (a key never changes
    while it waits), so a block cached later does not reorder it. Without a prefix cache it is FCFS."""

    name = "cache_aware"
    by_arrival = False

    def key(self, group: SequenceGroup) -> Any:
        cached = group.cached_prefix_blocks
        if cached is None:
            memory = self.scheduler.memory
            count = getattr(memory, "num_cached_prefix_blocks", None)
            cached = group.cached_prefix_blocks = count(group) if count is not None else 0
        return -cached, group.arrival_time


POLICIES: dict[str, type[SchedulingPolicy]] = {}


def register_policy(cls: type[SchedulingPolicy]) -> type[SchedulingPolicy]:
    """Make a policy class selectable by its name (usable as a class decorator)."""
    POLICIES[cls.name] = cls
    return cls


register_policy(SchedulingPolicy)
register_policy(Priority)
register_policy(CacheAware)
