"""Finds the OpenBLAS that the extension links against before it is imported.

The extension is linked against the scipy-openblas32 wheel's library with an
RPATH to the wheel beside it in site-packages. When the two are installed in
different site directories (a venv over system packages, a --user install),
that path does not lead anywhere; loading the library by its full path first
lets the dynamic loader resolve the extension's dependency by its soname.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os

_handle = None  # kept alive for the life of the process
_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"  # read by OpenBLAS once, as it loads


def preload_openblas() -> None:
    """Loads the library without a thread pool of its own: sparknn calls it from its own threads,
    one call per thread (the engine sets one BLAS thread), so OpenBLAS's server threads, started
    as the library loads, only busy-wait (about 0.1 s of a core in every process that imports
    sparknn: the CLI's start, each Spark Python worker). The library reads its thread count
    once, as it loads: the variable is set for that moment only, and numpy's own OpenBLAS is
    left as it is."""
    global _handle
    if _handle is not None:
        return
    before = os.environ.get(_THREADS_VARIABLE)
    os.environ[_THREADS_VARIABLE] = "1"
    try:
        for path in _library_paths():
            try:
                _handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue
    finally:
        if before is None:
            del os.environ[_THREADS_VARIABLE]
        else:
            os.environ[_THREADS_VARIABLE] = before


def _library_paths() -> list[str]:
    """The wheel's library files: found in its folder without importing it first (its import
    reads its version through importlib.metadata: 35 ms of every process's start, the CLI's and
    each Spark Python worker's), through its own get_lib_dir() / get_library() if its layout differs."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None:  # built against a system BLAS: the loader finds it on its own
        return []
    for folder in spec.submodule_search_locations or ():
        found = sorted(glob.glob(os.path.join(folder, "lib", "libscipy_openblas.*")))
        if found:
            return found
    import scipy_openblas32

    name = "lib" + scipy_openblas32.get_library() + ".*"
    return sorted(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), name)))
