"""What every executor task shares: the worker's file cache and loaders, task threads, partition ids.

Spark reuses Python workers across tasks (``spark.python.worker.reuse``), so
files are cached at module level, keyed by (path, size, mtime, inode). Index
files are memory-mapped read-only: every worker on a node shares one copy in
the page cache. A side file is verified (size and CRC-32C) against its digest
once per load, not per task. The engine releases the GIL and runs
``spark.task.cpus`` threads.

Build and query strategies sit above this module and ``layout``; none of them
imports another.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from sparknn.index import Index, load
from sparknn import integrity
from sparknn.arrow import fixed_rows
from sparknn.errors import IndexFileError
from sparknn.spark.layout import Layout

# -- cache ------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_SIZE = 64
# Mapped files count in a worker's resident memory once touched: a worker that searches part
# after part of a routed index would otherwise keep every part it met mapped. Least recently
# used files are unmapped past this many bytes (the newest always stays; the OS page cache
# keeps the pages for the next reader either way).
_CACHE_BYTES = int(os.environ.get("SPARKNN_WORKER_CACHE_BYTES", 512 << 20))
_LOCK = threading.Lock()


def cached(path: str, load, expected: integrity.FileDigest | None = None, what: str = "file"):
    """``load(path)``, once per (path, size, mtime) and Python worker. With ``expected`` the file is
    verified (size and CRC-32C) before it is first loaded: once per load, not per task."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IndexFileError(f"{what} {path!r} is missing") from None
    # The inode too: a file replaced within one clock tick keeps size and mtime, not its inode.
    key = (load.__name__, path, st.st_size, st.st_mtime_ns, st.st_ino, expected)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if expected is not None:
        integrity.verify(path, expected, what)
    try:
        value = load(path)
    except pa.ArrowException as err:  # unreadable despite no digest to check (an old model)
        raise IndexFileError(f"{what} {path!r} cannot be read: {err}") from None
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > 1 and (len(_CACHE) > _CACHE_SIZE or sum(k[2] for k in _CACHE) > _CACHE_BYTES):
            _CACHE.popitem(last=False)
    return value


def load_index(path: str) -> Index:
    return load(path, mmap=True)


def load_ids(path: str) -> pa.Array:
    # Zero-copy: the array's buffers point into the mapped file.
    table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    column = table.column(0)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def load_probes(path: str) -> np.ndarray:
    """int32 [n, width], a zero-copy view of the mapped probes file."""
    return fixed_rows(pa.ipc.open_file(pa.memory_map(path, "r")).read_all().column(0))


def shard_index(layout: Layout, s: int) -> Index:
    """Shard (or part) ``s``'s index, checked to record the same side files as the model: an index
    from another build or another task attempt than its side files is refused."""
    files = layout.shards[s]
    path = layout.path(files.index)
    index = cached(path, load_index, what="index file")
    if files.digests:
        recorded = index.side_files
        for role, _ in layout.side_files(files):
            if recorded.get(role) != files.digest(role):
                raise IndexFileError(f"index file {path!r} records {role} file {recorded.get(role)}, but the "
                                     f"model's is {files.digest(role)}: the index is from another build or "
                                     "task attempt than its side files")
    return index


def side_file(layout: Layout, s: int, role: str, load):
    """A side file of shard ``s`` loaded with ``load``, verified against the model's digest first
    (models saved before digests were recorded: against the index's record, if any)."""
    files = layout.shards[s]
    name = dict(layout.side_files(files))[role]
    expected = files.digest(role)
    if expected is None:
        expected = shard_index(layout, s).side_files.get(role)
    return cached(layout.path(name), load, expected, f"{role} file")


def task_threads(num_threads: int) -> int:
    """numThreads when set, else the cores Spark gave this task (spark.task.cpus)."""
    if num_threads:
        return num_threads
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return max(1, int(ctx.cpus())) if ctx is not None else 0


def attempt_id() -> int:
    """This task attempt's id, unique within the application (a speculative or retried copy of a
    task gets another): build tasks name their files with it, so two attempts never write the
    same file. Outside a task: the process id."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.taskAttemptId() if ctx is not None else os.getpid()


def partition_id() -> int:
    """This task's partition; 0 outside a task (a direct call is one partition)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else 0


def partition_keys(spark, n: int) -> list:
    """A long key per shard that Spark's hash partitioner sends to partition == shard.

    ``repartition(n, col)`` places a row in ``pmod(murmur3(col), n)``; with the
    shard number itself as key, two shards may collide in one partition and be
    built one after the other. Searching small integers for one that hashes to
    each partition gives one shard per task.
    """
    from pyspark.sql import functions as F

    rows = (spark.range(0, 64 * n).select("id", F.expr(f"pmod(hash(id), {n})").alias("p"))
            .groupBy("p").agg(F.min("id").alias("key")).collect())
    found = {r["p"]: r["key"] for r in rows}
    return [found.get(s, s) for s in range(n)]  # a missing one only costs parallelism


def key_column(keys: list, number):
    """The partition key (from ``partition_keys``) of the shard or part in column ``number``."""
    from pyspark.sql import functions as F

    return F.element_at(F.array(*[F.lit(k).cast("long") for k in keys]), number + 1)
