"""Writing result tables so that a failed or interrupted run never leaves an output that looks complete.

Parquet goes to a hidden temporary file beside the destination, written batch
by batch, and is renamed into place only when the last batch is written. A new
Delta table is written the same way (a temporary directory, then rename); an
existing Delta table replaced with ``overwrite`` is overwritten in place by a
Delta commit, which is atomic by itself and keeps the table's history.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("parquet", "delta")


class UsageError(ValueError):
    """The command asks for something that cannot be done as written (exit code 2)."""


class DataError(ValueError):
    """The input data cannot be used as it is (exit code 1)."""


class OutputError(OSError):
    """The output could not be written (a full disk, an I/O error): exit code 1, nothing left behind."""


_ARROW_SOURCE = re.compile(r"^/.*\.(cc|h|cpp):\d+")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without Arrow's source-location lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not _ARROW_SOURCE.match(ln.strip())]
    return "; ".join(lines) or type(exc).__name__


def os_reason(exc: OSError) -> str:
    """Why an I/O call failed, in words ("No space left on device"), without the temporary path."""
    if exc.errno:
        return os.strerror(exc.errno)
    return re.sub(r"^cannot (write|read|open) '[^']*': ", "", one_line(exc))


def check_destination(path: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """Fails early (before any work) if ``path`` exists without ``overwrite`` or its directory is missing."""
    if not path:
        raise UsageError("the output path is empty")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path!r}: directory {parent!r} does not exist")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"{path!r} already exists: pass {flag} to replace it")
    if overwrite and os.path.exists(path):
        kind = special_kind(os.stat(path).st_mode)  # follows links: /dev/stdout is a link to a terminal
        if kind:
            raise UsageError(f"{path!r} is {kind}, not a file or table: sparknn writes a new Parquet file or Delta "
                             "table and renames it into place, which would replace it; choose another output")
    if overwrite and os.path.isdir(path) and not os.path.islink(path) and not _is_table_dir(path):
        raise UsageError(f"{path!r} is a directory that is not a table written by sparknn or Spark (not a Delta "
                         "table, not only Parquet files): --overwrite does not delete it; choose another output")
    if not os.access(parent, os.W_OK | os.X_OK):  # also a read-only file system, even for root
        raise UsageError(f"cannot write {path!r}: directory {parent!r} is not writable")


def special_kind(mode: int) -> str:
    """What a path that is neither a regular file nor a directory is ("" for those two)."""
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "" if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "a special file"


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_separate(outputs: Iterable[tuple[str, str]], inputs: Iterable[tuple[str, str]]) -> None:
    """Refuses an output that is an input, lies inside an input directory, or contains an input.

    Paths are compared after resolving symbolic links (and by inode when both
    exist), so ``-o`` cannot replace or grow the data being read, with or
    without ``--overwrite``.
    """
    inputs = [(what, path, os.path.realpath(path)) for what, path in inputs]
    for out_what, out in outputs:
        real_out = os.path.realpath(out)
        for what, path, real_in in inputs:
            same = real_out == real_in or (os.path.exists(out) and os.path.exists(path)
                                           and os.path.samefile(out, path))
            if same:
                problem = "is the same path as"
            elif _within(real_out, real_in):
                problem = "is inside"
            elif _within(real_in, real_out):
                problem = "contains"
            else:
                continue
            raise UsageError(f"the {out_what} {out!r} {problem} the {what} {path!r}: write it somewhere else "
                             "(an output never replaces or lands among the data being read)")


def sync_file(path: str) -> None:
    """Flushes a finished file (or a directory's entries) to disk before it is committed (renamed into
    place) or after a rename in it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_table_dir(path: str) -> bool:
    """A Delta table, or a directory of Parquet part files (Spark's output): what --overwrite may replace.

    A typo such as ``-o ~ --overwrite`` must not delete a directory of other files.
    """
    if is_delta_table(path):
        return True
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(("_", ".")):  # _SUCCESS, .crc files, our own hidden temporaries
                continue
            if not entry.is_file(follow_symlinks=False) or not entry.name.endswith(".parquet"):
                return False
    return True


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


# Page checksums (readers can verify pages); no dictionaries: ids are distinct and neighbour ids
# and distances nearly so, so a dictionary only fills up and is dropped. Fashion-MNIST's self-join
# (70k rows of 10 neighbours, three writes each): 0.07-0.29 s and 6.2 MB with them, 0.036-0.045 s
# and 5.3 MB without.
PARQUET_WRITE = {"write_page_checksum": True, "use_dictionary": False}


def _write_parquet(path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    tmp = temp_sibling(path)
    rows = 0
    source = _Capture(batches)  # tells the batches' own errors from the writer's
    try:
        with pq.ParquetWriter(tmp, schema, **PARQUET_WRITE) as writer:
            for batch in source:
                writer.write_batch(batch)
                rows += batch.num_rows
        commit(tmp, path)
    except OutputError:
        remove(tmp)
        raise
    except OSError as exc:  # a full disk, an I/O error: one line naming the output
        remove(tmp)
        if exc is source.error:
            raise
        raise OutputError(exc.errno or errno.EIO, f"cannot write {path!r}: {os_reason(exc)}; nothing was written"
                          ) from exc
    except BaseException:
        remove(tmp)
        raise
    return rows


class _Captured:
    text = ""


@contextmanager
def _native_stderr_captured() -> Iterator[_Captured]:
    """Collects what native code writes to file descriptor 2 while the block runs.

    deltalake's Rust runtime prints panics of its worker threads there (on a
    full disk: a panic message and a Rust backtrace beside the Python error).
    Python's own stderr (progress bars, warnings) keeps going to the terminal.
    The caller replays the text on success and keeps it for ``--debug`` on failure.
    """
    captured = _Captured()
    try:
        sys.stderr.flush()
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capsys: Python's stderr is not fd 2
        python_on_fd2 = False
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if python_on_fd2:
            sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding,
                              errors="backslashreplace")
        try:
            yield captured
        finally:
            if python_on_fd2:
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "backslashreplace")


def _delta_failure(path: str, exc: BaseException, native: str) -> OutputError:
    """One line for a failed Delta write: deltalake reports a full disk as a DeltaError (or a Rust
    panic) whose text holds the OS error; the full text stays on the chained exception."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "No space left on device" in text + native or "os error 28" in text + native:
        error = OutputError(errno.ENOSPC, f"no space left on the device while writing the Delta table {path!r}; "
                            "nothing was written")
    else:
        detail = lines[0] if lines else type(exc).__name__
        error = OutputError(errno.EIO, f"cannot write the Delta table {path!r}: {detail}; nothing was written")
    if native.strip() and hasattr(error, "add_note"):  # Python 3.11+: shown with the traceback (--debug)
        error.add_note("deltalake's native error output:\n" + native.rstrip())
    return error


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
    native = _Captured()
    try:
        with _native_stderr_captured() as native:
            if in_place:
                write_deltalake(path, reader, mode="overwrite", schema_mode="overwrite")
            else:
                write_deltalake(tmp, reader, mode="error")
        if tmp is not None:
            commit(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            remove(tmp)
        error, source.error = source.error, None
        if error is None:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError, OutputError)):
                raise
            # deltalake's DeltaError, an OSError, or a Rust panic (pyo3's PanicException is a BaseException)
            raise _delta_failure(path, exc, native.text) from exc
        try:
            raise error from None
        finally:
            del error  # no reference cycle through this frame: the index it holds is freed promptly
    if native.text:
        sys.stderr.write(native.text)  # nothing native said is lost on success
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
