"""The reader's prefetching thread: order, errors and early stops."""

from __future__ import annotations

import signal
import threading

import pytest

from detector.readers.prefetch import prefetched


def test_items_come_in_order():
    assert list(prefetched(iter(range(1000)), depth=2)) == list(range(1000))


def test_producer_error_raised_in_order():
    def failing():
        yield 1
        yield 2
        raise ValueError("truncated gzip")

    received = []
    with pytest.raises(ValueError, match="truncated gzip"):
        for item in prefetched(failing()):
            received.append(item)
    assert received == [1, 2]


def test_stopping_early_ends_the_producer():
    produced = []

    def endless():
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    before = threading.active_count()
    for item in prefetched(endless()):
        if item == 3:
            break
    assert threading.active_count() == before
    # One item queued and at most one being produced when the caller stopped.
    assert len(produced) <= 6


def test_interrupt_does_not_wait_for_stalled_producer():
    resumed = threading.Event()

    def stalls():
        yield 1
        resumed.wait()  # like a pipe whose writer sends nothing more
        yield 2

    items = prefetched(stalls())
    assert next(items) == 1
    interrupt = threading.Timer(0.2, signal.pthread_kill, (threading.get_ident(), signal.SIGINT))
    # Lets a drain that waits for the producer finish, so this test fails instead of hanging.
    watchdog = threading.Timer(10.0, resumed.set)
    interrupt.start()
    watchdog.start()

    with pytest.raises(KeyboardInterrupt):
        next(items)

    assert not resumed.is_set()
    watchdog.cancel()
    resumed.set()
