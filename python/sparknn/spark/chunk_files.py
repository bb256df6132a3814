"""Files as rows: how index files travel through Spark between nodes that share no disk.

A file becomes chunk rows (``name``, ``offset``, ``data``; a builder's rows also carry the
file's ``size``) that Spark's writers, shuffles and ``toLocalIterator`` move like any data, and
becomes a file again where the rows arrive: each chunk written at its offset, in whatever order
the rows come. The receiving side knows when a file is whole (every byte of its size written
once) and says which files are not. Used by saves and loads at a URI (hadoop_store), builds that
return their files to the driver (returned_files) and the executors' node cache (node_cache).
"""

from __future__ import annotations

import os

from sparknn.errors import IndexFileError

CHUNK_BYTES = 4 << 20  # one row's data: small for any reader or JVM buffer, large enough to stream


# Parquet's writer checks its page and row-group sizes only every 100 rows or more by default:
# with 4 MiB rows that is a 400 MB page buffered in the JVM before the first check (an executor
# with a 2 GiB heap ran out while saving a 0.9 GB model). Pages are checked after every row and
# row groups hold four chunks (parquet.block.row.count.limit: Parquet 1.14+, Spark 4).
_PARQUET_OPTIONS = {"compression": "none",  # index bytes do not compress
                    "parquet.page.size.row.check.min": "1", "parquet.page.size.row.check.max": "1",
                    "parquet.block.row.count.limit": "4"}


def write_parquet(df, uri: str) -> None:
    """Writes chunk rows (with any other columns) as Parquet at ``uri``, a few chunks per row group."""
    df.write.options(**_PARQUET_OPTIONS).parquet(uri)


def ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of a file's chunks; an empty file is one empty chunk (so it still arrives)."""
    return [(offset, min(CHUNK_BYTES, size - offset)) for offset in range(0, max(size, 1), CHUNK_BYTES)]


def read_range(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes of ``path`` at ``offset``; IndexFileError when the file is shorter now."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise IndexFileError(f"index file {path!r} ended at {offset + len(data)} bytes while reading its chunk "
                             f"at {offset} of {length} bytes: it changed while being sent")
    return data


def file_chunks(path: str):
    """(offset, size, data) of every chunk of the file at ``path``."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for offset, length in ranges(size):
            yield offset, size, f.read(length)


def check_name(name: str) -> None:
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise IndexFileError(f"a chunk names the file {name!r}, which is not a plain file name")


class Assembler:
    """Writes chunks arriving in any order into files under ``directory``.

    ``sizes`` (name -> bytes) are the files expected; without them a file's size comes with its
    first chunk (a builder's rows). A chunk outside its file, or a second chunk at one offset, marks
    the file as not whole (``problems``) rather than being written twice.
    """

    def __init__(self, directory: str, sizes: dict[str, int] | None = None):
        self.directory = directory
        self.sizes = dict(sizes or {})
        self.written = dict.fromkeys(self.sizes, 0)
        self._offsets: dict[str, set[int]] = {}
        self._fds: dict[str, int] = {}
        self._problems: dict[str, str] = {}

    def _fd(self, name: str, size: int | None) -> int:
        fd = self._fds.get(name)
        if fd is None:
            check_name(name)
            if name not in self.sizes:
                if size is None:
                    raise IndexFileError(f"a chunk of {name!r} arrived, which is not one of the files expected "
                                         f"({sorted(self.sizes)})")
                self.sizes[name], self.written[name] = size, 0
            fd = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, self.sizes[name])
            self._fds[name] = fd
        return fd

    def add(self, name: str, offset: int, data: bytes, size: int | None = None) -> bool:
        """Writes one chunk; True when its file is now whole."""
        fd = self._fd(name, size)
        seen = self._offsets.setdefault(name, set())
        if offset < 0 or offset + len(data) > self.sizes[name] or (size is not None and size != self.sizes[name]):
            self._problems[name] = f"a chunk at {offset} ({len(data)} bytes) outside its {self.sizes[name]} bytes"
            return False
        if offset in seen:
            self._problems[name] = f"two chunks at offset {offset}"
            return False
        seen.add(offset)
        os.pwrite(fd, data, offset)
        self.written[name] += len(data)
        return self.whole(name)

    def whole(self, name: str) -> bool:
        """Every byte of the file written once (an empty file: its one empty chunk arrived)."""
        return (name not in self._problems and name in self._offsets
                and self.written.get(name) == self.sizes.get(name))

    def close(self, name: str | None = None) -> None:
        for n in [name] if name else list(self._fds):
            fd = self._fds.pop(n, None)
            if fd is not None:
                os.close(fd)

    def problem(self) -> str | None:
        """Why the files are not all whole (the first such file); None when they are."""
        for name in self.sizes:
            if name in self._problems:
                return f"{name}: {self._problems[name]}"
            if not self.whole(name):
                return f"{name} has {self.written[name]} of {self.sizes[name]} bytes"
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
