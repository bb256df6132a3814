"""The command line's inputs: a Parquet file, a directory of Parquet files or a Delta table,
opened and checked before anything is read, then read in record batches, or once and held.

Only the id and vector columns are read. Each file has its own Parquet reader decoding about
READ_BATCH_BYTES of vectors at a time; a job that passes over the vectors several times (a training sample, the build, a
self-join's search) reads them once when they fit in HOLD_FRACTION of the available memory
(``hold_vectors``), and else reads them again for each pass with memory bounded by a batch. Every
error names the input, and for bad rows the row of the whole input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparknn.arrow import PARQUET_READ, decoding_memory, integer_values, vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.index import RowBlock
from sparknn.machine import available_memory, usable_cores
from sparknn.output import DataError, UsageError, one_line, special_kind
from sparknn.progress import Progress
from sparknn.vector_pages import ChunkSource, decode_row_groups, leaf_columns

if TYPE_CHECKING:
    import pyarrow.dataset as ds

# Rows a Parquet reader decodes at a time: at most READ_BATCH, and about READ_BATCH_BYTES of
# vectors (batch_rows). Held reads, 2 threads, medians of 5 alternating rounds: 2048 rows took
# 0.41 / 0.72 / 0.49 s against 4096's 0.45 / 0.82 / 0.63 s (Fashion-MNIST 70k x 784
# dictionary-encoded, 200k x 768, 1M x 128). Long vectors decode faster in fewer bytes: each
# batch's buffers are memory the system clears for every batch once they pass the allocator's
# mapping threshold (Intel Xeon VM, 2026-12-07: 500k x 768 read in 1.8-2.1 s at 341 rows,
# 2.9-5.3 s at 2048, system time 1.0-1.3 s against 2.4-6.1 s; Fashion-MNIST 0.44 s at 512 rows,
# 0.53 s at 2048, 0.75 s at 4096).
READ_BATCH = 2_048
READ_BATCH_BYTES = 1 << 20


def batch_rows(width: float) -> int:
    """Rows per decoded batch for vectors of ``width`` values: about READ_BATCH_BYTES of float32,
    within [64, READ_BATCH]."""
    return int(np.clip(READ_BATCH_BYTES // max(4 * width, 1), 64, READ_BATCH))


def values_per_row(parquet: pq.ParquetFile, column: str, group: int = 0) -> float:
    """The column's values per row in a row group (the vectors' length, for a column of vectors),
    from the footer; 0 when the group is empty or the column is not there."""
    meta = parquet.metadata.row_group(group) if parquet.metadata.num_row_groups > group else None
    leaves = leaf_columns(parquet.metadata, column)
    if meta is None or not meta.num_rows or not leaves:
        return 0.0
    return meta.column(leaves[0]).num_values / meta.num_rows
HOLD_FRACTION = 0.25  # of the available memory: an input at most this large is read once and held
_LISTED = 10  # files named in one error message


class ParquetFileSource:
    """A lone Parquet file, with the part of a pyarrow dataset's interface that Input uses: it is its
    own only fragment.

    Read with pyarrow.parquet alone: importing pyarrow.dataset imports pandas, 0.24 s of the
    command's 0.4 s start. The footer is read once, when opened, as a dataset reads it."""

    filesystem = None  # the local one
    _READ = {**PARQUET_READ, "arrow_extensions_enabled": False}  # the types a dataset's scan gives

    def __init__(self, path: str):
        self.path = path
        self.files = [path]
        with pq.ParquetFile(path, **self._READ) as parquet:
            self.metadata = parquet.metadata
            self.schema = parquet.schema_arrow

    def get_fragments(self) -> Iterator[ParquetFileSource]:
        yield self

    def count_rows(self) -> int:
        return self.metadata.num_rows

    def to_table(self, columns: list[str]) -> pa.Table:
        with pq.ParquetFile(self.path, **self._READ, page_checksum_verification=True) as parquet:
            return parquet.read(columns=columns)


@dataclass
class Input:
    """A Parquet file, a directory of Parquet files or a Delta table, with its two columns checked."""

    path: str
    dataset: ParquetFileSource | ds.Dataset
    id_col: str
    vector_col: str
    num_rows: int
    held: list | None = None  # the vector column once hold_vectors read it: (first row, float32 [m, dim]) in order
    consumed: bool = False  # the held vectors were handed over and let go (vector_batches(consume=True))
    block: RowBlock | None = None  # what the held arrays are views of: every row, in row order

    def take_block(self) -> RowBlock:
        """The held vectors as one RowBlock, handed over whole (an ivf index adopts it): the input
        lets go of them as ``vector_chunks(consume=True)`` does."""
        if self.block is None or self.consumed:
            raise RuntimeError(f"the vectors of {self.path!r} are not held in one block")
        block, self.block, self.held, self.consumed = self.block, None, None, True
        return block

    def batches(self, columns, batch_size: int | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row, batch) over ``columns`` in file order, batches of at most ``batch_size`` rows.

        Each file has its own Parquet reader decoding batch_rows of its vectors at a time. Arrow's
        dataset scanner decodes a whole row group at once: reading a 50k x 784 list column took
        4x its size in new memory, and new memory is not free (first touches of 220 MB took up
        to 0.8 s of system time on the development VM)."""
        offset = 0
        with reading(self.path):
            for fragment in self.dataset.get_fragments():
                with pq.ParquetFile(fragment.path, filesystem=fragment.filesystem, **PARQUET_READ,
                                    page_checksum_verification=True) as parquet:
                    size = batch_rows(values_per_row(parquet, self.vector_col)) if self.vector_col in columns \
                        else READ_BATCH
                    size = size if batch_size is None else min(batch_size, size)
                    for batch in parquet.iter_batches(batch_size=size, columns=list(columns)):
                        if batch.num_rows:
                            yield offset, batch
                            offset += batch.num_rows

    def vector_chunks(self, dim: int | None = None, consume: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [m, dim]) over the vector column as held or read (views of Arrow's
        buffers where the values are float32), each checked (arrow.vectors_to_numpy).

        ``consume``: held vectors are let go chunk by chunk as they are passed on, so a build
        that keeps its own copy (the index) does not hold the input's beside it; the input
        cannot be passed over again (an error, not an empty pass)."""
        if self.consumed:
            raise RuntimeError(f"the vectors of {self.path!r} were let go after one pass (consume=True)")
        if self.held is not None:
            if not consume:
                yield from self.held
                return
            self.consumed = True
            held, self.held, self.block = self.held, None, None
            held.reverse()
            while held:
                yield held.pop()  # the last reference to a passed chunk is the consumer's
            return
        for first, batch in self.batches([self.vector_col]):
            x = checked_vectors(batch.column(0), self.vector_col, dim, first)
            dim = x.shape[1]
            yield first, x

    def vector_batches(self, batch_size: int, dim: int | None = None,
                       consume: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [batch_size, dim]) over the vector column, the last batch shorter.

        Chunks shorter than a batch are gathered into one buffer reused for every batch: a batch
        is valid until the next one is asked for (the engine copies what it keeps). Vectors held
        in one block are sliced from it (no copy: a gathered 50k-row buffer was 157 MB of fresh
        memory at 784 dimensions). ``consume``: as vector_chunks."""
        if self.block is not None and not consume:  # held in one block: every batch a slice of it
            rows = self.block.array()
            for first in range(0, len(rows), batch_size):
                yield first, rows[first:first + batch_size]
            return
        buffer, filled, start = None, 0, 0
        for first, x in self.vector_chunks(dim, consume):
            lo = 0
            while lo < len(x):
                if filled == 0 and len(x) - lo >= batch_size:  # a whole batch in place
                    yield first + lo, x[lo:lo + batch_size]
                    lo += batch_size
                    continue
                if buffer is None or buffer.shape[1] != x.shape[1]:
                    buffer = np.empty((batch_size, x.shape[1]), dtype=np.float32)
                if filled == 0:
                    start = first + lo
                take = min(batch_size - filled, len(x) - lo)
                buffer[filled:filled + take] = x[lo:lo + take]
                filled, lo = filled + take, lo + take
                if filled == batch_size:
                    yield start, buffer
                    filled = 0
        if filled:
            yield start, buffer[:filled]


def hold_vectors(inp: Input, progress: Progress, dim: int | None = None, budget: int | None = None,
                 threads: int = 0, one_block: bool = False) -> bool:
    """Reads the vector column once into memory when it takes at most ``budget`` bytes (default:
    HOLD_FRACTION of the memory available), so a job passing over it several times (training
    sample, build, self-join search) decodes the Parquet once. Returns whether it is held; a
    larger input stays streamed in batches (the dimension is known after the first batch, so
    at most one batch was read for nothing). ``dim``: the dimension every row must have.

    The row groups of every file are decoded side by side on ``threads`` threads (0: every core
    this process may use), each by its own Parquet reader: one reader decodes on one core, and
    decoding was the slowest step of a self-join on long vectors (500k x 768 in a new process:
    11.4 -> 3.9 s on 2 cores). Each row group is held as one float32 array (``_decode``): the
    vectors take their size in memory, not the twice that Arrow's decoded batches hold.
    ``one_block``: all in one RowBlock (``inp.block``) that an ivf build adopts as its lists
    (``Input.take_block``); else an array per row group, each freed once a build consumed it.
    """
    if budget is None:
        available = available_memory()
        budget = int(available * HOLD_FRACTION) if available else 0
    chunks = inp.vector_chunks(dim)
    try:
        peek = next(chunks, None)  # the dimension, from one batch
    finally:
        chunks.close()
    if peek is None:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    dim = peek[1].shape[1]
    if inp.num_rows * dim * 4 > budget:
        return False
    with reading(inp.path):
        units = _row_groups(inp)
    if sum(rows for *_, rows in units) != inp.num_rows:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    block = RowBlock(inp.num_rows, dim) if one_block else None
    held: list = []
    with decoding_memory(), progress.bar(inp.num_rows, "reading") as bar:
        # in row order: the first unit with an error raises first, as a serial read would
        for _, part in decode_side_by_side(units, [u[-1] for u in units], block, threads,
                                           lambda u, into, decoded: _decode(inp, u, dim, into, decoded),
                                           lambda u: ChunkSource(u[0].path, inp.vector_col, u[1], u[0].filesystem),
                                           dim, bar.update):
            held.append(part)
    inp.held, inp.block = held, block
    return True


def decode_side_by_side(units: list, counts: list[int], block: RowBlock | None, threads: int,
                        decode: Callable[[object, np.ndarray | None, bool], object],
                        source: Callable[[object], ChunkSource] | None = None, dim: int = 0,
                        progress: Callable[[int], None] | None = None) -> Iterator[tuple[object, object]]:
    """(unit, decode(unit, into, decoded)) of every unit, in unit order, decoded ``threads`` at a
    time (0: every core this process may use): each unit by a Parquet reader of its own, since one
    reader decodes on one core. ``into``: the unit's rows in ``block`` (units hold ``counts`` rows
    each, one after another), or None without a block. The first unit to fail raises, the units
    not started are cancelled. The CLI's held input and the Spark driver's direct read share this.

    With ``source`` (a unit's row group as a vector_pages.ChunkSource) and the rows' length known
    (the block's, else ``dim``: each unit's ``into`` is then an array of its own), the units are
    first decoded page by page (vector_pages: every core on each row group, 4-5x faster than
    Arrow's list decoder); ``decoded`` tells ``decode`` that its ``into`` is filled. The units
    that path leaves (a null vector, a ragged row, an encoding it does not decode) are read by
    Arrow, whose errors say what is wrong. ``progress(rows)``: called (in this thread) with each
    unit's rows as it is decoded, page by page or as it is yielded."""
    rows = block.array() if block is not None else None
    own = rows is None and source is not None and dim > 0
    slices, first = [], 0
    for count in counts:
        slices.append(rows[first:first + count] if rows is not None
                      else np.empty((count, dim), dtype=np.float32) if own else None)
        first += count
    workers = max(1, min(len(units), threads or usable_cores()))
    decoded = [False] * len(units)
    if source is not None and (own or (rows is not None and rows.shape[1])):
        decoded = decode_row_groups([source(u) for u in units], slices, threads or usable_cores(),
                                    progress)
    with ThreadPoolExecutor(workers) as pool:
        try:
            for unit, count, was_decoded, part in zip(units, counts, decoded,
                                                      pool.map(decode, units, slices, decoded)):
                if progress is not None and not was_decoded:
                    progress(count)
                yield unit, part
        finally:
            pool.shutdown(cancel_futures=True)


def _row_groups(inp: Input) -> list[tuple]:
    """(fragment, row group, first row of the input, rows) of every row group in file order."""
    units, first = [], 0
    for fragment in inp.dataset.get_fragments():
        meta = fragment.metadata
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if rows:
                units.append((fragment, group, first, rows))
                first += rows
    return units


def _decode(inp: Input, unit: tuple, dim: int, into: np.ndarray | None = None,
            decoded: bool = False) -> tuple[int, np.ndarray]:
    """One row group's vectors as one float32 [rows, dim] array, decoded batch_rows(dim) rows at a time
    by a reader of its own.

    Copied out of Arrow's batches: Parquet's list decoder reserves up to twice the values it
    holds (60 batches of 4096 x 768 floats, 755 MB, held 1478 MB of Arrow's memory), and each
    batch's memory goes back to Arrow's pool for the next batch to reuse. ``into``: the rows'
    place in a block of every row (its slice), else an array of its own; ``decoded``: it holds them
    already (decode_side_by_side's page decoder)."""
    fragment, group, first, rows = unit
    if decoded:  # by the page decoder (decode_side_by_side)
        return first, into
    with reading(inp.path), pq.ParquetFile(fragment.path, filesystem=fragment.filesystem, **PARQUET_READ,
                                           page_checksum_verification=True) as parquet:
        out = row_group_vectors(parquet, inp.vector_col, group, rows,
                                lambda column, at: checked_vectors(column, inp.vector_col, dim, first + at), into)
    if out is None:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    return first, out


def row_group_vectors(parquet: pq.ParquetFile, column: str, group: int, rows: int,
                      convert: Callable[[pa.Array, int], np.ndarray],
                      into: np.ndarray | None = None) -> np.ndarray | None:
    """Row group ``group``'s vectors in one float32 [rows, dim] array (``into``, else one of its
    own), decoded batch_rows rows at a time: ``convert(batch's column, its first row in the
    group)`` gives each batch's matrix (and raises on a bad vector). None when the group does not
    fill ``rows`` rows (the file changed while it was read); ValueError when a batch's length
    differs from the first's, or from ``into``'s."""
    out, filled = into, 0
    size = batch_rows(into.shape[1] if into is not None else values_per_row(parquet, column, group))
    for batch in parquet.iter_batches(batch_size=size, columns=[column], row_groups=[group]):
        if filled + batch.num_rows > rows:
            break
        x = convert(batch.column(0), filled)
        if out is None:
            out = np.empty((rows, x.shape[1]), dtype=np.float32)
        elif x.shape[1] != out.shape[1]:  # said, not left to numpy: a length-1 batch would broadcast
            raise ValueError(f"vectors of length {x.shape[1]} where {out.shape[1]} were expected")
        out[filled:filled + len(x)] = x
        filled += len(x)
    return out if filled == rows else None


@contextmanager
def reading(path: str, what: str = "input") -> Iterator[None]:
    """Reports a failure to read or decode ``path`` (a damaged page, an unreadable file) in one line."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:  # pyarrow's I/O and decoding errors are OSErrors
        raise DataError(f"cannot read {what} {path!r}: {one_line(exc)}") from None


def _open_delta(path: str) -> ds.Dataset:
    """The current version's files of a Delta table, not every file in the directory."""
    try:
        from deltalake import DeltaTable
    except ImportError:
        raise UsageError(f"{path!r} is a Delta table: reading it needs the deltalake package "
                         "(pip install 'sparknn[delta]')") from None
    try:
        return DeltaTable(path).to_pyarrow_dataset()
    except Exception as exc:  # noqa: BLE001 - deltalake's errors (a damaged or empty log) share no base class
        # Its messages end with a Rust backtrace when RUST_BACKTRACE is set: the first line says what is wrong.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = re.split(r"; 0: | 0: ", first)[0]
        raise DataError(f"cannot read the Delta table {path!r}: {first}") from None


def _unreadable_entries(path: str) -> list[tuple[str, str]]:
    """Entries of a directory input that Arrow's listing would skip silently, with what each is:
    broken symbolic links, pipes, devices, sockets.

    Each is a part the user may have meant to be read; dropping it would give an answer over
    fewer items with exit 0. Names starting with "." or "_" are skipped, as Arrow skips them.
    """
    odd = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in files + dirs:
            full = os.path.join(root, name)
            if name.startswith((".", "_")):
                continue
            if not os.path.exists(full):
                odd.append((full, f"a broken symbolic link to {os.readlink(full)!r}"))
            elif special_kind(os.stat(full).st_mode):
                odd.append((full, special_kind(os.stat(full).st_mode)))
    return sorted(odd)


def check_plain(path: str, what: str, wanted: str = "a Parquet file, a directory or a Delta table") -> None:
    """A single-file input or index must be a regular file: opening a pipe waits for a writer forever."""
    kind = special_kind(os.stat(path).st_mode)
    if kind:
        raise DataError(f"{what} {path!r} is {kind}, not a file: give {wanted}")


def _open_dataset(path: str, what: str) -> ParquetFileSource | ds.Dataset:
    if not os.path.isdir(path):
        check_plain(path, what)
        return ParquetFileSource(path)
    if os.path.isdir(os.path.join(path, "_delta_log")):
        return _open_delta(path)
    odd = _unreadable_entries(path)
    if odd:
        named = "; ".join(f"{os.path.relpath(p, path)} is {kind}" for p, kind in odd[:_LISTED])
        more = f"; and {len(odd) - _LISTED} more" if len(odd) > _LISTED else ""
        raise DataError(f"{what} directory {path!r} has entries that cannot be read as files: "
                        f"{named}{more}; fix or remove them")
    return _open_directory(path)


def _open_directory(path: str) -> ds.Dataset:
    import pyarrow.dataset as ds  # only for directories and Delta tables: it imports pandas (ParquetFileSource)

    # Skips files starting with "." or "_" (_SUCCESS, .crc). Pages written with a CRC (parquet-mr's
    # default, pyarrow's write_page_checksum) are checked: a damaged page is an error, not wrong vectors.
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True, use_buffered_stream=True, **PARQUET_READ))
    dataset = ds.dataset(path, format=fmt)
    if not dataset.files:
        raise DataError(f"{path!r} contains no Parquet files")
    return dataset


def _check_vector_type(typ: pa.DataType, name: str, path: str) -> None:
    if pa.types.is_struct(typ):  # a Spark ML vector; arrow.py checks its fields
        return
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        value = typ.value_type
        if pa.types.is_floating(value) or pa.types.is_integer(value):
            return
    raise DataError(f"column {name!r} in {path!r} has type {typ}: expected a list of float or double "
                    "(array<float>, array<double>) or a Spark ML dense vector")


def _check_id_type(typ: pa.DataType, name: str, path: str) -> None:
    if pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return
    raise DataError(f"column {name!r} in {path!r} has type {typ}: ids must be integers or strings")


def _plain(typ: pa.DataType) -> pa.DataType:
    """A type without its list element's name and nullability, which writers choose differently
    (Spark: ``element``, not null; older pyarrow: ``item``) for the same data."""
    if pa.types.is_fixed_size_list(typ):
        return pa.list_(_plain(typ.value_type), typ.list_size)
    if pa.types.is_large_list(typ):
        return pa.large_list(_plain(typ.value_type))
    if pa.types.is_list(typ):
        return pa.list_(_plain(typ.value_type))
    return typ


def _check_one_schema(dataset: ParquetFileSource | ds.Dataset, path: str, columns: tuple[str, ...], what: str) -> None:
    """Every file of a directory must give the needed columns the same types.

    Arrow would take the first file's schema and cast the others to it: numeric
    string ids silently become integers, and a file without a column reads as
    nulls. Reads each file's footer only.
    """
    if isinstance(dataset, ParquetFileSource):
        return
    import pyarrow.dataset as ds  # loaded already: the dataset is one of its

    if not isinstance(dataset, ds.FileSystemDataset) or len(dataset.files) < 2:
        return

    def describe(schema: pa.Schema) -> tuple:
        return tuple(str(_plain(schema.field(c).type)) if c in schema.names else None for c in columns)

    def show(shape: tuple) -> str:
        return ", ".join(f"{c}: {t}" if t is not None else f"no column {c!r}" for c, t in zip(columns, shape))

    reference, odd = None, []
    for fragment in dataset.get_fragments():
        try:
            shape = describe(fragment.physical_schema)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read {what} file {fragment.path!r} as Parquet: {one_line(exc)}") from None
        if reference is None:
            reference = (fragment.path, shape)
        elif shape != reference[1]:
            odd.append((fragment.path, shape))
    if odd:
        named = "; ".join(f"{os.path.relpath(p, path)} has {show(shape)}" for p, shape in odd[:_LISTED])
        more = f"; and {len(odd) - _LISTED} more files" if len(odd) > _LISTED else ""
        raise DataError(f"the files of {what} {path!r} do not share one schema: "
                        f"{os.path.relpath(reference[0], path)} has {show(reference[1])}, but {named}{more}. "
                        "Rewrite them with one schema (or read only the matching files)")


def open_input(path: str, id_col: str, vector_col: str, what: str = "input") -> Input:
    """Opens ``path`` and checks the columns exist with usable types and that there are rows.

    Reads only metadata (the footer of each file): nothing here costs time on large inputs.
    """
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    try:
        dataset = _open_dataset(path, what)
        _check_one_schema(dataset, path, (id_col, vector_col), what)
        schema = dataset.schema
        for name, flag in ((id_col, "--id-col"), (vector_col, "--vector-col")):
            if name not in schema.names:
                raise UsageError(f"{what} {path!r} has no column {name!r} ({flag}); its columns are: "
                                 f"{', '.join(schema.names) or '(none)'}")
        _check_id_type(schema.field(id_col).type, id_col, path)
        _check_vector_type(schema.field(vector_col).type, vector_col, path)
        num_rows = dataset.count_rows()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {what} {path!r} as Parquet: {one_line(exc)}") from None
    if num_rows == 0:
        raise DataError(f"{what} {path!r} has no rows")
    return Input(path, dataset, id_col, vector_col, num_rows)


def read_ids(inp: Input, unique: bool) -> pa.Array:
    """The id column as one array, checked for nulls (and duplicates when ``unique``)."""
    with reading(inp.path):
        ids = inp.dataset.to_table(columns=[inp.id_col]).column(0).combine_chunks()
    # (pyarrow.compute only to explain an error: importing it costs 0.05-0.07 s of a job's start)
    if ids.null_count:
        import pyarrow.compute as pc

        row = int(pc.index(pc.is_null(ids), True).as_py())
        raise DataError(f"column {inp.id_col!r} has a null id at row {row}")
    if unique and _has_duplicates(ids):
        import pyarrow.compute as pc

        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]
        value = dup["values"].as_py()
        rows = np.flatnonzero(pc.equal(ids, pa.scalar(value, ids.type)).to_numpy(zero_copy_only=False))
        raise DataError(f"column {inp.id_col!r} has duplicate ids: {value!r} appears {dup['counts'].as_py()} "
                        f"times (rows {', '.join(map(str, rows[:5]))}); every item needs a distinct id")
    return ids


def _has_duplicates(ids: pa.Array) -> bool:
    """Whether a null-free id column repeats a value. Integer ids: ascending ones (the usual) are
    seen in one pass, others sorted; a hash table's fresh memory cost more (pc.unique of 70k ids:
    0.02-0.19 s on a first call against numpy's 3 ms; 10M: 0.9-6.6 s against 1.0 s)."""
    if pa.types.is_integer(ids.type):
        values = integer_values(ids)
        if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
            return False
        ordered = np.sort(values)
        return bool((ordered[1:] == ordered[:-1]).any())
    import pyarrow.compute as pc

    return len(pc.unique(ids)) != len(ids)


_ROW = re.compile(r"\brow (\d+)")


@contextmanager
def rows_of_input(name: str, first_row: int, num_rows: int) -> Iterator[None]:
    """Reports errors about one batch with row numbers of the whole input.

    arrow.py and the engine count rows within the batch they are given; the
    message is shifted by the batch's first row so the user can find the row.
    """
    try:
        yield
    except InvalidArgumentError as exc:
        message = _ROW.sub(lambda m: f"row {int(m.group(1)) + first_row}", str(exc))
        for engine_word in ("vector row", "query row"):
            if message.startswith(engine_word):
                message = f"column {name!r} {message[len(engine_word) - 3:]}"
        if not message.startswith("column"):
            message = f"column {name!r}: {message}"
        if not _ROW.search(message):
            message += f" (rows {first_row} to {first_row + num_rows - 1})"
        raise DataError(message) from None


def checked_vectors(column, name: str, dim: int | None, first_row: int) -> np.ndarray:
    """A batch's vector column as float32 [m, dim] (arrow.vectors_to_numpy), errors naming the input's row."""
    with rows_of_input(name, first_row, len(column)):
        return vectors_to_numpy(column, name, dim)


def train_sample(inp: Input, dim: int, rows: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of about ``rows`` vectors from the whole input (one extra read of the column
    unless it is held; the same rows either way)."""
    rng = np.random.default_rng(seed)
    fraction = min(1.0, rows / max(inp.num_rows, 1))
    if inp.held is not None:  # one draw per row, in row order, as the batches below draw
        keep = rng.random(inp.num_rows) < fraction
        if inp.block is not None:
            return inp.block.array()[keep]  # one copy, not one per row group and their concatenation
        return np.concatenate([x[keep[first:first + len(x)]] for first, x in inp.held])
    parts = []
    for first, batch in inp.batches([inp.vector_col]):
        keep = np.flatnonzero(rng.random(batch.num_rows) < fraction)
        if keep.size:
            parts.append(checked_vectors(batch.column(0).take(pa.array(keep)), inp.vector_col, dim, first))
    return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
