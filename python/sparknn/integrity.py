"""Checksums of the files that sit beside an index file (ids, items, probes, manifests).

An index file checks itself (CRC-32C per section, docs/FORMAT.md). The files written beside
it are checked with the same CRC-32C (hardware-accelerated in the core, GIL released) against
a digest recorded where the file is referenced: a manifest written last, so a reader sees
either a complete, matching set of files or an ``IndexFileError`` that names the file.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from sparknn._core import crc32c as _crc32c
from sparknn.errors import IndexFileError

_CHUNK = 64 << 20  # bytes per CRC call: bounds the pages one call touches


@dataclass(frozen=True)
class FileDigest:
    """Size and CRC-32C of a file's bytes."""

    size: int
    crc32c: int

    def to_json(self) -> dict:
        return {"bytes": self.size, "crc32c": f"{self.crc32c:08x}"}

    @staticmethod
    def from_json(d: dict) -> FileDigest:
        return FileDigest(int(d["bytes"]), int(d["crc32c"], 16))


def crc32c(data, seed: int = 0) -> int:
    """CRC-32C of any bytes-like object (bytes, memoryview, numpy array, mmap)."""
    view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).reshape(-1)
    crc = seed
    for start in range(0, len(view), _CHUNK):
        crc = _crc32c(view[start:start + _CHUNK], crc)
    return crc


def digest(path: str) -> FileDigest:
    """The digest of a file's current bytes."""
    size = os.path.getsize(path)
    if size == 0:
        return FileDigest(0, 0)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return FileDigest(size, crc32c(m))


def verify(path: str, expected: FileDigest, what: str) -> None:
    """Raises IndexFileError naming ``what`` and ``path`` unless the file exists and matches."""
    if not os.path.isfile(path):
        raise IndexFileError(f"{what} {path!r} is missing")
    size = os.path.getsize(path)
    if size != expected.size:
        raise IndexFileError(f"{what} {path!r} has {size} bytes, {expected.size} expected: the file is truncated, "
                             "extended or from another build")
    actual = digest(path)
    if actual.crc32c != expected.crc32c:
        raise IndexFileError(f"{what} {path!r} fails its checksum (CRC-32C {actual.crc32c:08x}, "
                             f"{expected.crc32c:08x} expected): the file is damaged or from another build")
