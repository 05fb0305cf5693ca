"""The reader's prefetching thread: order, errors and early stops."""

from __future__ import annotations

import threading

import pytest

from detector.readers.prefetch import prefetched


def test_items_come_in_order():
    assert list(prefetched(iter(range(1000)), depth=2)) == list(range(1000))


def test_producer_error_is_raised_after_the_items_before_it():
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
