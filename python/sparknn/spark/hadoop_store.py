"""A saved model at any URI the session's Hadoop FileSystem handles (hdfs:, s3a:, gs:, abfss:,
dbfs:, viewfs:, ...), reached only through Spark's own readers and writers: no Python file I/O
on the URI, no SparkContext (so it works on Spark Connect), no path two machines must share.

    URI/metadata/                    pyspark.ml metadata (class, uid, params): PipelineModel.load reads it
    URI/sparknn/<version>/files/     Parquet: the model's files in chunks (name, offset, data)
    URI/sparknn/<version>/record/    text, one JSON line: the pyspark.ml metadata with the model's
                                     layout, and the size and CRC-32C of every file (the commit)

A save writes a new version: its files, then its record, then the metadata. A version without a
record does not exist for the loader, which takes the newest version with one; with overwrite,
the older versions are removed only after the new record is written. So a save killed at any
point leaves the model saved before loadable and answering the same, and nothing partial that
loads. Versions sort by time (``<ns since epoch>-<random>``); Spark's output commit protocol
makes each directory appear whole (on object stores: with the committer the user configures).

Loading copies the files, chunk by chunk (``toLocalIterator``: one partition in memory at a
time), into a directory of the driver (the client, on Connect), checks every file against its
digest, and from there they reach the executors like the files of a model built on the driver
(``addFile`` / file artifacts): each node keeps one copy on its local disk and maps it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace
from functools import partial
from urllib.parse import urlparse

import pyarrow as pa
from pyspark.sql import functions as F

from sparknn import integrity
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn.spark import chunk_files, runtime
from sparknn.spark.layout import ChunkSource, Layout

_FORMAT = 1
_CHUNK_ARROW = pa.schema([("name", pa.string()), ("offset", pa.int64()), ("data", pa.binary())])
_CHUNK_SPARK = "name string, offset bigint, data binary"


def is_uri(path: str) -> bool:
    """True for a URI with a scheme other than file: (a Windows drive letter is not a scheme)."""
    scheme = urlparse(path).scheme
    return len(scheme) > 1 and scheme != "file"


def is_under(path: str, uri: str) -> bool:
    """Whether ``path`` lies under the model directory ``uri``."""
    return path.startswith(uri.rstrip("/") + "/")


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


def remove_tree(spark, uri: str) -> None:
    """Deletes ``uri`` recursively through Hadoop's FileSystem (classic sessions; Spark Connect has
    no file operations, so there it stays: it holds nothing that loads as a model)."""
    if not runtime.is_connect(spark):
        fs, path = _filesystem(spark, uri)
        fs.delete(path, True)


def _filesystem(spark, uri: str):
    """(Hadoop FileSystem, Path) of ``uri`` on a classic session."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _new_version() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


# -- reading small text through Spark -----------------------------------------------------------
def _lines(spark, path: str) -> list[str] | None:
    """The lines of the text files at ``path`` (a directory or a glob), read by Spark; None when
    nothing is there."""
    from pyspark.errors import AnalysisException

    try:
        return [r[0] for r in spark.read.text(path).collect()]
    except AnalysisException as err:
        if "PATH_NOT_FOUND" in str(err) or "Path does not exist" in str(err):
            return None
        raise


def _write_line(spark, path: str, line: str, overwrite: bool = False) -> None:
    df = spark.createDataFrame([(line,)], "value string").coalesce(1)
    df.write.mode("overwrite" if overwrite else "error").text(path)


def _record_crc(body: dict) -> str:
    return f"{integrity.crc32c(json.dumps(body, sort_keys=True).encode()):08x}"


def _parse_record(line: str, uri: str) -> dict:
    try:
        record = json.loads(line)
        body = {k: v for k, v in record.items() if k != "crc32c"}
        if record["format"] != _FORMAT or record["crc32c"] != _record_crc(body):
            raise ValueError("format or checksum mismatch")
        for d in record["files"].values():
            integrity.FileDigest.from_json(d)
        if not isinstance(record["metadata"], dict) or not isinstance(record["version"], str):
            raise ValueError("no metadata or version")
        return record
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise IndexFileError(f"a version record of the model at {uri!r} is damaged ({err}): save the model "
                             "again") from None


def _records(spark, uri: str, strict: bool = True) -> tuple[list[dict], bool]:
    """Every committed version of the model at ``uri``, oldest first, and whether any record line
    was found at all. ``strict``: a damaged record raises IndexFileError (else it is skipped: an
    overwrite replaces it)."""
    lines = [line for line in (_lines(spark, join(uri, "sparknn", "*", "record")) or []) if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(_parse_record(line, uri))
        except IndexFileError:
            if strict:
                raise
    return sorted(records, key=lambda r: r["version"]), bool(lines)


def _metadata_class(spark, uri: str) -> str | None:
    """The class named by the pyspark.ml metadata at ``uri``; None when there is none."""
    lines = [line for line in (_lines(spark, join(uri, "metadata")) or []) if line.strip()]
    if not lines:
        return None
    try:
        return str(json.loads(lines[0])["class"])
    except (ValueError, KeyError, TypeError):
        return "unreadable metadata"


# -- save ----------------------------------------------------------------------------------------
def _read_chunks(batches, *, layout: Layout):
    """Executor side of a save: the chunks a plan names, read from the files the tasks see."""
    for batch in batches:
        plan = batch.to_pydict()
        for name, src, offset, length in zip(plan["name"], plan["src"], plan["offset"], plan["length"]):
            data = chunk_files.read_range(layout.path(src), offset, length)
            yield pa.RecordBatch.from_arrays([pa.array([name]), pa.array([offset], pa.int64()),
                                              pa.array([data], pa.binary())], schema=_CHUNK_ARROW)


def save(spark, uri: str, layout: Layout, task_layout: Layout, names: dict, metadata_for, overwrite: bool) -> str:
    """Saves the model whose files are ``layout`` (on the driver, or kept at the URI it was loaded
    from) and ``task_layout`` (as tasks reach them) at ``uri``, the files under ``names`` (layout
    name -> saved name). ``metadata_for(saved_layout)`` gives the pyspark.ml metadata to record.
    Returns the URI of the saved files."""
    existing, found = _records(spark, uri, strict=False)
    if not overwrite and (found or _metadata_class(spark, uri) is not None):
        raise FileExistsError(f"model path {uri!r} already exists: use model.write().overwrite().save()")
    version = _new_version()
    where = join(uri, "sparknn", version)
    task_names = dict(zip(layout.files(), task_layout.files()))
    remote = layout.chunks.names if layout.chunks else frozenset()
    digests, plan = {}, []
    for src in layout.files():
        if src in remote:  # kept at the model's URI: copied from there below
            digests[names[src]] = layout.chunks.digest(src).to_json()
            continue
        digest = integrity.digest(os.path.join(layout.root, src))
        digests[names[src]] = digest.to_json()
        plan += [(names[src], task_names[src], offset, length) for offset, length in chunk_files.ranges(digest.size)]
    saved_layout = replace(layout, chunks=None).renamed(names.__getitem__, root=where, shipped=False)
    metadata = metadata_for(saved_layout)
    parallelism = max(1, min(len(plan), runtime.default_parallelism(spark)))
    chunks = (spark.createDataFrame(plan, "name string, src string, offset bigint, length bigint")
              .repartition(parallelism)
              .mapInArrow(partial(_read_chunks, layout=task_layout), _CHUNK_SPARK))
    if remote:
        pairs = [F.lit(c) for src in sorted(remote) for c in (src, names[src])]
        copied = (spark.read.parquet(layout.chunks.uri).where(F.col("name").isin(sorted(remote)))
                  .select(F.element_at(F.create_map(*pairs), F.col("name")).alias("name"), "offset", "data"))
        chunks = chunks.unionByName(copied)
    chunk_files.write_parquet(chunks, join(where, "files"))
    body = {"format": _FORMAT, "version": version, "chunkBytes": chunk_files.CHUNK_BYTES, "files": digests,
            "metadata": metadata}
    _write_line(spark, join(where, "record"), json.dumps({**body, "crc32c": _record_crc(body)}, sort_keys=True))
    # The model is committed. The metadata is what pyspark.ml's readers look for (PipelineModel.load
    # reads its class); the loader itself reads the record.
    _write_line(spark, join(uri, "metadata"), json.dumps({k: v for k, v in metadata.items() if k != "sparknn"},
                                                          separators=(",", ":")), overwrite=True)
    _remove_others(spark, uri, version, [r["version"] for r in existing])
    return join(where, "files")


def _remove_others(spark, uri: str, keep: str, known: list[str]) -> None:
    """Removes every version but ``keep``: on classic sessions every other directory under
    ``URI/sparknn`` through Hadoop's FileSystem (older versions, and those of saves that were
    killed or whose record is damaged); on Spark Connect, which has no file operations, each
    ``known`` version's record (from then on it does not exist), then its files, overwritten
    with empty ones."""
    if not runtime.is_connect(spark):
        fs, root = _filesystem(spark, join(uri, "sparknn"))
        for status in fs.listStatus(root):
            if status.getPath().getName() != keep:
                fs.delete(status.getPath(), True)
        return
    for version in known:
        if version != keep:
            where = join(uri, "sparknn", version)
            spark.createDataFrame([], "value string").write.mode("overwrite").text(join(where, "record"))
            spark.createDataFrame([], _CHUNK_SPARK).write.mode("overwrite").parquet(join(where, "files"))


# -- load ----------------------------------------------------------------------------------------
def load(spark, uri: str, local: str) -> tuple[dict, Layout]:
    """The pyspark.ml metadata and the layout of the newest model saved at ``uri``, its files
    copied into the driver directory ``local`` and checked against their digests."""
    records, _ = _records(spark, uri)
    if not records:
        found = _metadata_class(spark, uri)
        if found is None:
            raise FileNotFoundError(f"no saved KNNModel at {uri!r}")
        if not found.endswith("KNNModel"):
            raise InvalidArgumentError(f"{uri!r} holds a {found}, not a sparknn KNNModel")
        raise IndexFileError(f"the KNNModel at {uri!r} has metadata but no committed version: it was saved by "
                             "an older sparknn to a local path, or its save did not finish (save it again)")
    record = records[-1]
    where = join(uri, "sparknn", record["version"])
    expected = {name: integrity.FileDigest.from_json(d) for name, d in record["files"].items()}
    try:
        layout = Layout.from_json(record["metadata"]["sparknn"], local)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise IndexFileError(f"the model record at {where!r} is damaged: {type(err).__name__}: {err}") from None
    if set(layout.files()) != set(expected):
        raise IndexFileError(f"the model record at {where!r} lists files {sorted(expected)} but its layout "
                             f"names {sorted(layout.files())}")
    if layout.ivf is not None:  # a routed model: each part reaches only the tasks that search it
        remote = tuple(sorted((n, expected[n]) for n in layout.files() if n != layout.ivf.quantizer))
        layout = replace(layout, chunks=ChunkSource(join(where, "files"), remote))
    fetch(spark, join(where, "files"), local, {n: expected[n] for n in layout.local_files()}, uri)
    return record["metadata"], layout


def fetch(spark, files_uri: str, local: str, expected: dict, uri: str) -> None:
    """Writes the chunks at ``files_uri`` of the files ``expected`` (name -> digest) into their files
    under ``local``, then verifies each file. ``uri`` names the model in errors."""
    for name in expected:
        if os.path.basename(name) != name or name.startswith("."):
            raise IndexFileError(f"the model at {uri!r} names a file {name!r} outside its directory")
    with chunk_files.Assembler(local, {name: d.size for name, d in expected.items()}) as files:
        try:
            chunks = spark.read.parquet(files_uri).where(F.col("name").isin(list(expected)))
            for row in chunks.toLocalIterator():
                if row["name"] not in expected:
                    raise IndexFileError(f"the model at {uri!r} holds a chunk of {row['name']!r} that its record "
                                         "does not describe: damaged or mixed")
                files.add(row["name"], row["offset"], row["data"])
        except Exception as err:
            if type(err).__name__ == "AnalysisException":
                raise IndexFileError(f"the files of the model at {uri!r} cannot be read ({err}): the model is "
                                     "damaged") from None
            raise
    problem = files.problem()
    if problem is not None:
        raise IndexFileError(f"the model at {uri!r} is damaged: {problem} (chunks are missing, repeated or "
                             "misplaced); save it again")
    for name, digest in expected.items():
        integrity.verify(os.path.join(local, name), digest, f"file of the model at {uri!r}:")
