"""What this machine has to give: cores this process may use, memory available for new work,
and how a command keeps the memory it frees and takes fresh memory."""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BLOCK_LIMIT = 32 << 20  # glibc's largest mmap threshold: blocks up to this come from the heap
KEEP_FREED = 1 << 30  # free heap memory glibc keeps instead of trimming it


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to start new work (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reuse_freed_memory() -> bool:
    """glibc: blocks of up to HEAP_BLOCK_LIMIT come from the heap and freed heap memory is kept
    for reuse (up to KEEP_FREED), for a command whose peak is its footprint anyway.

    By default glibc maps each block above a threshold that starts at 128 KiB afresh and unmaps
    it when freed, and fresh pages are slow to touch (up to 3.6 us per 4 KiB page on the
    development VM): a self-join's recall tuning, whose exact pass takes its items in 16 MB
    blocks, took 3.1-3.3 s against 1.7 s so (500k x 768). Larger blocks (a held row group, an
    index's lists as they grow) are still mapped and given back when freed; Index.shrink_to_fit
    trims the heap. An environment that sets MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
    wins. Returns whether the settings were made (not where mallopt is missing: musl, macOS)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED))


def buffers_on_small_pages() -> list[str]:
    """numpy's arrays and Arrow's buffers on 4 KiB pages, for a command's process: returns the
    libraries changed ("numpy", "arrow").

    numpy asks for transparent huge pages for arrays of 4 MiB or more (madvise), and Arrow's
    default pool (mimalloc) for its segments. On a VM that hands free memory back to its host
    (virtio-balloon free page reporting, which reports free 2 MiB blocks), a huge page is one the
    host must map again as it is first touched: the Fashion-MNIST self-join's Parquet read took
    0.86-1.02 s and its write 0.13-0.16 s so, against 0.49-0.60 s and 0.05-0.06 s on 4 KiB pages
    (which come from memory the last process freed), alternating runs on the development VM. A
    read streams through its buffers once, so huge pages' fewer TLB misses do not pay there; the
    engine's own index arrays keep theirs (SPARKNN_HUGE_PAGES). Arrow then allocates from the
    C library (the system pool), whose freed memory reuse_freed_memory keeps. An environment
    that sets NUMPY_MADVISE_HUGEPAGE or ARROW_DEFAULT_MEMORY_POOL wins."""
    changed = []
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        import numpy as np

        multiarray = getattr(getattr(np, "_core", None), "multiarray", None)  # numpy 2 (1.x: np.core)
        if multiarray is None:
            multiarray = getattr(getattr(np, "core", None), "multiarray", None)
        setter = getattr(multiarray, "_set_madvise_hugepage", None)
        if setter is not None:
            setter(False)
            changed.append("numpy")
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        if pa.default_memory_pool().backend_name != "system":
            pa.set_memory_pool(pa.system_memory_pool())
            changed.append("arrow")
    return changed
