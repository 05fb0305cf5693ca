"""Process-wide settings for the command-line tools and workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size on are mapped afresh, and freed heap beyond it is returned.
MALLOC_THRESHOLD = 4 << 20


def use_system_allocator_for_arrow() -> None:
    """Make Arrow allocate with malloc unless ``ARROW_DEFAULT_MEMORY_POOL`` names a pool.

    Arrow's default mimalloc pool keeps freed block buffers mapped. Reading a
    million events peaked at about 740 MB with it and 580 MB with the system
    allocator, at the same speed (measured with pyarrow 26 on the benchmark
    file of docs/benchmarks.md).
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    if "pyarrow" not in sys.modules:
        # Arrow reads the variable when it first allocates, so commands that never use Arrow need not import it.
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def return_freed_memory_promptly() -> None:
    """Make glibc map large blocks with mmap and give freed memory back to the system.

    glibc raises its mmap threshold each time a large block is freed (up to
    32 MB on 64-bit), after which column-sized arrays come from the heap and
    stay in the process when freed. Fixing both thresholds keeps the
    resident size close to what is in use. Does nothing outside glibc.

    At 4 MiB, the size from which numpy requests transparent huge pages
    (``indicate_hugepages`` in numpy's ``alloc.c``),
    scoring a million events took 0.2-0.5 s less than at 1 MiB, with 20-30%
    fewer page faults and the same peak. At 8 MiB the peak rose by 35 MB,
    at 16 MiB by 50-90 MB (scripts/bench_score.py's file, docs/benchmarks.md).
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
    use_system_allocator_for_arrow()
    return_freed_memory_promptly()
