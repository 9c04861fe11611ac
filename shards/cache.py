"""A dict with a size bound, for the node's caches of rows it reads often."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class BoundedCache(OrderedDict):
    """A dict that forgets its oldest entries past a size bound."""

    def __init__(self, entries_max: int) -> None:
        super().__init__()
        self.entries_max = entries_max

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.entries_max:
            self.popitem(last=False)
