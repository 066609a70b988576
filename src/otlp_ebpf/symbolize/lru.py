"""A dictionary with a cap: the least recently used entry goes first, and evictions are counted.

A system-wide run meets an endless stream of processes and binaries (every build makes new
ones), so every cache kept per process, per file or per build-id is one of these: memory is
bounded by the cap, and an evicted entry is only recomputed if it is needed again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most `cap` entries; `on_evict(key, value)` is told of each one dropped for room."""

    def __init__(self, cap: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if cap < 1:
            raise ValueError("an LRU cache needs room for one entry at least")
        self.cap = cap
        self.evicted = 0
        self._on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def __getitem__(self, key: K) -> V:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def get(self, key: K, default: V | None = None) -> V | None:
        if key not in self._data:
            return default
        return self[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.cap:
            old_key, old_value = self._data.popitem(last=False)
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def evict_oldest(self) -> None:
        """Drop the least recently used entry (counted, and told to `on_evict`)."""
        if self._data:
            old_key, old_value = self._data.popitem(last=False)
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def trim(self, size: int) -> int:
        """Evict the least recently used entries until at most `size` are left (each counted
        and told to `on_evict`, as an eviction for room); returns how many went."""
        dropped = 0
        while len(self._data) > max(size, 0):
            self.evict_oldest()
            dropped += 1
        return dropped

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def values(self) -> list[V]:
        return list(self._data.values())

    def clear(self) -> None:
        self._data.clear()
