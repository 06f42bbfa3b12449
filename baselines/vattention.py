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
- page mapping is priced by slots, vAttention's reqIds: each request runs in a slot whose virtual
  tensors keep their mapped pages after the request leaves (deferred reclamation), and a new request
  takes the idle slot with the most mapped pages. A request maps a page per tensor only when its
  table grows past its slot's mapped pages. When the physical pages (blocks in use, counted once,
  plus mapped pages no table uses) would exceed the pool, pages are unmapped, first from idle slots
  (fewest pages first), then from running slots' tails past their tables. `take_page_ops` hands the
  step's (maps, unmaps) to the simulated executor, which prices them (`CostModel.page_map_ms`: the
  hardware preset's `page_map_us`, `page_unmap_us`), hidden behind the step's compute or not
  (`system.page_map_overlap`). Sequences of one group each have a slot, as vAttention's per-request
  tensors do, so a fork maps its copy (its pages priced, its memory counted once: the first point);
- with mapping priced, decode steps are stepped one by one (no fast-forward): each step's count is
  its own.
"""

from __future__ import annotations

from paged.block_manager import BlockManager
from paged.config import CacheConfig
from paged.memory import AllocPlan, AllocStatus
from paged.presets import ModelSpec
from paged.sequence import Sequence, SequenceGroup, SequenceStatus

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
        # Set when the simulator prices mapping (harness/simulate.py): decode steps are then stepped.
        self.count_maps = False
        # running sequence -> [pages mapped in its slot, its table's length when last seen], per tensor
        self.slots: dict[int, list[int]] = {}
        self.idle_slots: list[int] = []  # pages still mapped in each idle slot
        self.num_idle = 0  # their sum
        self.num_spare = 0  # running slots' pages past their tables
        self.num_maps = self.num_unmaps = 0  # since the last take_page_ops

    @property
    def num_mapped(self) -> int:
        """Pages mapped in every slot, per tensor (a block shared by sequences of one group is mapped
        in each one's slot)."""
        return self.num_idle + sum(mapped for mapped, _ in self.slots.values())

    def _grow(self, seq: Sequence) -> None:
        """Bring the sequence's slot up to its table: a new sequence first takes the idle slot with
        the most pages (or a fresh one), and pages past the slot's are mapped."""
        need = len(self.block_tables[seq.seq_id])
        slot = self.slots.get(seq.seq_id)
        if slot is None:
            idle = self.idle_slots
            mapped = idle.pop(max(range(len(idle)), key=idle.__getitem__)) if idle else 0
            self.num_idle -= mapped
            slot = self.slots[seq.seq_id] = [mapped, mapped]  # no spare counted yet
        mapped, seen = slot
        if need > mapped:
            self.num_maps += need - mapped
            mapped = need
        self.num_spare += (mapped - need) - (slot[0] - seen)
        slot[0], slot[1] = mapped, need
        # Physical pages: the blocks in use (once, however many slots map them) plus every mapped
        # page no table uses; past the pool, unmap.
        self._reclaim(self.gpu.num_used + self.num_idle + self.num_spare - self.num_gpu_blocks)

    def _reclaim(self, excess: int) -> None:
        """Unmap `excess` pages that no table uses: idle slots' first, the smallest slot first, then
        running slots' pages past their tables."""
        if excess <= 0:
            return
        idle = self.idle_slots
        idle.sort(reverse=True)
        while excess > 0 and idle:
            take = min(excess, idle[-1])
            idle[-1] -= take
            if not idle[-1]:
                idle.pop()
            excess -= take
            self.num_idle -= take
            self.num_unmaps += take
        for slot in self.slots.values():
            if excess <= 0:
                break
            take = min(excess, slot[0] - slot[1])
            if take > 0:
                slot[0] -= take
                excess -= take
                self.num_spare -= take
                self.num_unmaps += take

    def _release(self, seq: Sequence) -> None:
        """The sequence leaves the device (finished, aborted, swapped out or recomputed): its slot goes
        idle with its pages still mapped."""
        slot = self.slots.pop(seq.seq_id, None)
        if slot is not None:
            self.num_spare -= slot[0] - slot[1]
            if slot[0]:
                self.idle_slots.append(slot[0])
                self.num_idle += slot[0]

    def take_page_ops(self) -> tuple[int, int]:
        """(pages mapped, pages unmapped) per tensor since the last call."""
        ops = self.num_maps, self.num_unmaps
        self.num_maps = self.num_unmaps = 0
        return ops

    def allocate(self, group: SequenceGroup, plan: AllocPlan) -> list[tuple[int, int]]:
        copies = super().allocate(group, plan)
        for seq in group.get_seqs(SequenceStatus.WAITING):
            self._grow(seq)
        return copies

    def append_slot(self, seq: Sequence) -> tuple[int, int] | None:
        copy = super().append_slot(seq)
        if len(self.block_tables[seq.seq_id]) != self.slots[seq.seq_id][1]:
            self._grow(seq)
        return copy

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        copies = super().fork(parent, child)
        self._grow(child)
        return copies

    def free(self, seq: Sequence) -> None:
        if seq.seq_id not in self.swapped_seq_ids:
            self._release(seq)
        super().free(seq)

    def swap_out(self, group: SequenceGroup) -> dict[int, int]:
        for seq in group.get_seqs(SequenceStatus.RUNNING):
            self._release(seq)
        return super().swap_out(group)

    def swap_in(self, group: SequenceGroup) -> dict[int, int]:
        seqs = group.get_seqs(SequenceStatus.SWAPPED)
        mapping = super().swap_in(group)
        for seq in seqs:
            self._grow(seq)
        return mapping

    def can_allocate(self, group: SequenceGroup) -> AllocPlan:
        if group.prefix is not None:
            return AllocPlan(
                AllocStatus.NEVER,
                reason=(
                    "vattention does not share an explicit prefix between requests (its KV lives in "
                    "per-request virtual tensors): send the full prompt, or use a paged system"
                ),
            )
        return super().can_allocate(group)

    def decode_run(self, seqs, base):
        # A fast-forwarded run would allocate pages between the executor's calls, uncounted.
        return None if self.count_maps else super().decode_run(seqs, base)
