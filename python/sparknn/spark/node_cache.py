"""One copy per executor of the model files that reach it as chunk rows (parts of a routed model
stored at a URI): a directory under the executor's Spark local dir (what Spark gives its Python
workers as SPARK_LOCAL_DIRS), shared by all its Python workers and removed by Spark with the
application's other local files.

A file is kept under its content: ``<crc32c>-<size>-<name>``, so a model saved again with other
bytes gets other entries and is never served stale, and two models sharing a file share it.
Chunks are assembled in a private incoming directory, verified against the model's digest, then
renamed into place (atomic: readers see a whole, verified file or none; two tasks assembling the
same file both produce the same bytes). Readers memory-map entries: the page cache holds one
copy, whichever workers map it.

The cache is bounded (``SPARKNN_NODE_CACHE_BYTES``, default 25% of its filesystem): after a file
is added, the least recently used entries go until the rest fit, except those used in the last
``SPARKNN_NODE_CACHE_GRACE`` seconds (default 600), which a running task may be about to open.
Removing a file that a worker has mapped is safe: the mapping keeps its pages until unmapped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

from sparknn import integrity
from sparknn.spark import chunk_files

_DIR = "sparknn-cache"
_INCOMING = ".incoming-"


def directory() -> str:
    """This executor's cache directory (outside a Spark task: under the system temp dir)."""
    base = (os.environ.get("SPARK_LOCAL_DIRS") or "").split(",")[0]
    if not base or not os.path.isdir(base):
        base = tempfile.gettempdir()
    path = os.path.join(base, _DIR)
    os.makedirs(path, exist_ok=True)
    return path


def entry(name: str, digest: integrity.FileDigest) -> str:
    return f"{digest.crc32c:08x}-{digest.size}-{name}"


def path_of(name: str, digest: integrity.FileDigest) -> str:
    """Where the file ``name`` with ``digest`` is (or will be) on this node."""
    return os.path.join(directory(), entry(name, digest))


def lookup(name: str, digest: integrity.FileDigest) -> str | None:
    """The cached file's path, marked as used now; None when this node does not have it."""
    path = path_of(name, digest)
    try:
        if os.path.getsize(path) != digest.size:
            return None
        os.utime(path)  # last use, for eviction
    except OSError:
        return None
    return path


def limit_bytes(root: str) -> int:
    given = os.environ.get("SPARKNN_NODE_CACHE_BYTES")
    if given:
        return int(given)
    st = os.statvfs(root)
    return st.f_blocks * st.f_frsize // 4


def evict(root: str | None = None, limit: int | None = None, grace: float | None = None) -> list[str]:
    """Removes least recently used entries until the cache fits ``limit`` bytes, sparing those used
    within ``grace`` seconds; returns the names removed. Abandoned incoming directories (a killed
    task's) older than the grace period go too."""
    root = root or directory()
    limit = limit_bytes(root) if limit is None else limit
    grace = float(os.environ.get("SPARKNN_NODE_CACHE_GRACE", 600)) if grace is None else grace
    now = time.time()
    entries = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if name.startswith(_INCOMING):
            if now - st.st_mtime > grace:
                shutil.rmtree(path, ignore_errors=True)
            continue
        entries.append((st.st_mtime, st.st_size, name))
    total = sum(size for _, size, _ in entries)
    removed = []
    for used, size, name in sorted(entries):
        if total <= limit:
            break
        if now - used < grace:
            continue
        try:
            os.remove(os.path.join(root, name))
        except OSError:
            continue
        total -= size
        removed.append(name)
    return removed


class Receiver:
    """A task's side: takes chunk rows of the files ``expected`` (name -> digest) in any order and
    puts each file into the node cache once it is whole and verified. Files the node already has
    skip their chunks."""

    def __init__(self, expected: dict[str, integrity.FileDigest]):
        self.expected = expected
        self.root = directory()
        self.ready = {name: path for name in expected if (path := lookup(name, expected[name]))}
        self._incoming = None
        self._files = None

    def add(self, name: str, offset: int, data: bytes) -> str | None:
        """Writes one chunk; the file's cached path once it is whole (and from then on), else None."""
        if name in self.ready:
            return self.ready[name]
        if name not in self.expected:
            chunk_files.check_name(name)
            return None  # a chunk of a file this task does not need
        if self._files is None:
            self._incoming = tempfile.mkdtemp(prefix=f"{_INCOMING}{uuid.uuid4().hex[:8]}-", dir=self.root)
            wanted = {n: d.size for n, d in self.expected.items() if n not in self.ready}
            self._files = chunk_files.Assembler(self._incoming, wanted)
        if not self._files.add(name, offset, data):
            return None
        self._files.close(name)
        digest = self.expected[name]
        fresh = os.path.join(self._incoming, name)
        integrity.verify(fresh, digest, "model file received by this node:")
        final = path_of(name, digest)
        os.replace(fresh, final)
        self.ready[name] = final
        evict(self.root)
        return final

    def missing(self) -> list[str]:
        return [name for name in self.expected if name not in self.ready]

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
            shutil.rmtree(self._incoming, ignore_errors=True)
            self._files = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
