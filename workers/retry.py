"""The backoff of the stream workers' loops while Redis or the database is unreachable."""

from __future__ import annotations

import threading

FIRST_DELAY = 0.1
MAX_DELAY = 30.0


class RetryDelay:
    """Seconds to wait before the next try: doubled after each failure up to ``MAX_DELAY``, reset by a success."""

    def __init__(self) -> None:
        self.seconds = FIRST_DELAY

    def wait(self, stop: threading.Event) -> None:
        """Wait the current delay, or until ``stop`` is set, then double the delay for the next failure."""
        stop.wait(self.seconds)
        self.seconds = min(self.seconds * 2, MAX_DELAY)

    def reset(self) -> None:
        self.seconds = FIRST_DELAY
