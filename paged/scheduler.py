"""Iteration-level scheduling with all-or-nothing preemption (paper section 4.5, vLLM v0.1).

One scheduler for every system: the paged BlockManager and the contiguous baselines are memory
policies behind `KVCacheManager`; the real model and the cost model are executors behind the engine.
A scheduling policy (paged/policy.py) orders the queues: "first" and "last" below are in its order,
which under the paper's FCFS (the default) is arrival order.

`step_composition="separate"` (the vLLM v0.1 release): a step is a prompt step or a decode step.
1. If no group is swapped out, admit waiting groups from the head of the queue while each fits: memory
   above the watermark, max_num_batched_tokens, max_num_seqs. The first that does not fit stops
   admission (head-of-line: nothing skips ahead). If any group was admitted, the step is their prompt
   phase.
2. Otherwise decode every running group, first to last. A group that cannot get a slot for each of its
   sequences preempts the last running group, or itself if it is the last one.
3. If nothing was preempted, swap groups back in, first to last, while they fit.

`step_composition="mixed"` (the paper's artifact, whose runs made the paper's figures): every step
runs 2 then 3 (swap-in only if the step swapped nothing out), then 1 into the same batch, the token
budget counting one token per running sequence plus the admitted prompts (docs/scheduler.md).

`enable_chunked_prefill` (Sarathi-Serve, vLLM's chunked prefill), on mixed steps: 2 and 3, then the
prompts in progress, then 1, where a single-sequence group's prompt is cut to what is left of
max_num_batched_tokens; a prompt then spans several steps, and only its last chunk samples a token.
"""

from __future__ import annotations

from collections import deque

from paged.config import SchedulerConfig
from paged.memory import AllocStatus, KVCacheManager
from paged.policy import POLICIES
from paged.preemption import PreemptionCosts
from paged.sequence import FINISHED, Sequence, SequenceGroup, SequenceStatus, next_seq_id
from paged.step import Sample, SchedulerOutput

_RUNNING = SequenceStatus.RUNNING
_WAITING = SequenceStatus.WAITING
_SWAPPED = SequenceStatus.SWAPPED


def _arrival(group: SequenceGroup) -> float:
    return group.arrival_time


class Scheduler:
    """Three queues in the policy's order (paged/policy.py): waiting (new and recompute-preempted),
    running, swapped."""

    def __init__(self, config: SchedulerConfig, memory: KVCacheManager) -> None:
        self.config = config
        self.memory = memory
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.swapped: list[SequenceGroup] = []
        self._running_sorted = True
        self._pending_copies: list[tuple[int, int]] = []  # from forks, done before the next step
        # Put every running sequence's block table into the output. The real executor reads them; the
        # simulated one prices a step by its shape alone, so the Engine turns this off for it
        # (`Executor.needs_block_tables`) and the simulator does not pay a lookup per sequence.
        self.emit_block_tables = True
        # preemption_mode="cost": predicts each victim's swap and recompute times (paged/preemption.py);
        # the simulator and the real backend set it.
        self.preemption_costs: PreemptionCosts | None = None
        self.num_preemptions = 0
        self.num_swapped_blocks = 0  # blocks moved out to host memory, summed over the run
        # pad_batch (FasterTransformer): the running batch's padded shape, and its members that are
        # done but finish, with the batch, only when its last member is done.
        self._padded_batch: tuple[int, int] | None = None
        self._held: list[SequenceGroup] = []
        # The order of every queue, and of preemption (the last goes first): paged/policy.py.
        self.policy = POLICIES[config.policy]()
        self.policy.bind(self)
        self._order = _arrival if self.policy.by_arrival else self.policy.key

    def add(self, group: SequenceGroup) -> None:
        if self.policy.by_arrival:
            self.waiting.append(group)
        else:
            self._insert_waiting(group)

    def _insert_waiting(self, group: SequenceGroup) -> None:
        """Put a group into the waiting queue in scheduling order, after those that go no later (an
        arrival or a recompute-preempted group; both land near the end or head of their class)."""
        order = self._order
        key = order(group)
        waiting = self.waiting
        i = len(waiting)
        while i and order(waiting[i - 1]) > key:
            i -= 1
        waiting.insert(i, group)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def abort(self, request_id: str, now: float) -> list[SequenceGroup]:
        """Drop a request wherever it waits or runs (its client went away): its unfinished sequences end
        as aborted and their blocks, on the device or swapped out, are freed. Call between steps.
        Returns the groups this finishes: the request's, and under pad_batch the held members of a
        padded batch it was the last running member of; [] for an unknown or finished request."""
        for queue in (self.waiting, self.running, self.swapped):
            group = next((g for g in queue if g.request_id == request_id), None)
            if group is not None:
                break
        else:
            return []
        queue.remove(group)
        for seq in group.seqs:
            if seq.status not in FINISHED:
                seq.status = SequenceStatus.FINISHED_ABORTED
            self.memory.free(seq)
        group.metrics.finished_time = now
        finished = [group]
        if self.config.pad_batch and not self.running and self._held:
            self._retire([], finished, now)  # the padded batch ends without its aborted member
        return finished

    # ------------------------------------------------------------------ scheduling
    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        if self._pending_copies:
            out.blocks_to_copy, self._pending_copies = self._pending_copies, []
        if self.policy.preempts and self.waiting and self.running and not self.swapped:
            self._preempt_for_priority(out, now)
        if self.config.enable_chunked_prefill:
            self._schedule_chunked(out, now)
        elif self.config.step_composition == "mixed":
            self._schedule_mixed(out, now)
        else:
            self._schedule_separate(out, now)
        if self.config.pad_batch:
            self._pad_batch(out)
        if getattr(self.memory, "host_tier", None) is not None:  # paged/host_tier.py
            offloads, restores = self.memory.take_host_transfers()
            out.blocks_to_swap_out.extend(offloads)
            out.num_host_offloads = len(offloads)
            out.blocks_to_swap_in.extend(restores)
        if self.emit_block_tables:
            self._add_block_tables(out)
        return out

    def _schedule_separate(self, out: SchedulerOutput, now: float) -> None:
        """A prompt step of the admitted groups if any was admitted, else a decode step (vLLM v0.1)."""
        if not self.swapped and self.waiting and not (self.config.batching == "request" and self.running):
            self._admit(out, now)
            if out.scheduled_groups:
                out.is_prefill = True
                out.num_prefill_groups = len(out.scheduled_groups)
                return
        self._decode(out, now)
        if not out.preempted and self.swapped:
            self._swap_in(out)
            self._reject_unswappable(out, now)
        out.scheduled_groups = self.running
        out.num_batched_tokens = out.num_seqs

    def _schedule_mixed(self, out: SchedulerOutput, now: float) -> None:
        """Decode, swap in, then admit prompts into the same batch (the artifact's `_schedule`)."""
        self._decode(out, now)
        # The artifact swaps in only when this step swapped nothing out; a recompute preemption
        # does not stop it. (Its other rule, stop at a group preempted in this very step, can only
        # concern a group swapped out in this step, which this condition already excludes.)
        if self.swapped and not out.blocks_to_swap_out:
            self._swap_in(out)
            self._reject_unswappable(out, now)
        self.admit_into_decode(out, now, out.num_seqs)  # decoding and swapped-in: one token each
        out.scheduled_groups = self.running

    def _preempt_for_priority(self, out: SchedulerOutput, now: float) -> None:
        """Priority preemption (vLLM v0's `_schedule_priority_preemption`): while the waiting head
        goes before the last running group and cannot be admitted now (memory, token or sequence
        budget), preempt that group. Victims are recomputed whatever the preemption mode: a swapped
        group would stop all admission until it came back (section 4.5), the head's included."""
        head = self.waiting[0]
        order = self._order
        self._sort_running()
        mixed = self.config.step_composition == "mixed"
        while self.running and order(self.running[-1]) > order(head):
            num_seqs = self._num_running_seqs()
            verdict, _ = self._head_verdict(head, num_seqs if mixed else 0, num_seqs, idle=False)
            if verdict != "wait":
                break
            self._preempt(self.running.pop(), out, now, mode="recompute")

    def _sort_running(self) -> None:
        if not self._running_sorted:
            self.running.sort(key=self._order)
            self._running_sorted = True

    def _schedule_chunked(self, out: SchedulerOutput, now: float) -> None:
        """A chunked-prefill step (Sarathi-Serve's stall-free batching): every decode, swap-in as in
        a mixed step, then the prompts in progress in the policy's order, then new prompts, each prompt
        cut to the token budget left. Decoding groups come first in out.scheduled_groups, the
        prompt groups (in progress and new) last, as in a mixed step."""
        self._decode(out, now)  # skips the groups still in their prompt
        if self.swapped and not out.blocks_to_swap_out:
            self._swap_in(out)
            self._reject_unswappable(out, now)
        self._sort_running()
        budget = self.config.max_num_batched_tokens
        decoding, prompts = [], []
        num_tokens = 0
        for group in self.running:
            if self._in_prompt(group):
                prompts.append(group)
            else:
                decoding.append(group)
                num_tokens += group.max_num_running_seqs
        num_seqs = num_tokens
        continued = []
        for group in prompts:  # the policy's order: the first prompt finishes first
            left = budget - num_tokens
            if left <= 0:
                break
            seq = group.seqs[0]
            start = seq.num_computed_tokens
            end = min(len(seq.token_ids), start + left)
            out.prefill_ranges[seq.seq_id] = (start, end)
            if end < len(seq.token_ids):
                out.partial_prefills.append(group)
            continued.append(group)
            num_tokens += end - start
            num_seqs += 1
        out.scheduled_groups = []
        if not self.swapped and self.waiting:
            self._admit(out, now, num_tokens)
            num_tokens = out.num_batched_tokens
            num_seqs += out.num_seqs
        admitted = out.scheduled_groups
        out.scheduled_groups = decoding + continued + admitted
        out.num_prefill_groups = len(continued) + len(admitted)
        out.is_prefill = out.num_prefill_groups > 0
        out.num_batched_tokens = num_tokens
        out.num_seqs = num_seqs

    def _chunkable(self, group: SequenceGroup) -> bool:
        """Whether the group's prompt may be cut into chunks: chunked prefill is on and the group is
        one sequence without an explicit shared prefix (vLLM v0 chunks single-sequence groups only;
        a shared prefix is offered to others on the promise that its first request computes it in
        the step that admits it, paged/shared_prefix.py). Other groups are prefilled whole."""
        return self.config.enable_chunked_prefill and len(group.seqs) == 1 and group.prefix is None

    @staticmethod
    def _in_prompt(group: SequenceGroup) -> bool:
        """A running group whose prompt is still being prefilled in chunks: more than its newest token
        left to compute (with exactly that left, its next step is an ordinary decode)."""
        if len(group.seqs) != 1:
            return False
        seq = group.seqs[0]
        return len(seq.token_ids) - seq.num_computed_tokens > 1

    def admit_into_decode(self, out: SchedulerOutput, now: float, num_decode_seqs: int) -> None:
        """The prompts of a mixed step, after its decodes: admit waiting groups into the batch of
        `num_decode_seqs` decoding sequences. Leaves the admitted groups alone in
        out.scheduled_groups (the caller puts the whole batch there) and counts the step's tokens
        and sequences. The fast-forward (paged/fast_forward.py) calls it for a step whose decodes
        it advances itself."""
        if not self.swapped and self.waiting and not (self.config.batching == "request" and self.running):
            self._admit(out, now, num_decode_seqs)
            out.num_prefill_groups = len(out.scheduled_groups)  # _admit's list: the admitted ones
            out.num_seqs += num_decode_seqs
            # True iff the step has prompts: its decodes become one-token prefills over their
            # cached context (paged/model_runner.py), and post-processing marks the prompts computed.
            out.is_prefill = out.num_prefill_groups > 0
        else:
            out.num_batched_tokens = num_decode_seqs

    def _pad_batch(self, out: SchedulerOutput) -> None:
        """A static batch as one padded tensor (FasterTransformer): it computes every sequence it
        started with, at its longest prompt, until its last member finishes."""
        if out.num_prefill_groups:  # request-level batching admits a new batch only into an idle cache
            admitted = out.scheduled_groups[len(out.scheduled_groups) - out.num_prefill_groups :]
            rows = sum(g.max_num_running_seqs for g in admitted)
            self._padded_batch = (rows, max(g.num_prompt_tokens for g in admitted))
        out.padded_batch = self._padded_batch if self.running else None

    def _reject_unswappable(self, out: SchedulerOutput, now: float) -> None:
        if not self.running and self.swapped:
            # The cache is idle and the first swapped group still cannot come back: memory
            # pinned since its admission (a shared prefix) leaves too little. Nothing will free
            # it, and nothing can be admitted while it is swapped out.
            group = self.swapped.pop(0)
            for seq in group.get_seqs(_SWAPPED):
                self.memory.free(seq)
            self._reject(
                group,
                "cannot fit in the KV cache next to the blocks shared prefixes hold; "
                "give the cache more memory or release prefixes",
                now,
                out,
            )

    def _add_block_tables(self, out: SchedulerOutput) -> None:
        """Each running sequence's block table as it is for this step (after its appends, swaps
        and copies), so that the executor never has to ask the memory manager."""
        get_block_table = self.memory.get_block_table
        out.block_tables = {
            seq.seq_id: get_block_table(seq)
            for group in out.scheduled_groups
            for seq in group.seqs
            if seq.status is _RUNNING
        }

    def _reject(self, group: SequenceGroup, reason: str, now: float, out: SchedulerOutput) -> None:
        group.reject_reason = reason
        group.metrics.finished_time = now
        for seq in group.seqs:
            seq.status = SequenceStatus.FINISHED_REJECTED
        out.rejected.append(group)

    def _static_reject_reason(self, group: SequenceGroup) -> str | None:
        cfg = self.config
        num_prompt = group.num_prompt_tokens
        if num_prompt > cfg.max_model_len:
            return (
                f"prompt has {num_prompt} tokens, more than max_model_len={cfg.max_model_len}; "
                "shorten the prompt or raise max_model_len"
            )
        if num_prompt == 0:
            return "prompt is empty; give at least one token"
        if group.sampling_params.n > cfg.max_num_seqs:
            return (
                f"n={group.sampling_params.n} sequences exceed max_num_seqs={cfg.max_num_seqs}; "
                "lower n or raise max_num_seqs"
            )
        return None

    def _num_running_seqs(self) -> int:
        """Sequences the running groups run per step: what they charge against max_num_seqs."""
        num_seqs = 0
        for g in self.running:
            num_seqs += g.max_num_running_seqs
        return num_seqs

    def _head_verdict(self, group: SequenceGroup, num_tokens: int, num_seqs: int, idle: bool):
        """Admission's rules for the group at the head of the waiting queue (under every policy,
        nothing is admitted past it): ("reject", reason), ("wait", None) or ("admit", its AllocPlan).
        num_tokens: tokens the step computes already (a mixed step's decodes, prompts admitted before
        it); num_seqs: sequences the batch runs already; idle: nothing runs or was admitted in this
        step, so memory that does not suffice now never will."""
        cfg = self.config
        reason = self._static_reject_reason(group)
        if reason is not None:
            return "reject", reason
        plan = self.memory.can_allocate(group)
        if plan.status is AllocStatus.NEVER:
            return "reject", plan.reason
        if plan.status is AllocStatus.LATER:
            if idle:  # nothing runs and nothing is swapped: no memory will ever be freed for it
                return "reject", (
                    "cannot fit even in an idle cache (memory held by shared prefixes); "
                    "release prefixes or give the KV cache more memory"
                )
            return "wait", None
        # A group alone in an otherwise empty batch is admitted even over the token budget: a
        # re-prefill of several diverged sequences after a recompute can exceed it, and must still
        # run (in a mixed step, running decodes count, so such a group waits for an empty batch).
        # A chunked prompt needs one token of the budget left: it takes what is left.
        if self._chunkable(group):
            if num_tokens >= cfg.max_num_batched_tokens:
                return "wait", None
        elif num_tokens and num_tokens + plan.num_new_tokens > cfg.max_num_batched_tokens:
            return "wait", None
        if num_seqs + group.max_num_running_seqs > cfg.max_num_seqs:
            return "wait", None
        return "admit", plan

    def _swap_in_blocked(self, group: SequenceGroup, num_seqs: int) -> bool:
        """Whether the first swapped-out group (in the policy's order) cannot come back in this step."""
        n = group.max_num_running_seqs
        return not self.memory.can_swap_in(group) or num_seqs + n > self.config.max_num_seqs

    def _admit(self, out: SchedulerOutput, now: float, num_tokens: int = 0) -> None:
        """Admit waiting groups from the head of the queue (the policy's order) into
        `out.scheduled_groups` while they fit.

        num_tokens: tokens the step already computes (a mixed step's decodes, one per sequence).
        Sets out.num_batched_tokens (num_tokens plus the admitted prompt tokens) and out.num_seqs
        (the admitted sequences)."""
        memory = self.memory
        num_seqs = self._num_running_seqs()
        num_admitted = 0
        waiting = self.waiting
        preempted = out.preempted  # empty in a separate step: admission runs before decoding
        max_total_len = self.config.max_batch_total_len
        longest_prompt = longest_output = 0
        while waiting:
            group = waiting[0]
            if preempted and group in preempted:
                break  # preempted in this very step (mixed): it waits at least one step (artifact)
            verdict, detail = self._head_verdict(
                group, num_tokens, num_seqs, idle=not self.running and not out.scheduled_groups
            )
            if verdict == "reject":
                waiting.popleft()
                self._reject(group, detail, now, out)
                continue
            if verdict == "wait":
                break
            plan = detail
            n = group.max_num_running_seqs
            if max_total_len is not None:
                # FasterTransformer's batches in the artifact: the padded batch's longest prompt plus
                # its longest output must stay within the limit. A request alone is admitted even over
                # it (the artifact would form an empty batch and stall).
                longest_prompt = max(longest_prompt, group.num_prompt_tokens)
                longest_output = max(longest_output, group.sampling_params.max_tokens)
                if num_admitted and longest_prompt + longest_output > max_total_len:
                    break
            waiting.popleft()
            out.blocks_to_copy.extend(memory.allocate(group, plan))
            num_new = plan.num_new_tokens
            chunk = None
            if self._chunkable(group) and num_tokens + num_new > self.config.max_num_batched_tokens:
                num_new = self.config.max_num_batched_tokens - num_tokens  # the first chunk
                chunk = num_new
                out.partial_prefills.append(group)
            for seq in group.seqs:
                if seq.status is _WAITING:
                    seq.status = _RUNNING
                    start = seq.num_computed_tokens
                    end = len(seq.token_ids) if chunk is None else start + chunk
                    out.prefill_ranges[seq.seq_id] = (start, end)
            if group.metrics.first_scheduled_time is None:
                group.metrics.first_scheduled_time = now
            if self.running and self._order(group) < self._order(self.running[-1]):
                self._running_sorted = False
            self.running.append(group)
            out.scheduled_groups.append(group)
            num_tokens += num_new
            num_seqs += n
            num_admitted += n
        out.num_batched_tokens = num_tokens
        out.num_seqs = num_admitted

    def _decode(self, out: SchedulerOutput, now: float) -> None:
        """Make room for each running sequence's next token, group by group in the policy's order. A
        group that cannot get its slots preempts the last running group (the latest arrival under
        FCFS), or itself if it is the last one. A prompt in progress (chunked prefill) needs no slot:
        its prompt's blocks are all allocated."""
        self._sort_running()
        memory = self.memory
        can_append_slots = memory.can_append_slots
        append_slot = memory.append_slot
        copies = out.blocks_to_copy
        queue = deque(self.running)
        kept = []
        num_seqs = 0
        chunked = self.config.enable_chunked_prefill
        while queue:
            group = queue.popleft()
            if chunked and self._in_prompt(group):
                kept.append(group)  # no token to append: its prompt's blocks are all allocated
                continue
            while not can_append_slots(group):
                if queue:
                    self._preempt(queue.pop(), out, now)  # the policy's last running group
                else:
                    self._preempt(group, out, now)
                    break
            else:
                for seq in group.seqs:
                    if seq.status is _RUNNING:
                        num_seqs += 1
                        copy = append_slot(seq)
                        if copy is not None:
                            copies.append(copy)
                kept.append(group)
        self.running = kept
        out.num_seqs = num_seqs

    def _preempt(
        self, group: SequenceGroup, out: SchedulerOutput, now: float, mode: str | None = None
    ) -> None:
        mode = mode or self.config.preemption_mode
        if mode == "auto":
            mode = "recompute" if group.max_num_running_seqs == 1 else "swap"
        elif mode == "cost":
            mode = self._cheaper_preemption(group)
        if mode == "swap" and not self.memory.can_swap_out(group):
            # vLLM v0 aborted the request here ("lack of CPU swap space"); recomputing loses nothing.
            mode = "recompute"
        if mode == "recompute":
            # The group's tokens so far become its prompt, prefilled again when it is readmitted.
            for seq in group.seqs:
                if seq.status is _RUNNING:
                    self.memory.free(seq)
                    seq.status = _WAITING
                    seq.num_computed_tokens = 0
            if not self.policy.by_arrival:
                self._insert_waiting(group)  # by the policy's order
            elif self.config.step_composition == "mixed":
                self._requeue_by_arrival(group)
            else:
                self.waiting.appendleft(group)
        else:
            mapping = self.memory.swap_out(group)
            out.blocks_to_swap_out.extend(mapping.items())
            self.num_swapped_blocks += len(mapping)
            for seq in group.seqs:
                if seq.status is _RUNNING:
                    seq.status = _SWAPPED
            self.swapped.append(group)
            group.metrics.num_swaps += 1
        group.metrics.preemption_times.append(now)
        self.num_preemptions += 1
        out.preempted.append(group)

    def _cheaper_preemption(self, group: SequenceGroup) -> str:
        """preemption_mode="cost": swap when moving the group's blocks out and back is predicted to
        take less time than prefilling its tokens again. A group of several sequences swaps as under
        "auto": recomputing would duplicate the blocks its sequences share."""
        if group.max_num_running_seqs > 1:
            return "swap"
        if not self.memory.can_swap_out(group):
            return "recompute"  # no swap space for it: nothing to weigh
        costs = self.preemption_costs
        if costs is None:
            raise RuntimeError(
                'preemption_mode="cost" needs Scheduler.preemption_costs (paged/preemption.py): the '
                "simulator and the real backend set it; set it, or choose auto, swap or recompute"
            )
        seq = group.seqs[0]
        num_blocks = len(set(self.memory.get_block_table(seq)))
        # Recomputing prefills again the tokens whose KV it drops (the newest is computed either way).
        swap = costs.swap_s(num_blocks) < costs.recompute_s(seq.num_computed_tokens)
        return "swap" if swap else "recompute"

    def _requeue_by_arrival(self, group: SequenceGroup) -> None:
        """Put a recompute-preempted group back in the waiting queue by arrival time, after the
        groups that arrived no later (the artifact re-sorts its waiting list by arrival, stably,
        every step). The queue is otherwise in arrival order, and such a group lands near its head."""
        waiting = self.waiting
        arrival = group.arrival_time
        i = 0
        for g in waiting:
            if g.arrival_time > arrival:
                break
            i += 1
        waiting.insert(i, group)

    def _swap_in(self, out: SchedulerOutput) -> None:
        self.swapped.sort(key=self._order)
        memory = self.memory
        num_seqs = self._num_running_seqs()
        while self.swapped:
            group = self.swapped[0]
            n = group.max_num_running_seqs
            if self._swap_in_blocked(group, num_seqs):
                break
            self.swapped.pop(0)
            out.blocks_to_swap_in.extend(memory.swap_in(group).items())
            # A prompt swapped out between its chunks has no token to append (as in _decode).
            in_prompt = self._in_prompt(group)
            for seq in group.seqs:
                if seq.status is _SWAPPED:
                    seq.status = _RUNNING
                    if in_prompt:
                        continue
                    copy = memory.append_slot(seq)
                    if copy is not None:
                        out.blocks_to_copy.append(copy)
            self.running.append(group)
            self._running_sorted = False
            num_seqs += n
            out.num_seqs += n

    # ------------------------------------------------------------------ after the step
    def postprocess(
        self, out: SchedulerOutput, outputs: list[list[Sample]], now: float
    ) -> list[SequenceGroup]:
        """Apply the step's samples: append tokens, fork and drop beams, finish sequences and
        groups, free their memory. Returns the groups finished in this step (rejected ones too)."""
        self.memory.end_step()
        finished = list(out.rejected)
        done = []
        partial = out.partial_prefills
        if out.is_prefill:  # the prompt groups are the last num_prefill_groups of the step
            groups = out.scheduled_groups
            for group in groups[len(groups) - out.num_prefill_groups :]:
                if not (partial and group in partial):
                    self.memory.mark_computed(group)
        for group, samples in zip(out.scheduled_groups, outputs):
            if partial and group in partial:
                # A chunk of its prompt ran: its KV is written up to the chunk's end. The logits of
                # the chunk's last token are not a sample: the prompt goes on next step.
                seq = group.seqs[0]
                seq.num_computed_tokens = out.prefill_ranges[seq.seq_id][1]
                continue
            for seq in group.seqs:
                if seq.status is _RUNNING:
                    seq.num_computed_tokens = len(seq.token_ids)
            if group.metrics.first_token_time is None:
                group.metrics.first_token_time = now
            if self._apply_samples(group, samples, now):
                done.append(group)
        if done:
            self._retire(done, finished, now)
        return finished

    def _retire(self, done: list[SequenceGroup], finished: list[SequenceGroup], now: float) -> None:
        """Groups whose every sequence finished in this step leave the running batch (into `finished`;
        under pad_batch they are held until the padded batch ends)."""
        hold = self.config.pad_batch
        for group in done:
            group.metrics.finished_time = now
        (self._held if hold else finished).extend(done)
        self.running = [g for g in self.running if g.metrics.finished_time is None]
        if hold and not self.running:  # the padded batch ends: every member finishes now
            for group in self._held:
                group.metrics.finished_time = now
            finished.extend(self._held)
            self._held = []
            self._padded_batch = None

    # ------------------------------------------------------------------ fast-forward (paged/fast_forward.py)
    @staticmethod
    def fast_forwardable(groups: list[SequenceGroup]) -> bool:
        """Whether these running groups decode plainly, one token per sequence: no beam search (its
        steps fork and drop sequences: every one is an event), no EOS to watch for, prompt done (and
        not being prefilled again in chunks after a recompute preemption)."""
        for g in groups:
            params = g.sampling_params
            if params.use_beam_search or g.metrics.first_token_time is None:
                return False
            if Scheduler._in_prompt(g):  # a recomputed prompt in chunks: its first token is old
                return False
            if g.eos_token_id is not None and not params.ignore_eos:
                return False
        return True

    def next_step(self, num_seqs: int | None = None) -> str | None:
        """Whether the next `schedule()` is certain to decode every running group one token per
        sequence and swap nothing in (provided the free memory covers the appends: the fast-forward
        checks that), and whether that lasts, as long as nothing finishes and free memory only
        shrinks. num_seqs: the running sequences, if the caller knows them.

        - None: no (pending fork copies, a swap-in or a rejection to make, nothing running, a
          waiting head under the prefix cache);
        - "until_arrival": yes, until a request arrives (the waiting queue is empty);
        - "steady": yes, arrivals included (they queue behind a head that must wait, or admission
          is not tried at all: swapped groups wait, or a static batch is running);
        - "admit": the step admits the queue's head too: a prompt step that reads no running
          sequence (separate), or the decodes plus prompts (mixed).

        It asks the very rules `schedule()` applies (`_head_verdict`, `_swap_in_blocked`); what it
        adds is why their answer lasts: a head that must wait (LATER, the token and sequence budgets)
        keeps waiting while free memory only shrinks and the running batch is unchanged, and so does
        a swapped group that cannot come back. tests/test_fast_forward.py checks the outcome against
        stepping on random workloads."""
        if not self.running or self._pending_copies:
            return None
        self._sort_running()  # as _decode would, first thing
        if self.swapped:
            # Swap-in is tried every step (no step of a run swaps out); it must fail, and then it
            # keeps failing: the swapped group needs a fixed number of free blocks.
            self.swapped.sort(key=self._order)  # as _swap_in would
            if not self._swap_in_blocked(self.swapped[0], self._num_running_seqs()):
                return None
            return "steady"  # admission waits while any group is swapped out
        if self.config.batching == "request":
            return "steady"  # a static batch admits nothing until it ends
        if not self.waiting:
            return "until_arrival"
        # The head of the queue: _admit's first iteration.
        if num_seqs is None:
            num_seqs = self._num_running_seqs()
        num_tokens = num_seqs if self.config.step_composition == "mixed" else 0  # the decodes
        head = self.waiting[0]
        if self.policy.preempts and self._order(head) < self._order(self.running[-1]):
            return None  # it may preempt running groups (_preempt_for_priority)
        verdict, _ = self._head_verdict(head, num_tokens, num_seqs, idle=False)
        if verdict == "wait" and getattr(self.memory, "prefix_cache", None) is not None:
            # A block the batch fills may be one of the head's prompt blocks (a prefix-cache hit),
            # lowering what it needs: its verdict is asked again at every step.
            return None
        if verdict == "wait" and not self.policy.by_arrival:
            return "until_arrival"  # an arrival may go to the head of the queue
        return {"wait": "steady", "admit": "admit"}.get(verdict)

    def finish_run(self, stopped: list[tuple[SequenceGroup, Sequence]], now: float) -> list[SequenceGroup]:
        """The end of a fast-forwarded run (paged/fast_forward.py): the sequences that reached their
        length limit with its last token are stopped and freed, in the order post-processing stops
        them; groups with no sequence left running finish. Returns the finished groups."""
        done = []
        for group, seq in stopped:
            if not self._check_stop(group, seq):
                raise AssertionError(f"{seq} was fast-forwarded to a stop it does not reach")
            if (not done or done[-1] is not group) and all(s.status in FINISHED for s in group.seqs):
                done.append(group)
        finished: list[SequenceGroup] = []
        if done:
            self._retire(done, finished, now)
        return finished

    def _apply_samples(self, group: SequenceGroup, samples: list[Sample], now: float) -> bool:
        """Returns whether the group is now finished."""
        seqs = group.seqs
        if len(seqs) == 1 and len(samples) == 1:
            seq = seqs[0]
            if seq.status is _RUNNING and samples[0].parent_seq_id == seq.seq_id:
                seq.append_token(samples[0].token_id, samples[0].logprob, now, samples[0].top)
                if self._check_stop(group, seq):
                    return True
                return False
        by_parent: dict[int, list[Sample]] = {}
        for s in samples:
            by_parent.setdefault(s.parent_seq_id, []).append(s)
        parents = [s for s in seqs if s.status is _RUNNING]
        for parent in parents:
            if parent.seq_id not in by_parent:  # a beam that no candidate continues: freed first,
                parent.status = SequenceStatus.FINISHED_ABORTED  # so its memory can serve a fork
                self.memory.free(parent)
                seqs.remove(parent)
        grown = []
        for parent in parents:
            children = by_parent.get(parent.seq_id)
            if not children:
                continue
            for sample in children[:-1]:
                child = parent.fork(next_seq_id())
                child.append_token(sample.token_id, sample.logprob, now, sample.top)
                self._pending_copies.extend(self.memory.fork(parent, child))
                seqs.append(child)
                grown.append(child)
            parent.append_token(children[-1].token_id, children[-1].logprob, now, children[-1].top)
            grown.append(parent)
        for seq in grown:
            self._check_stop(group, seq)
        return all(s.status in FINISHED for s in seqs)

    def _check_stop(self, group: SequenceGroup, seq) -> bool:
        params = group.sampling_params
        if (
            not params.ignore_eos
            and group.eos_token_id is not None
            and seq.token_ids[-1] == group.eos_token_id
        ):
            seq.status = SequenceStatus.FINISHED_STOPPED
        elif (
            len(seq.token_ids) - seq.num_prompt_tokens >= params.max_tokens
            or len(seq.token_ids) >= self.config.max_model_len
        ):
            seq.status = SequenceStatus.FINISHED_LENGTH_CAPPED
        else:
            return False
        self.memory.free(seq)
        return True
