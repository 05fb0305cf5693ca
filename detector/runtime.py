"""Process-wide settings for the command-line tools and workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pyarrow as pa

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size up are mapped with mmap, and freed heap above it is trimmed.
MALLOC_THRESHOLD = 16 << 20


def choose_arrow_allocator() -> None:
    """Make Arrow allocate with its bundled jemalloc unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool.

    Scoring a million events (docs/benchmarks.md) peaked at about 1,180 MB
    with Arrow's default mimalloc pool, which keeps freed block buffers
    mapped, and at about 925 MB with the system allocator. jemalloc peaked
    at 910–935 MB and spent about 1 s less CPU in page faults than the
    system allocator, which maps every large buffer afresh. A pyarrow built
    without jemalloc falls back to the system allocator.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


def return_freed_memory_promptly() -> None:
    """Fix glibc's mmap and trim thresholds at ``MALLOC_THRESHOLD``.

    glibc raises its mmap threshold each time a large block is freed (up to
    32 MB on 64-bit), after which column-sized arrays come from the heap and
    stay in the process when freed. Fixed thresholds keep the resident size
    close to what is in use. 16 MiB rather than 1 MiB: every mapped block
    is faulted in page by page when first written, and with 1 MiB scoring a
    million events spent about 3 s of system time in page faults against
    2 s with 16 MiB, at the same peak. Does nothing outside glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD)
    except (OSError, AttributeError):
        return


def configure_process() -> None:
    """Apply the memory settings the ``fairuse`` command and the workers run with."""
    choose_arrow_allocator()
    return_freed_memory_promptly()
