"""A binary buddy allocator over a contiguous arena (the paper's Orca baselines, section 6.1).

The arena holds `num_units` units (KV blocks of block_size token slots). Chunks are 2^k units, aligned
to their size; a chunk's buddy is the chunk at `address XOR size`. Allocation splits the smallest free
chunk that is large enough; freeing merges a chunk with its buddy, repeatedly, while the buddy is free.
An arena that is not a power of two is covered by aligned power-of-two pieces (largest first), whose
buddies outside the arena never exist, so they never merge past it.
"""

from __future__ import annotations


def order_for(units: int) -> int:
    """The smallest k with 2^k >= units."""
    return max(0, (units - 1).bit_length())


class BuddyAllocator:
    def __init__(self, num_units: int, max_order: int) -> None:
        if num_units < 1:
            raise ValueError("the arena needs at least one unit")
        self.num_units = num_units
        self.max_order = max_order
        self.free_lists: list[set[int]] = [set() for _ in range(max_order + 1)]
        self.allocated: dict[int, int] = {}  # address -> order
        address = 0
        for order in range(max_order, -1, -1):  # cover the arena with aligned pieces
            size = 1 << order
            while address + size <= num_units and address % size == 0:
                self.free_lists[order].add(address)
                address += size
        self.num_free = num_units

    def can_allocate(self, order: int) -> bool:
        return order <= self.max_order and any(self.free_lists[k] for k in range(order, self.max_order + 1))

    def allocate(self, order: int) -> int | None:
        """Address of a free chunk of 2^order units, or None when none can be made."""
        if order > self.max_order:
            return None
        k = order
        while k <= self.max_order and not self.free_lists[k]:
            k += 1
        if k > self.max_order:
            return None
        address = min(self.free_lists[k])  # lowest address first: deterministic, compact
        self.free_lists[k].discard(address)
        while k > order:  # split, keeping the lower half
            k -= 1
            self.free_lists[k].add(address + (1 << k))
        self.allocated[address] = order
        self.num_free -= 1 << order
        return address

    def free(self, address: int) -> None:
        order = self.allocated.pop(address)
        self.num_free += 1 << order
        while order < self.max_order:
            buddy = address ^ (1 << order)
            if buddy not in self.free_lists[order]:
                break
            self.free_lists[order].discard(buddy)
            address = min(address, buddy)
            order += 1
        self.free_lists[order].add(address)

    def free_chunks(self) -> list[tuple[int, int]]:
        """(address, order) of every free chunk."""
        return [(a, k) for k, addrs in enumerate(self.free_lists) for a in addrs]
