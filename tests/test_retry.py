"""The stream workers' backoff: doubled per failure up to a cap, reset by a success."""

import threading

from workers.retry import FIRST_DELAY, MAX_DELAY, RetryDelay


def test_delay_doubles_up_to_cap():
    stopped = threading.Event()
    stopped.set()
    delay = RetryDelay()
    seen = []

    for _ in range(12):
        seen.append(delay.seconds)
        delay.wait(stopped)

    assert seen[:3] == [FIRST_DELAY, FIRST_DELAY * 2, FIRST_DELAY * 4]
    assert max(seen) == MAX_DELAY
    assert delay.seconds == MAX_DELAY


def test_delay_reset_after_success():
    stopped = threading.Event()
    stopped.set()
    delay = RetryDelay()
    delay.wait(stopped)
    delay.wait(stopped)

    delay.reset()

    assert delay.seconds == FIRST_DELAY
