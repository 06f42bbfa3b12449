"""A host-memory tier for the prefix cache (LMCache, Mooncake): a cached block the device cache evicts
is copied to a bounded pool of host blocks instead of being lost; a later prompt that would have hit it
gets it back with one host-to-device copy instead of recomputing its tokens.

Host blocks are numbered after the swap space's (`first_block`), so the executor moves them with the
same swap operations (paged/executor.py): an offload is a swap-out, a restore a swap-in. The tier keeps
least recently used entries first; an entry being restored in the current step is never overwritten in
that step (the executor applies every swap-out before any swap-in).
"""

from __future__ import annotations

from collections import OrderedDict


class HostTier:
    """hash -> (host block, tokens), least recently used first, over `num_blocks` host blocks."""

    def __init__(self, num_blocks: int, first_block: int) -> None:
        self.entries: OrderedDict[int, tuple[int, tuple[int, ...]]] = OrderedDict()
        self.free: list[int] = list(range(first_block + num_blocks - 1, first_block - 1, -1))
        # Host blocks a restore reads, or an offload writes, in the step being scheduled: neither may
        # be overwritten by another offload of that step (one destination per swap-out).
        self.pinned: set[int] = set()
        self.num_offloads = 0
        self.num_restores = 0

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        entry = self.entries.get(block_hash)
        if entry is None or entry[1] != token_ids:
            return None
        return entry[0]

    def restore(self, block_hash: int) -> int:
        """The host block to copy back for a hit; it stays in the tier, most recently used."""
        self.entries.move_to_end(block_hash)
        host_block = self.entries[block_hash][0]
        self.pinned.add(host_block)
        self.num_restores += 1
        return host_block

    def offload(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        """A host block to copy an evicted device block into, or None: already held, or every host
        block is being restored in this step."""
        if block_hash in self.entries:
            self.entries.move_to_end(block_hash)
            return None
        if self.free:
            host_block = self.free.pop()
        else:
            victim = next((h for h, (b, _) in self.entries.items() if b not in self.pinned), None)
            if victim is None:
                return None
            host_block = self.entries.pop(victim)[0]
        self.entries[block_hash] = (host_block, token_ids)
        self.pinned.add(host_block)
        self.num_offloads += 1
        return host_block

    def end_step(self) -> None:
        self.pinned.clear()
