"""Clocks for pause timers and durations: the real one and one tests can jump (Vorta-style).

Everything in the tray that asks "what time is it" asks a :class:`Clock`, never
``datetime.now()`` directly, so a test can jump days ahead and check that "Pause until I
resume" is still paused, or that "Pause for 1 hour" ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Local wall time, timezone-aware."""

    def timestamp(self) -> float:
        """Seconds since the epoch (for storing)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now().astimezone()

    def timestamp(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to; listeners hear every jump."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime(2026, 12, 1, 9, 0)).astimezone()
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def timestamp(self) -> float:
        return self.now().timestamp()

    def on_jump(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        step = delta if delta is not None else timedelta(**kwargs)
        with self._lock:
            self._now = self._now + step
            now = self._now
        for listener in list(self._listeners):
            listener()
        return now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment.astimezone()
        for listener in list(self._listeners):
            listener()
