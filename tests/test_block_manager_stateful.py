"""A hypothesis state machine over the BlockManager alone: allocate, append, fork, free, swap out,
swap in and recompute-preempt in any order the guards allow, not only the orders the scheduler makes.

After every operation: free + used = total on both pools, each block's count equals the tables holding
it, and every live sequence reads back its own history from a shadow KV store (so swap out then in
restores every table's contents, and copy-on-write protects shared blocks). An append never writes
into a block whose count is above one.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from paged import AllocStatus, BlockManager, CacheConfig, SequenceStatus
from paged.sequence import next_seq_id
from tests.conftest import make_group
from tests.shadow import check_contents, check_invariants

RUNNING, SWAPPED, WAITING = SequenceStatus.RUNNING, SequenceStatus.SWAPPED, SequenceStatus.WAITING


class BlockManagerMachine(RuleBasedStateMachine):
    @initialize(
        block_size=st.sampled_from([1, 2, 4]),
        num_gpu_blocks=st.integers(4, 24),
        num_cpu_blocks=st.integers(0, 24),
        caching=st.booleans(),
    )
    def setup(self, block_size, num_gpu_blocks, num_cpu_blocks, caching):
        cache = CacheConfig(
            num_gpu_blocks=num_gpu_blocks,
            block_size=block_size,
            num_cpu_blocks=num_cpu_blocks,
            watermark=0.0,
            enable_prefix_caching=caching,
        )
        self.m = BlockManager(cache, max_model_len=10_000)
        self.device: dict = {}
        self.host: dict = {}
        self.groups = []
        self.count = 0

    # ---------------------------------------------------------------- shadow KV
    def _copy(self, pairs, src_store, dst_store):
        for src, dst in pairs:
            for off in range(self.m.block_size):
                value = src_store.get((src, off))
                if value is None:
                    dst_store.pop((dst, off), None)
                else:
                    dst_store[(dst, off)] = value

    def _write(self, seq, start):
        bs = self.m.block_size
        table = self.m.block_tables[seq.seq_id]
        for p in range(start, len(seq.token_ids)):
            self.device[(table[p // bs], p % bs)] = tuple(seq.token_ids[: p + 1])
        seq.num_computed_tokens = len(seq.token_ids)

    def _sample(self, seq):
        seq.token_ids.append((seq.seq_id * 7 + len(seq.token_ids)) % 5)

    def _prefill(self, group):
        plan = self.m.can_allocate(group)
        if plan.status is not AllocStatus.OK:
            return False
        self._copy(self.m.allocate(group, plan), self.device, self.device)
        waiting = group.get_seqs(WAITING)
        for seq in waiting:
            seq.status = RUNNING
        for seq in waiting:
            self._write(seq, seq.num_computed_tokens)
        for seq in waiting:
            self._sample(seq)
        return True

    def _groups(self, status):
        return [g for g in self.groups if g.seqs and g.seqs[0].status is status]

    # ---------------------------------------------------------------- operations
    @rule(prompt=st.lists(st.integers(0, 2), min_size=1, max_size=12), n=st.integers(1, 3))
    def allocate(self, prompt, n):
        group = make_group(self.count, prompt, max_tokens=64, n=n)
        self.count += 1
        if self._prefill(group):
            self.groups.append(group)

    @precondition(lambda self: self._groups(RUNNING))
    @rule(data=st.data())
    def append(self, data):
        group = data.draw(st.sampled_from(self._groups(RUNNING)))
        if not self.m.can_append_slots(group):
            return
        for seq in group.seqs:
            copy = self.m.append_slot(seq)
            if copy is not None:
                self._copy([copy], self.device, self.device)
            last = self.m.block_tables[seq.seq_id][-1]
            assert self.m.gpu.ref_counts[last] == 1, "append writes into a shared block"
        for seq in group.seqs:
            self._write(seq, len(seq.token_ids) - 1)
            self._sample(seq)

    @precondition(lambda self: self._groups(RUNNING))
    @rule(data=st.data())
    def fork(self, data):
        group = data.draw(st.sampled_from(self._groups(RUNNING)))
        parent = data.draw(st.sampled_from(group.seqs))
        child = parent.fork(next_seq_id())
        child.token_ids[-1] = (child.token_ids[-1] + 1) % 5  # the child sampled another token
        self.m.fork(parent, child)
        group.seqs.append(child)

    @precondition(lambda self: any(len(g.seqs) > 1 for g in self._groups(RUNNING)))
    @rule(data=st.data())
    def drop_a_beam(self, data):
        group = data.draw(st.sampled_from([g for g in self._groups(RUNNING) if len(g.seqs) > 1]))
        seq = data.draw(st.sampled_from(group.seqs))
        self.m.free(seq)
        group.seqs.remove(seq)

    @precondition(lambda self: self.groups)
    @rule(data=st.data())
    def finish(self, data):
        group = data.draw(st.sampled_from(self.groups))
        for seq in group.seqs:
            self.m.free(seq)
        self.groups.remove(group)

    @precondition(lambda self: self._groups(RUNNING))
    @rule(data=st.data())
    def swap_out(self, data):
        group = data.draw(st.sampled_from(self._groups(RUNNING)))
        if not self.m.can_swap_out(group):
            return
        self._copy(self.m.swap_out(group).items(), self.device, self.host)
        for seq in group.seqs:
            seq.status = SWAPPED

    @precondition(lambda self: self._groups(SWAPPED))
    @rule(data=st.data())
    def swap_in(self, data):
        group = data.draw(st.sampled_from(self._groups(SWAPPED)))
        if not self.m.can_swap_in(group):
            return
        self._copy(self.m.swap_in(group).items(), self.host, self.device)
        for seq in group.seqs:
            seq.status = RUNNING

    @precondition(lambda self: self._groups(RUNNING))
    @rule(data=st.data())
    def preempt_by_recompute(self, data):
        group = data.draw(st.sampled_from(self._groups(RUNNING)))
        for seq in group.seqs:
            self.m.free(seq)
            seq.status = WAITING
            seq.num_computed_tokens = 0

    @precondition(lambda self: self._groups(WAITING))
    @rule(data=st.data())
    def readmit(self, data):
        self._prefill(data.draw(st.sampled_from(self._groups(WAITING))))

    # ---------------------------------------------------------------- checks
    @invariant()
    def books_are_exact(self):
        if hasattr(self, "m"):
            check_invariants(self.m)

    @invariant()
    def every_sequence_reads_its_own_history(self):
        if hasattr(self, "m"):
            check_contents(self.m, self, self.groups)


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
