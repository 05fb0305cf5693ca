"""Run a reader one batch ahead in a background thread, so parsing overlaps validation."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield the items of ``items``, produced in a background thread up to ``depth`` items ahead.

    Arrow's JSON parser releases the GIL, so the next block is parsed while
    the caller validates the current one. An
    exception in the producer is raised in the caller at the point it would
    have been raised without prefetching. A caller that stops early stops the
    producer before the next item.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                handoff.put((item, None))
        except BaseException as error:  # re-raised in the consuming thread
            handoff.put((_DONE, error))
            return
        handoff.put((_DONE, None))

    producer = threading.Thread(target=produce, name="fairuse-reader", daemon=True)
    producer.start()
    interrupted = False
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    except KeyboardInterrupt:
        # The producer may be blocked reading a pipe that sends nothing more, so
        # Ctrl-C does not wait for it. It is a daemon thread and ends with the process.
        interrupted = True
        raise
    finally:
        stop.set()
        if not interrupted:
            _drain(handoff, producer)


def _drain(handoff: queue.Queue, producer: threading.Thread) -> None:
    """Unblock a producer waiting on a full queue, and wait for it to end."""
    while producer.is_alive():
        try:
            handoff.get(timeout=0.05)
        except queue.Empty:
            pass
    producer.join()
