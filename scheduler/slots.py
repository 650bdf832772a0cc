"""State-slot accounting: which rows of a device's state pools are free.

The tensors live in ``cells``/``batchmaker``; this module only hands out row
numbers. Two rows of every pool are reserved so that graphs never need special
cases in the hot loop: ``ZERO_SLOT`` is all zeros forever (the initial state of
a first node, or an absent tree child), and ``SCRATCH_SLOT`` absorbs the writes
of padding rows in the padded baseline.
"""

from __future__ import annotations

ZERO_SLOT = 0
SCRATCH_SLOT = 1
NUM_RESERVED_SLOTS = 2


class SlotPool:
    """A LIFO free list of row numbers ``[NUM_RESERVED_SLOTS, NUM_RESERVED_SLOTS + capacity)``.

    LIFO keeps recently used rows hot in cache. Allocation is all-or-nothing so
    a request never holds half of what it needs.
    """

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool {name!r}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._free = list(range(NUM_RESERVED_SLOTS + capacity - 1, NUM_RESERVED_SLOTS - 1, -1))
        self._used: set[int] = set()

    @property
    def num_rows(self) -> int:
        """Rows the backing tensor needs, reserved rows included."""
        return NUM_RESERVED_SLOTS + self.capacity

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise SlotsExhaustedError(self.name, n, len(self._free))
        slots = [self._free.pop() for _ in range(n)]
        self._used.update(slots)
        return slots

    def free(self, slots: list[int]) -> None:
        for s in slots:
            if s not in self._used:
                raise ValueError(f"pool {self.name!r}: slot {s} freed twice or never allocated")
            self._used.remove(s)
            self._free.append(s)


class SlotsExhaustedError(RuntimeError):
    """Raised when a pool cannot satisfy an allocation; the admission limit should prevent it."""

    def __init__(self, pool: str, wanted: int, free: int) -> None:
        super().__init__(f"state pool {pool!r} has {free} free slots, request needs {wanted}")
        self.pool = pool
        self.wanted = wanted
        self.free = free
