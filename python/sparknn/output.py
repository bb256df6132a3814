"""Writing result tables so that a failed or interrupted run never leaves an output that looks complete.

Parquet goes to a hidden temporary file beside the destination, written batch
by batch, and is renamed into place only when the last batch is written. A new
Delta table is written the same way (a temporary directory, then rename); an
existing Delta table replaced with ``overwrite`` is overwritten in place by a
Delta commit, which is atomic by itself and keeps the table's history.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("parquet", "delta")


class UsageError(ValueError):
    """The command asks for something that cannot be done as written (exit code 2)."""


class DataError(ValueError):
    """The input data cannot be used as it is (exit code 1)."""


def check_destination(path: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Fails early (before any work) if ``path`` exists without ``overwrite`` or its directory is missing."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path!r}: directory {parent!r} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{path!r} already exists: pass {flag} to replace it")


def check_format(fmt: str) -> None:
    """Fails early for an unknown format, or for Delta without the deltalake package."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "delta":
        try:
            import deltalake  # noqa: F401
        except ImportError:
            raise UsageError("--format delta needs the deltalake package: pip install 'sparknn[delta]'") from None


def temp_sibling(path: str, tag: str = "tmp") -> str:
    """A hidden path in the destination's directory (same filesystem, so the final rename is atomic).

    The leading dot keeps it out of Parquet datasets that read the directory.
    """
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.sparknn-{tag}-{uuid.uuid4().hex[:12]}")


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def commit(tmp: str, dest: str) -> None:
    """Moves the finished ``tmp`` (file or directory) to ``dest``, replacing what was there."""
    if not os.path.lexists(dest) or (os.path.isfile(tmp) and os.path.isfile(dest)):
        os.replace(tmp, dest)  # atomic
        return
    # A directory cannot be renamed over an existing path: move the old one aside first.
    old = temp_sibling(dest, "old")
    os.rename(dest, old)
    os.rename(tmp, dest)
    remove(old)


def is_delta_table(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "_delta_log"))


class _Capture:
    """Iterates ``batches`` and keeps any exception it raises.

    deltalake consumes the batches through the Arrow C stream interface, which
    turns a Python exception into a generic error; re-raising the kept one
    preserves the clear message (and the exit code) of a data error.
    """

    def __init__(self, batches: Iterable[pa.RecordBatch]):
        self._it = iter(batches)
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self

    def __next__(self) -> pa.RecordBatch:
        try:
            return next(self._it)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


def _write_parquet(path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    tmp = temp_sibling(path)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        commit(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    return rows


def _write_delta(path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], overwrite: bool) -> int:
    from deltalake import write_deltalake

    rows = 0

    def counted():
        nonlocal rows
        for batch in batches:
            rows += batch.num_rows
            yield batch

    source = _Capture(counted())
    reader = pa.RecordBatchReader.from_batches(schema, source)
    in_place = overwrite and is_delta_table(path)
    tmp = None if in_place else temp_sibling(path)
    try:
        if in_place:
            write_deltalake(path, reader, mode="overwrite", schema_mode="overwrite")
        else:
            write_deltalake(tmp, reader, mode="error")
            commit(tmp, path)
    except BaseException:
        if tmp is not None:
            remove(tmp)
        error, source.error = source.error, None
        if error is None:
            raise
        try:
            raise error from None
        finally:
            del error  # no reference cycle through this frame: the index it holds is freed promptly
    return rows


def write_batches(path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], fmt: str = "parquet",
                  overwrite: bool = False) -> int:
    """Writes ``batches`` (consumed lazily, one at a time) as a Parquet file or a Delta table.

    Returns the number of rows written.
    """
    check_format(fmt)
    check_destination(path, overwrite)
    if fmt == "parquet":
        return _write_parquet(path, schema, batches)
    return _write_delta(path, schema, batches, overwrite)


def write_table(path: str, table: pa.Table, fmt: str = "parquet", overwrite: bool = False) -> int:
    return write_batches(path, table.schema, table.to_batches(max_chunksize=65_536), fmt, overwrite)
