"""A worker's progress line: what it consumed since the last line, logged once a minute at most."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

# Seconds between progress lines. A line per batch would be several lines a second on a busy stream.
PROGRESS_SECONDS = 60.0


class Outcome(Protocol):
    """The counts of one batch or round that a progress line adds up."""

    entries: int
    events: int
    dead: int
    decisions: int


class ProgressLog:
    """Running sums of batch outcomes, logged at INFO every ``interval`` seconds in which entries arrived."""

    def __init__(self, logger: logging.Logger, name: str, interval: float = PROGRESS_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.name = name
        self.interval = interval
        self.clock = clock
        self.since = clock()
        self.totals = dict.fromkeys(("entries", "events", "dead", "decisions"), 0)

    def add(self, outcome: Outcome) -> None:
        """Count ``outcome``, and log the sums when ``interval`` has passed since the last line."""
        for name in self.totals:
            self.totals[name] += getattr(outcome, name)

        now = self.clock()
        if now - self.since < self.interval:
            return
        if self.totals["entries"]:
            self.logger.info(
                "%s: last %.0f s: %s entries, %s events, %s dead-lettered, %s new decisions",
                self.name, now - self.since, *(f"{self.totals[name]:,}" for name in self.totals),
            )
        self.since = now
        self.totals = dict.fromkeys(self.totals, 0)
