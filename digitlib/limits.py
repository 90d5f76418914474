"""Per-session rate limits for the dashboard (a token bucket), so one visitor cannot flood the store."""

from __future__ import annotations

import time
from collections.abc import Callable

from digitlib import config


class TokenBucket:
    """`burst` actions at once, then `per_minute` a minute; `allow()` takes one token or says no."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs per_minute > 0 and burst >= 1, got {per_minute}, {burst}")
        self.rate_per_s = per_minute / 60
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def allow(self) -> bool:
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait_s(self) -> float:
        """Seconds until the next action is allowed (0 when it is now)."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate_per_s)


def submission_limit() -> TokenBucket:
    """The dashboard's per-session limit, from DIGITLIB_SUBMIT_RATE and DIGITLIB_SUBMIT_BURST."""
    try:
        return TokenBucket(float(config.SUBMIT_RATE.get()), int(config.SUBMIT_BURST.get()))
    except ValueError as e:
        raise ValueError(f"{config.SUBMIT_RATE.name} / {config.SUBMIT_BURST.name}: {e}") from None
