"""Files built by executor tasks on nodes that share no disk with the driver, returned through Spark.

A build task that cannot write where the driver reads (no shared ``indexPath``; a cluster's
driver directory) writes its files into a private scratch directory of its node, then emits them
as rows (``name``, ``offset``, ``data``: 8 MiB chunks) after its result rows, and removes them.
The driver persists the build's output on the executors' disks, counts it (every task runs, in
parallel), then reads it back one partition at a time (``toLocalIterator``) and writes each chunk
into its file. A result row and the chunks of the files it names always come from the same task
attempt (Spark delivers one attempt's output per partition; a partition rebuilt after an
executor loss renames its files consistently). Works alike on classic and Spark Connect sessions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

import pyarrow as pa
from pyspark.sql import types as T

from sparknn.errors import InvalidArgumentError

CHUNK_BYTES = 8 << 20
_CHUNK_FIELDS = (("name", pa.string(), T.StringType()), ("offset", pa.int64(), T.LongType()),
                 ("data", pa.binary(), T.BinaryType()))


def with_chunks(arrow: pa.Schema, spark: T.StructType) -> tuple[pa.Schema, T.StructType]:
    """A task result schema (Arrow and Spark) extended with the chunk columns."""
    return (pa.schema(list(arrow) + [pa.field(n, t) for n, t, _ in _CHUNK_FIELDS]),
            T.StructType(spark.fields + [T.StructField(n, t) for n, _, t in _CHUNK_FIELDS]))


def result_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A result batch padded with null chunk columns to ``schema``."""
    extra = [pa.nulls(batch.num_rows, schema.field(n).type) for n, _, _ in _CHUNK_FIELDS]
    return pa.RecordBatch.from_arrays(list(batch.columns) + extra, schema=schema)


def chunk_batches(directory: str, names, schema: pa.Schema):
    """The files ``names`` under ``directory`` as chunk rows (result columns null)."""
    results = [f for f in schema if f.name not in {n for n, _, _ in _CHUNK_FIELDS}]
    for name in names:
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for offset in range(0, max(size, 1), CHUNK_BYTES):
                data = f.read(CHUNK_BYTES)
                yield pa.RecordBatch.from_arrays(
                    [pa.nulls(1, r.type) for r in results]
                    + [pa.array([name]), pa.array([offset], pa.int64()), pa.array([data], pa.binary())],
                    schema=schema)


@contextmanager
def scratch_dir():
    """A private directory on this node's local disk (Spark's local dirs when set), removed after."""
    base = (os.environ.get("SPARK_LOCAL_DIRS") or "").split(",")[0] or None
    path = tempfile.mkdtemp(prefix="sparknn-build-", dir=base if base and os.path.isdir(base) else None)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_returning(batches, *, task, file_columns, schema: pa.Schema, **kw):
    """Runs the build task ``task(batches, root=..., **kw)`` in a scratch directory, then emits its
    result rows and the files they name (columns ``file_columns``) as chunk rows."""
    with scratch_dir() as scratch:
        results = list(task(batches, root=scratch, **kw))
        for batch in results:
            yield result_batch(batch, schema)
        for batch in results:
            names = [n for c in file_columns for n in batch.column(c).to_pylist() if n]
            yield from chunk_batches(scratch, names, schema)


def gather(df, root: str) -> list:
    """Runs the build ``df`` (result and chunk rows), writes the returned files into the driver
    directory ``root`` and returns the result rows (as dicts, without the chunk columns)."""
    from pyspark import StorageLevel

    df = df.persist(StorageLevel.DISK_ONLY)
    results, fds, written, ends = [], {}, {}, {}
    try:
        df.count()  # every build task, in parallel; their output stays on the executors' disks
        for row in df.toLocalIterator():
            row = row.asDict()
            name = row.pop("name")
            offset, data = row.pop("offset"), row.pop("data")
            if name is None:
                results.append(row)
                continue
            if os.path.basename(name) != name or name.startswith("."):
                raise InvalidArgumentError(f"a build task returned a file named {name!r}")
            if name not in fds:
                fds[name] = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                written[name] = 0
            os.pwrite(fds[name], data, offset)
            written[name] += len(data)
            ends[name] = max(ends.get(name, 0), offset + len(data))
    finally:
        for fd in fds.values():
            os.close(fd)
        df.unpersist()
    for name, end in ends.items():
        if written[name] != end:
            raise InvalidArgumentError(f"the build returned {written[name]} bytes of {name!r} for a file of {end}: "
                                       "chunks are missing or repeated")
    return results
