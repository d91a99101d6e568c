"""Heavy analytics (the catalogue map's t-SNE, k-means clusters) computed once per catalogue generation:
a result is kept until the model's store moves on (an edit, a rebuild, a reload), and concurrent requests for
the same result wait for one computation instead of starting their own."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from api.loaded import ServedModel

MAX_ENTRIES = 32  # results kept in all (each at most a few thousand points)


@dataclass(frozen=True)
class Computed:
    value: Any
    generation: int
    computed_at: float  # unix seconds: equal on two answers means the second came from the cache


class AnalyticsCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Computed] = OrderedDict()
        self._computing: dict[Hashable, threading.Lock] = {}

    def get(self, model: ServedModel, what: Hashable, compute: Callable[[], Any]) -> Computed:
        """``what`` of ``model`` at its store's current generation, computed by ``compute`` at most once
        while that generation lasts. Blocking: call it from a worker thread."""
        store = model.require()
        generation = store.generation()
        key = (model.name, id(store), model.index_info.get("built_at"), generation, what)
        with self._lock:
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:  # one computation per key; the others wait for it and read its result
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    return found
            try:
                result = Computed(compute(), generation, round(time.time(), 6))
            except BaseException:
                with self._lock:
                    self._computing.pop(key, None)
                raise
            with self._lock:  # stored before its lock goes, so a later request finds it
                self._entries[key] = result
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                self._computing.pop(key, None)
        return result
