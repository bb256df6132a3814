"""Files built by executor tasks on nodes that share no disk with the driver, returned through Spark.

A build task that cannot write where the driver reads (no shared ``indexPath``; a cluster's
driver directory) writes its files into a private scratch directory of its node, then emits them
as chunk rows (``name``, ``offset``, ``size``, ``data``: chunk_files) after its result rows, and
removes them. The driver hash-partitions that output into small partitions (a shuffle: every
build task runs in parallel and streams its rows to its node's disk, nothing is held whole in a
JVM) and reads them back one at a time (``toLocalIterator``), writing each chunk into its file.

A result row and the chunks of the files it names come from one task attempt: Spark registers
one attempt's output per map task. If an executor is lost while the driver reads, Spark rebuilds
its tasks' output (under new attempt names), so a file may then be incomplete and a part may be
named twice: the driver sees it (every chunk carries its file's size) and reads the whole
output again, now from one attempt per task. Works alike on classic and Spark Connect sessions.

With an ``indexPath`` URI (``build_and_store``) the same rows are written there by Spark's Parquet
writer instead, and the files stay there: a routed model's parts then reach the tasks that
search them as chunk rows (part_chunks), never the driver.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import partial

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn import integrity
from sparknn.spark import chunk_files
from sparknn.spark.ivf_memory import check_driver_heap_for

PARTITION_BYTES = 16 << 20  # what the driver holds at a time, about
_CHUNK_FIELDS = (("name", pa.string(), T.StringType()), ("offset", pa.int64(), T.LongType()),
                 ("size", pa.int64(), T.LongType()), ("crc32c", pa.int64(), T.LongType()),
                 ("data", pa.binary(), T.BinaryType()))
_CHUNK_NAMES = {n for n, _, _ in _CHUNK_FIELDS}
_ATTEMPTS = 3


def with_chunks(arrow: pa.Schema, spark: T.StructType) -> tuple[pa.Schema, T.StructType]:
    """A task result schema (Arrow and Spark) extended with the chunk columns."""
    return (pa.schema(list(arrow) + [pa.field(n, t) for n, t, _ in _CHUNK_FIELDS]),
            T.StructType(spark.fields + [T.StructField(n, t) for n, _, t in _CHUNK_FIELDS]))


def result_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A result batch padded with null chunk columns to ``schema``."""
    extra = [pa.nulls(batch.num_rows, schema.field(n).type) for n, _, _ in _CHUNK_FIELDS]
    return pa.RecordBatch.from_arrays(list(batch.columns) + extra, schema=schema)


def chunk_batches(directory: str, names, schema: pa.Schema):
    """The files ``names`` under ``directory`` as chunk rows (result columns null); each row carries
    its file's size and CRC-32C."""
    results = [f for f in schema if f.name not in _CHUNK_NAMES]
    for name in names:
        path = os.path.join(directory, name)
        crc = integrity.digest(path).crc32c
        for offset, size, data in chunk_files.file_chunks(path):
            yield pa.RecordBatch.from_arrays(
                [pa.nulls(1, r.type) for r in results]
                + [pa.array([name]), pa.array([offset], pa.int64()), pa.array([size], pa.int64()),
                   pa.array([crc], pa.int64()), pa.array([data], pa.binary())],
                schema=schema)


@contextmanager
def scratch_dir():
    """A private directory on this node's local disk (Spark's local dirs when set), removed after.
    Its name carries the owner's pid: a task killed outright (SIGKILL, a lost executor) cannot remove
    it, and the pid tells such a leftover from a live build."""
    base = (os.environ.get("SPARK_LOCAL_DIRS") or "").split(",")[0] or None
    path = tempfile.mkdtemp(prefix=f"sparknn-build-{os.getpid()}-", dir=base if base and os.path.isdir(base) else None)
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


def build_and_gather(data, task, result_arrow: pa.Schema, result_spark: T.StructType, *, root: str, key: str,
                     file_columns, expected_bytes: int, what: str, **kw) -> list[dict]:
    """Runs the build task ``task(batches, root=..., **kw)`` (results typed ``result_arrow`` /
    ``result_spark``) over ``data`` in the executors' scratch space and gathers its files into
    ``root`` (see gather)."""
    return gather(_built(data, task, result_arrow, result_spark, file_columns, **kw), root, key, file_columns,
                  expected_bytes, what)


def _built(data, task, result_arrow: pa.Schema, result_spark: T.StructType, file_columns, **kw):
    """The build's output: result rows, then the chunk rows of the files they name."""
    arrow, schema = with_chunks(result_arrow, result_spark)
    build = partial(run_returning, task=task, file_columns=file_columns, schema=arrow, **kw)
    return data.mapInArrow(build, schema)


def build_and_store(data, task, result_arrow: pa.Schema, result_spark: T.StructType, *, uri: str, key: str,
                    file_columns, what: str, **kw) -> tuple[list[dict], dict[str, integrity.FileDigest]]:
    """Runs the build task as build_and_gather does, but its output (result and chunk rows) is
    written with Spark's Parquet writer to ``uri`` (an ``indexPath`` URI): nothing comes back to the
    driver but the result rows and every file's digest. Spark's output commit keeps one attempt per
    task, so a result and the chunks of its files are one attempt's; each named file is checked to
    be there whole (its chunk count, one size and CRC)."""
    chunk_files.write_parquet(_built(data, task, result_arrow, result_spark, file_columns, **kw), uri)
    stored = data.sparkSession.read.parquet(uri)
    chunk_names = [n for n, _, _ in _CHUNK_FIELDS]
    results = [r.asDict() for r in stored.where(F.col("name").isNull()).drop(*chunk_names).collect()]
    stats = {r["name"]: r for r in stored.where(F.col("name").isNotNull()).groupBy("name").agg(
        F.count(F.lit(1)).alias("chunks"), F.countDistinct("offset").alias("offsets"),
        F.min("size").alias("size"), F.max("size").alias("max_size"),
        F.min("crc32c").alias("crc"), F.max("crc32c").alias("max_crc")).collect()}
    keys = [r[key] for r in results]
    if len(keys) != len(set(keys)):
        raise RuntimeError(f"{what} stored at {uri!r} holds two results for one {key}: fit again")
    digests = {}
    for r in results:
        for name in (r[c] for c in file_columns if r[c]):
            s = stats.get(name)
            if (s is None or s["size"] != s["max_size"] or s["crc"] != s["max_crc"]
                    or not s["chunks"] == s["offsets"] == len(chunk_files.ranges(s["size"]))):
                raise RuntimeError(f"{what} stored at {uri!r} holds {name} incomplete ({s and s.asDict()}): is "
                                   "the storage's output committer configured? Fit again")
            digests[name] = integrity.FileDigest(int(s["size"]), int(s["crc"]))
    return results, digests


def gather(df, root: str, key: str, file_columns, expected_bytes: int, what: str) -> list[dict]:
    """Runs the build ``df`` (result and chunk rows), writes the files it returns into the driver
    directory ``root`` and returns the result rows (dicts without the chunk columns): one per
    ``key`` value, each naming complete files (``file_columns``). ``expected_bytes`` (about the
    files' total size) sets how many partitions the output is read in; a driver whose heap is too
    small for it is refused first (ivf_memory.check_driver_heap_for), naming ``what``."""
    check_driver_heap_for(df.sparkSession, what, expected_bytes)
    partitions = max(2, min(4096, math.ceil(expected_bytes / PARTITION_BYTES)))
    shuffled = df.repartition(partitions, F.col("name"), F.col("offset"))
    problem = None
    for _ in range(_ATTEMPTS):
        results, files = _read_once(shuffled, root)
        problem = _check(results, files, key, file_columns)
        if problem is None:
            return results
    raise RuntimeError(f"the files of a build on executors could not be gathered whole in {_ATTEMPTS} reads "
                       f"({problem}): were executors lost repeatedly? Fit again")


def _read_once(df, root: str):
    """(result rows, the assembled files) of one read of the shuffled build output."""
    results = []
    with chunk_files.Assembler(root) as files:
        for row in df.toLocalIterator():
            row = row.asDict()
            name, offset, size, data = (row.pop(n) for n in ("name", "offset", "size", "data"))
            row.pop("crc32c")
            if name is None:
                results.append(row)
            else:
                files.add(name, offset, data, size)
    return results, files


def _check(results, files: chunk_files.Assembler, key, file_columns) -> str | None:
    """Why the gathered output is not one whole attempt per task; None when it is."""
    keys = [r[key] for r in results]
    if len(keys) != len(set(keys)):
        return f"{key} returned by two task attempts"
    for r in results:
        for name in (r[c] for c in file_columns if r[c]):
            if not files.whole(name):
                return f"{name} has {files.written.get(name, 0)} of {files.sizes.get(name, '?')} bytes"
    return None
