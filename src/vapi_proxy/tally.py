"""Counters components keep with plain `+=`, which report each increase to a listener.

Auth and webhook code count in `Tally` maps and int fields of `Tallies` dataclasses and need no
metrics library; metrics.py listens and records every event the moment it happens, in the
worker where it happens. Reading the counters at scrape time instead meant that, with several
workers, a scrape saw only what the worker answering it had folded in, and a replaced worker
took its unread counts with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

Listener = Callable[[str, str, int], None]
"""Called as `listener(field, key, increase)`; `key` is "" for an int field."""


def fan_out(*listeners: Listener) -> Listener:
    """One listener that reports each increase to every one of `listeners`, in order."""

    def every(field: str, key: str, increase: int) -> None:
        for listener in listeners:
            listener(field, key, increase)

    return every


class Tally(Counter[str]):
    """A `collections.Counter` of events by key that reports every increase."""

    listener: Listener | None = None
    field_name: str = ""

    def __setitem__(self, key: str, value: int) -> None:
        listener = self.listener
        if listener is None:
            super().__setitem__(key, value)
            return
        increase = value - self.get(key, 0)
        super().__setitem__(key, value)
        if increase > 0:
            listener(self.field_name, key, increase)


class Tallies:
    """Base of dataclasses of counters: int fields and `Tally` fields report increases once
    `listen()` is called."""

    _listener: Listener | None = None

    def listen(self, listener: Listener) -> None:
        """Report every increase to `listener` (replacing any listener set before)."""
        object.__setattr__(self, "_listener", listener)
        for name, value in vars(self).items():
            if isinstance(value, Tally):
                value.listener = listener
                value.field_name = name

    def also_listen(self, listener: Listener) -> None:
        """Report every increase to `listener` as well as to the listener already set (the
        metrics and the console's durable tallies both listen to the webhook counters)."""
        current = self._listener
        self.listen(listener if current is None else fan_out(current, listener))

    def __setattr__(self, name: str, value: Any) -> None:
        listener = self._listener
        if listener is not None and type(value) is int:
            increase = value - getattr(self, name, 0)
            object.__setattr__(self, name, value)
            if increase > 0:
                listener(name, "", increase)
            return
        object.__setattr__(self, name, value)
