"""Failed console logins counted per staff name and per client address, with a temporary lockout.

After ``max_failures`` failed logins within ``window`` seconds for one name,
or for one client address, further logins for it are refused with 429 until
the oldest of those failures is ``window`` seconds old. A refused attempt
does not check the password, so a locked-out guesser learns nothing. A
successful login clears its name's failures. Counts live in the console
process: each process of a multi-process deployment counts its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 15 * 60
# At most this many names and addresses are tracked; the least recently failed are dropped first.
MAX_TRACKED = 10_000


class LoginLimiter:
    """Sliding-window counts of failed logins; see the module docstring."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, name: str, address: str) -> int:
        """Return the seconds until ``name`` may try again from ``address``, 0 when it may now."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(key, now) for key in _keys(name, address)]
        return max(waits)

    def failed(self, name: str, address: str) -> None:
        """Count one failed login for ``name`` and for ``address``."""
        now = self.clock()
        with self._lock:
            for key in _keys(name, address):
                times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
                times.append(now)
                self._failures[key] = times
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """Forget the failed logins of ``name``."""
        with self._lock:
            self._failures.pop(("name", name.casefold()), None)

    def _wait(self, key: tuple[str, str], now: float) -> int:
        times = self._failures.get(key)
        if not times or len(times) < self.max_failures:
            return 0
        remaining = times[0] + self.window - now
        return math.ceil(remaining) if remaining > 0 else 0


def _keys(name: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("name", name.casefold()), ("address", address)
