"""`Backoff`: the delays between the agent loop's retries of a failed report.

Pure arithmetic on timedeltas: it must not sleep, do I/O or know what failed; the caller
sleeps (at least as long as a Retry-After asks, see `ControlPlaneError.retry_after`).
"""

from __future__ import annotations

import random
from datetime import timedelta


class Backoff:
    """Capped exponential backoff with full jitter (pure; the caller sleeps).

    The n-th delay (from 0) is uniform in [0, ceiling_n] where ceiling_n =
    min(maximum, initial * multiplier**n); full jitter spreads VMs that failed together.
    """

    def __init__(
        self,
        initial: timedelta = timedelta(seconds=1),
        maximum: timedelta = timedelta(seconds=60),
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= timedelta(0) or maximum < initial or multiplier < 1.0:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and multiplier >= 1, got "
                f"initial={initial}, maximum={maximum}, multiplier={multiplier}"
            )
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._rng = rng if rng is not None else random.Random()
        self._ceiling = initial

    @property
    def ceiling(self) -> timedelta:
        """The upper bound of the next delay; never decreases until `reset`."""
        return self._ceiling

    def next_delay(self) -> timedelta:
        """A delay in [0, ceiling], then grow the ceiling towards `maximum`."""
        ceiling = self._ceiling
        delay = ceiling * self._rng.random()
        # Grow in float seconds and clamp, so the ceiling never overflows or exceeds maximum.
        grown = ceiling.total_seconds() * self.multiplier
        self._ceiling = min(self.maximum, timedelta(seconds=min(grown, 1e9)))
        return delay

    def reset(self) -> None:
        """Back to `initial`, after a success."""
        self._ceiling = self.initial
