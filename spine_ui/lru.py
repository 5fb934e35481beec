"""A small thread-safe least-recently-used map, shared by the analysis cache and the web app's stores."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries (at least 1); with ``max_weight``, also evicts the oldest entries while the
    summed ``weight(value)`` exceeds it, but never the newest one."""

    def __init__(self, size: int, max_weight: int | None = None,
                 weight: Callable[[V], int] = lambda _value: 0) -> None:
        self.size = max(1, int(size))
        self.max_weight = max_weight
        self._weight = weight
        self._items: OrderedDict[K, V] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: K | None) -> V | None:
        if key is None:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._items:
                self._total -= self._weight(self._items[key])
            self._items[key] = value
            self._total += self._weight(value)
            self._items.move_to_end(key)
            while len(self._items) > self.size or (
                    self.max_weight is not None and self._total > self.max_weight and len(self._items) > 1):
                _, old = self._items.popitem(last=False)
                self._total -= self._weight(old)

    def __len__(self) -> int:
        return len(self._items)
