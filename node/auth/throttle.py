"""Slows password guessing: after too many failures for a user or from an address, pause."""

from __future__ import annotations

import threading
import time
from collections import deque

_MAX_KEYS = 10_000


class LoginThrottle:
    """Counts recent sign-in failures per key within a sliding window (in memory, per process).

    A user name gets `max_failures`; an address, which many staff may share behind a hospital
    NAT, gets ten times as many.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _limit(self, key: str) -> int:
        return self.max_failures * (10 if key.startswith("addr:") else 1)

    def retry_after(self, keys: list[str], now: float | None = None) -> int:
        """Seconds until a sign-in for these keys may be tried again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self._limit(key):
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, keys: list[str], now: float | None = None) -> None:
        """Record one failure against every key."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > _MAX_KEYS:
                self._failures = {
                    k: v for k, v in self._failures.items() if v and v[-1] > now - self.window
                }
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, user_key: str) -> None:
        """A correct password clears the user's count (not the address's)."""
        with self._lock:
            self._failures.pop(user_key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times
