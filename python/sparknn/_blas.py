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
import os

_handle = None  # kept alive for the life of the process


def preload_openblas() -> None:
    global _handle
    if _handle is not None:
        return
    try:
        import scipy_openblas32
    except ImportError:  # built against a system BLAS: the loader finds it on its own
        return
    lib_dir = scipy_openblas32.get_lib_dir()
    candidates = sorted(glob.glob(os.path.join(lib_dir, "lib" + scipy_openblas32.get_library() + ".*")))
    for path in candidates:
        try:
            _handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue
