"""Garbage-collector settings for long-running workers."""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now out of the cyclic garbage collector's scans; return how many.

    A worker imports pandas, scikit-learn, Arrow and redis-py, about 230,000
    tracked objects that live until it exits. Each stream entry read
    allocates lists, and the collections those allocations trigger walked
    all of them again. In one state worker with the shipped model, reading
    64,524 entries took 0.38 s before the freeze and 0.15 s after it, and
    the whole run 1.42 s against 1.23 s (CPython 3.11). Frozen objects are
    never collected as cycles, which costs nothing for objects that live
    until exit.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d objects alive at start-up out of the garbage collector's scans", frozen)
    return frozen
