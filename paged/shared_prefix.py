"""Explicit shared prefixes in the paged block manager (paper section 4.4): every rule in one place.

A `SharedPrefix` (paged/sequence.py) is a system prompt or few-shot examples that many requests start
with. The first request admitted with it computes it, and the prefix then keeps one reference on each
of the blocks holding it (`prefix.block_ids`) until it is released. A later request maps the prefix's
full blocks into its own block table and copies the partial last block (copy-on-write), so its prompt
phase computes only its own tokens.

`SharedPrefixes` owns the resident prefixes and answers, for the `BlockManager`, every question that
involves them:

- admission: whether a prompt starts with its prefix (`reject_reason`), which prefix blocks a group
  may take (`offer`), how many blocks prefixes pin that a group cannot use (`num_pinned_blocks`),
  and the first request's blocks becoming the prefix's (`adopt`);
- the prefix's prefill having run (`mark_computed`), which makes its partial last block copyable;
- swap-in: which prefix blocks a swapped group gets back without a copy (`restorable_blocks`);
- Figure 2 accounting: the prefixes' partial last blocks that no sequence holds (`unshared_tails`);
- `release`: the prefix's own references dropped.

Its state lives on the `SharedPrefix` objects (block_ids, computed) and in the `resident` list, which
the `BlockManager` exposes as `prefixes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from paged.block import BlockAllocator
from paged.sequence import SequenceGroup, SharedPrefix


@dataclass(frozen=True)
class PrefixOffer:
    """What a group admitted now may take from its resident prefix, block index by block index.

    `full_blocks[i]` is mapped as it is into the group's tables at logical block i: a full block is
    never written again, so sharing it needs no copy (section 4.4). It is offered even before the
    prefix's prefill has run: that prefill and this group's run in the same step, and every token's
    KV of a layer is written before any attention of that layer reads the cache (ARCHITECTURE.md).
    `partial_block` (logical block len(full_blocks)) holds the prefix's last `length % block_size`
    tokens; the group copies it and writes its own tokens after them (copy-on-write). It is offered
    only once the prefix is computed, since the copy is made before the step's forward pass.
    """

    full_blocks: list[int]
    partial_block: int | None
    length: int  # tokens in the prefix


class SharedPrefixes:
    """The resident shared prefixes of one device pool, and what they mean for its block tables."""

    def __init__(self, gpu: BlockAllocator, block_size: int) -> None:
        self.gpu = gpu
        self.block_size = block_size
        self.resident: list[SharedPrefix] = []

    # ------------------------------------------------------------------ admission
    @staticmethod
    def reject_reason(group: SequenceGroup) -> str | None:
        """Why the group can never be admitted with its prefix, or None."""
        prefix = group.prefix
        if prefix is not None and group.prompt_token_ids[: len(prefix)] != prefix.token_ids:
            return f"prompt does not start with its shared prefix {prefix.prefix_id!r}"
        return None

    def num_pinned_blocks(self, group: SequenceGroup) -> int:
        """Device blocks resident prefixes hold that this group cannot use as its own: every block of
        the other prefixes, and the partial last block of its own (which it copies)."""
        pinned = 0
        for prefix in self.resident:
            if prefix is not group.prefix:
                pinned += len(prefix.block_ids)
            elif len(prefix) % self.block_size:
                pinned += 1
        return pinned

    def offer(self, group: SequenceGroup) -> PrefixOffer | None:
        """The prefix blocks the group may share at admission; None if it has no resident prefix."""
        prefix = group.prefix
        if prefix is None or prefix.block_ids is None:
            return None
        num_full = len(prefix) // self.block_size
        partial = None
        if prefix.computed and len(prefix) % self.block_size:
            partial = prefix.block_ids[num_full]
        return PrefixOffer(prefix.block_ids[:num_full], partial, len(prefix))

    def adopt(self, group: SequenceGroup, table: list[int]) -> None:
        """After allocation: if the group's prefix is not resident, the group is its first request
        and computes it; the prefix keeps the blocks of `table` (the first sequence's) holding it."""
        prefix = group.prefix
        if prefix is None or prefix.block_ids is not None:
            return
        prefix.block_ids = table[: -(-len(prefix) // self.block_size)]
        for b in prefix.block_ids:
            self.gpu.incref(b)
        prefix.computed = False
        self.resident.append(prefix)

    @staticmethod
    def mark_computed(group: SequenceGroup) -> None:
        """The group's prompt phase ran: its resident prefix's blocks hold real KV now."""
        if group.prefix is not None and group.prefix.block_ids is not None:
            group.prefix.computed = True

    # ------------------------------------------------------------------ swapping (section 4.5)
    def restorable_blocks(self, group: SequenceGroup) -> list[int]:
        """The full blocks of the group's resident, computed prefix: swapping the group in maps them
        back into its tables instead of copying them from host memory, so it shares them again."""
        prefix = group.prefix
        if prefix is None or prefix.block_ids is None or not prefix.computed:
            return []
        return prefix.block_ids[: len(prefix) // self.block_size]

    # ------------------------------------------------------------------ accounting (Figure 2)
    def unshared_tails(self) -> list[tuple[int, int]]:
        """(block, tokens) of each resident prefix's partial last block that the prefix alone holds.

        Such a block holds the prefix's tail and nothing else will ever be written into it. When a
        running sequence holds it too (the request that computed the prefix), the sequence's own
        accounting counts it, as its last block or as a full one.
        """
        bs = self.block_size
        ref_counts = self.gpu.ref_counts
        tails = []
        for prefix in self.resident:
            tail = len(prefix) % bs
            block = prefix.block_ids[-1]
            if tail and ref_counts[block] == 1:
                tails.append((block, tail))
        return tails

    # ------------------------------------------------------------------ release
    def release(self, prefix: SharedPrefix) -> None:
        """Drop the prefix's own references; its blocks live on while requests use them."""
        if prefix.block_ids is None:
            return
        for b in reversed(prefix.block_ids):
            self.gpu.decref(b)
        prefix.block_ids = None
        prefix.computed = False
        self.resident.remove(prefix)
