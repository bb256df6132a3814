"""The in-process jobs behind the ``sparknn`` command: Parquet in, the engine, Parquet or Delta out.

No JVM and no per-row Python: pyarrow reads only the two needed columns in
record batches, each batch becomes a float32 matrix without a copy when it can,
the engine adds or searches it on all cores with the GIL released, and results
are written batch by batch. Memory holds the index plus one batch, never the
input table: items are read once to build and once more to query.

Ids: the engine stores int64 ids. Non-negative integer ids are used as they
are. Any other id (strings, negative or over-large integers) is replaced by the
row position, and the user's id column maps positions back; ``build`` stores
that column beside the index file as ``<index>.ids.parquet`` and records that
file's size and CRC-32C inside the index file (its SideFiles section), so a
missing, damaged or foreign ids file is an error, never wrong ids.
"""

from __future__ import annotations

import errno
import os
import re
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sparknn._core import ivf_default_train_size
from sparknn.arrow import neighbors_array, neighbors_type, vectors_to_numpy
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn import grouped
from sparknn.builder import build_streaming, engine_ids
from sparknn.index import Index, IndexSpec, load
from sparknn.integrity import FileDigest, crc32c
from sparknn.machine import available_memory
from sparknn.output import (
    DataError,
    OutputError,
    UsageError,
    check_destination,
    check_format,
    check_separate,
    commit,
    one_line,
    os_reason,
    remove,
    special_kind,
    sync_file,
    temp_sibling,
    write_batches,
)
from sparknn.progress import Progress
from sparknn.tuning import Tuning, check_target

BUILD_BATCH = 50_000  # rows read and added per step: the progress bar moves, memory stays bounded
READ_BATCH = 4_096  # rows a Parquet reader decodes at a time
HOLD_FRACTION = 0.25  # of the available memory: an input at most this large is read once and held
SEARCH_BATCH = 8_192  # rows searched per call: enough to keep every core busy
RESULT_BYTES = 256 << 20  # bound on one search call's id + distance matrices (rows x k x 12 bytes)
IDS_SUFFIX = ".ids.parquet"
IDS_ROLE = "ids"  # the ids file's role in the index file's SideFiles section
_IDS_META = b"sparknn.index"  # the fingerprint of indexes built before SideFiles (still read)
_LISTED = 10  # files named in one error message
NEIGHBORS = "neighbors"  # the output's neighbour column
DEFAULT_SPEC = IndexSpec()


@dataclass
class Timings:
    """Seconds per step, in the order they ran."""

    steps: dict = field(default_factory=dict)

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + seconds


# --------------------------------------------------------------------------- input
@dataclass
class Input:
    """A Parquet file, a directory of Parquet files or a Delta table, with its two columns checked."""

    path: str
    dataset: ds.Dataset
    id_col: str
    vector_col: str
    num_rows: int
    held: list | None = None  # the vector column once hold_vectors read it: (first row, float32 [m, dim]) in order

    def batches(self, columns, batch_size: int = READ_BATCH) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row, batch) over ``columns`` in file order, batches of at most ``batch_size`` rows.

        Each file has its own Parquet reader decoding at most READ_BATCH rows at a time. Arrow's
        dataset scanner decodes a whole row group at once: reading a 50k x 784 list column took
        4x its size in new memory, and new memory is not free (first touches of 220 MB took up
        to 0.8 s of system time on the development VM)."""
        offset = 0
        with reading(self.path):
            for fragment in self.dataset.get_fragments():
                with pq.ParquetFile(fragment.path, filesystem=fragment.filesystem,
                                    page_checksum_verification=True) as parquet:
                    for batch in parquet.iter_batches(batch_size=min(batch_size, READ_BATCH), columns=list(columns)):
                        if batch.num_rows:
                            yield offset, batch
                            offset += batch.num_rows

    def vector_chunks(self, dim: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [m, dim]) over the vector column as held or read (views of Arrow's
        buffers where the values are float32), each checked (arrow.vectors_to_numpy)."""
        if self.held is not None:
            yield from self.held
            return
        for first, batch in self.batches([self.vector_col]):
            x = _vectors(batch.column(0), self.vector_col, dim, first)
            dim = x.shape[1]
            yield first, x

    def vector_batches(self, batch_size: int, dim: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 [batch_size, dim]) over the vector column, the last batch shorter.

        Chunks shorter than a batch are gathered into one buffer reused for every batch: a batch
        is valid until the next one is asked for (the engine copies what it keeps)."""
        buffer, filled, start = None, 0, 0
        for first, x in self.vector_chunks(dim):
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


def hold_vectors(inp: Input, progress: Progress, dim: int | None = None, budget: int | None = None) -> bool:
    """Reads the vector column once into memory when it takes at most ``budget`` bytes (default:
    HOLD_FRACTION of the memory available), so a job passing over it several times (training
    sample, build, self-join search) decodes the Parquet once. Returns whether it is held; a
    larger input stays streamed in batches (the dimension is known after the first batch, so
    at most one batch was read for nothing). ``dim``: the dimension every row must have.

    The batches are kept as read: float32 values are views of Arrow's buffers, not copied
    (fresh memory is not free: first touches of 220 MB took 0.02-0.8 s of system time here).
    """
    if budget is None:
        available = available_memory()
        budget = int(available * HOLD_FRACTION) if available else 0
    held: list = []
    rows = 0
    with progress.bar(inp.num_rows, "reading") as bar:
        for first, x in inp.vector_chunks(dim):
            if not held and inp.num_rows * x.shape[1] * 4 > budget:
                return False
            rows = first + len(x)
            if rows > inp.num_rows:
                raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
            held.append((first, x))
            bar.update(len(x))
    if rows != inp.num_rows:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    inp.held = held
    return True


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


def _check_plain(path: str, what: str, wanted: str = "a Parquet file, a directory or a Delta table") -> None:
    """A single-file input or index must be a regular file: opening a pipe waits for a writer forever."""
    kind = special_kind(os.stat(path).st_mode)
    if kind:
        raise DataError(f"{what} {path!r} is {kind}, not a file: give {wanted}")


def _open_dataset(path: str, what: str) -> ds.Dataset:
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "_delta_log")):
        return _open_delta(path)
    if os.path.isdir(path):
        odd = _unreadable_entries(path)
        if odd:
            named = "; ".join(f"{os.path.relpath(p, path)} is {kind}" for p, kind in odd[:_LISTED])
            more = f"; and {len(odd) - _LISTED} more" if len(odd) > _LISTED else ""
            raise DataError(f"{what} directory {path!r} has entries that cannot be read as files: "
                            f"{named}{more}; fix or remove them")
    else:
        _check_plain(path, what)
    # Skips files starting with "." or "_" (_SUCCESS, .crc). Pages written with a CRC (parquet-mr's
    # default, pyarrow's write_page_checksum) are checked: a damaged page is an error, not wrong vectors.
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))
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


def _check_one_schema(dataset: ds.Dataset, path: str, columns: tuple[str, ...], what: str) -> None:
    """Every file of a directory must give the needed columns the same types.

    Arrow would take the first file's schema and cast the others to it: numeric
    string ids silently become integers, and a file without a column reads as
    nulls. Reads each file's footer only.
    """
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
    if ids.null_count:
        row = int(pc.index(pc.is_null(ids), True).as_py())
        raise DataError(f"column {inp.id_col!r} has a null id at row {row}")
    if unique and len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]
        value = dup["values"].as_py()
        rows = np.flatnonzero(pc.equal(ids, pa.scalar(value, ids.type)).to_numpy(zero_copy_only=False))
        raise DataError(f"column {inp.id_col!r} has duplicate ids: {value!r} appears {dup['counts'].as_py()} "
                        f"times (rows {', '.join(map(str, rows[:5]))}); every item needs a distinct id")
    return ids


_ROW = re.compile(r"\brow (\d+)")


@contextmanager
def _rows_of_input(name: str, first_row: int, num_rows: int) -> Iterator[None]:
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


def _vectors(column, name: str, dim: int | None, first_row: int) -> np.ndarray:
    with _rows_of_input(name, first_row, len(column)):
        return vectors_to_numpy(column, name, dim)


# --------------------------------------------------------------------------- build
def _train_sample(inp: Input, dim: int, rows: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of about ``rows`` vectors from the whole input (one extra read of the column
    unless it is held; the same rows either way)."""
    rng = np.random.default_rng(seed)
    fraction = min(1.0, rows / max(inp.num_rows, 1))
    if inp.held is not None:  # one draw per row, in row order, as the batches below draw
        keep = rng.random(inp.num_rows) < fraction
        return np.concatenate([x[keep[first:first + len(x)]] for first, x in inp.held])
    parts = []
    for first, batch in inp.batches([inp.vector_col], BUILD_BATCH):
        keep = np.flatnonzero(rng.random(batch.num_rows) < fraction)
        if keep.size:
            parts.append(_vectors(batch.column(0).take(pa.array(keep)), inp.vector_col, dim, first))
    return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)


def _timed(source: Iterator, timings: Timings, step: str) -> Iterator:
    """The items of ``source``; the time spent producing them is added to ``timings`` as ``step``."""
    clock, end = time.perf_counter, object()
    while True:
        t0 = clock()
        item = next(source, end)
        timings.add(step, clock() - t0)
        if item is end:
            return
        yield item


def usable_threads(threads: int) -> int:
    """``threads`` capped at the cores this process may run on (0 stays 0: all of them).

    More threads than cores compute nothing faster, and the engine sizes per-thread buffers by
    the count: ``--threads 1000000`` on an ivf index took 23 GB and was killed.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return min(threads, max(cores, 1))


def build_index(inp: Input, ids: np.ndarray | None, spec: IndexSpec, progress: Progress,
                keep_lists: bool = False, timings: Timings | None = None) -> tuple[Index, np.ndarray | None]:
    """Reads the vectors in batches into a new index (builder.build_streaming); ``ids`` None means
    row positions. With ``keep_lists`` (a self-join, ivf) also each item's nprobe nearest lists,
    int32 [n, nprobe], else None. The time spent reading input (none when it is held) is added
    to ``timings`` as "read"."""
    spec = spec.replace(threads=usable_threads(spec.threads))
    timings = timings if timings is not None else Timings()
    dim = None
    with progress.bar(inp.num_rows, "building") as bar:
        def batches():
            nonlocal dim
            for first, x in _timed(inp.vector_batches(BUILD_BATCH), timings, "read"):
                dim = x.shape[1]
                yield first, x
                bar.update(len(x))

        def sample(nlist: int) -> np.ndarray:
            t0 = time.perf_counter()
            x = _train_sample(inp, dim, ivf_default_train_size(nlist, inp.num_rows))
            timings.add("read", time.perf_counter() - t0)
            return x

        index, lists = build_streaming(
            batches(), inp.num_rows, spec, ids=ids, train_sample=sample, keep_lists=spec.nprobe if keep_lists else 0,
            rows_context=lambda first, rows: _rows_of_input(inp.vector_col, first, rows))
    if index is None or len(index) != inp.num_rows:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    return index, lists


def _map_back(neighbors: pa.Array, id_type: pa.DataType) -> pa.Array:
    """Neighbour ids as the user's integer type (they came from it, so they fit)."""
    target = neighbors_type(id_type)
    return neighbors if neighbors.type == target else neighbors.cast(target)


def output_schema(id_field: pa.Field, item_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(id_field.name, id_field.type), pa.field(NEIGHBORS, neighbors_type(item_id_type))])


def _search_batches(inp: Input, index: Index, query_ids: pa.Array, k: int, ef: int | None,
                    item_ids: pa.Array | None, item_id_type: pa.DataType, self_ids: np.ndarray | None,
                    progress: Progress, desc: str, timings: Timings,
                    lists: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
    """Output batches (query id, neighbors); ``self_ids`` set means a self-join that drops each row's own id.

    ``lists`` (ivf): each input row's lists to scan, from the build. Adds to ``timings`` the
    seconds spent reading the input ("read": almost none when it is held) and searching
    ("search"): what the consumer of the batches spends is the caller's ("write").

    ``item_ids`` maps engine ids (row positions) back to the user's ids; None
    means the engine ids are the user's ids.
    """
    schema = output_schema(pa.field(inp.id_col, query_ids.type), item_id_type)
    kk = k + 1 if self_ids is not None else k
    # k is at most the item count here (capped_k), and rows per call shrink as k grows, so one
    # call's [rows, kk] result matrices stay within RESULT_BYTES whatever k was asked for.
    rows = max(1, min(index.query_batch(SEARCH_BATCH, 262_144), RESULT_BYTES // (12 * max(kk, 1))))
    with progress.bar(inp.num_rows, desc) as bar:
        for first, x in _timed(inp.vector_batches(rows, index.dim), timings, "read"):
            t0 = time.perf_counter()
            with _rows_of_input(inp.vector_col, first, len(x)):
                if lists is not None:
                    found, dist = index.search(x, kk, lists=lists[first:first + len(x)])
                else:
                    found, dist = index.search(x, kk, ef)
            own = None if self_ids is None else self_ids[first:first + len(x)]
            neighbors = neighbors_array(found, dist, id_values=item_ids, exclude=own, k=k)
            if item_ids is None:
                neighbors = _map_back(neighbors, item_id_type)
            out = pa.RecordBatch.from_arrays([query_ids.slice(first, len(x)), neighbors], schema=schema)
            timings.add("search", time.perf_counter() - t0)
            yield out
            bar.update(len(x))


# --------------------------------------------------------------------------- jobs
@dataclass
class Result:
    rows: int
    neighbors: int  # neighbours per row (fewer only when the data has fewer items)
    timings: Timings
    preview: pa.Table | None = None
    tuning: Tuning | grouped.GroupTunings | None = None  # what a recall target chose (similar with recall=)


def _write_timed(output: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, overwrite: bool,
                 timings: Timings, start: float) -> int:
    """Writes _search_batches' output; what it spent since ``start`` outside reading and searching is "write"."""
    def inside() -> float:
        return timings.steps.get("read", 0.0) + timings.steps.get("search", 0.0)

    before = inside()
    rows = write_batches(output, schema, batches, fmt, overwrite)
    timings.add("write", time.perf_counter() - start - (inside() - before))
    return rows


def _keep_preview(batches: Iterator[pa.RecordBatch], holder: list, rows: int = 3) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if not holder:
            holder.append(batch.slice(0, rows))
        yield batch


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be an integer >= 1, got {k!r}")


def check_id_col(id_col: str) -> None:
    """The output has the id column and ``neighbors``: one name for both wrote a file with two
    columns called ``neighbors``, which readers refuse ("Multiple matches for FieldRef")."""
    if id_col == NEIGHBORS:
        raise UsageError(f"the id column is called {NEIGHBORS!r}, the name of the output's neighbour column: "
                         "rename it in the input (the output would have two columns of that name)")


def capped_k(k: int, items: int, self_join: bool) -> int:
    """The neighbours a row can have: k, at most the other items (a self-join drops the row itself).

    Applied before anything is sized by k: asking for k = 2**40 of 200 items allocates for 200.
    """
    return max(0, min(k, items - 1 if self_join else items))


def _read_and_build(input_path: str, id_col: str, vector_col: str, spec: IndexSpec, progress: Progress,
                    timings: Timings, self_join: bool = False
                    ) -> tuple[Input, pa.Array, np.ndarray | None, Index, np.ndarray | None]:
    """Opens the input, checks its ids are unique and builds the index (engine ids: ``direct``, or positions).

    ``self_join``: the index is built to search its own items (IndexSpec.for_items) and an ivf
    build also returns each item's lists to scan. The vectors are read once into memory first
    when the job passes over them more than once (the self-join searches them again; an ivf
    build samples them first) and they fit (hold_vectors). Timings: "read" (all reading of
    the input, also in batches during the build when it is not held) and "build".
    """
    t0 = time.perf_counter()
    inp = open_input(input_path, id_col, vector_col)
    ids = read_ids(inp, unique=True)
    direct = engine_ids(ids)
    spec = spec.for_items(inp.num_rows, self_join)
    if self_join or spec.kind == "ivf":
        hold_vectors(inp, progress)
    timings.add("read", time.perf_counter() - t0)
    t0, read_before = time.perf_counter(), timings.steps["read"]
    index, lists = build_index(inp, direct, spec, progress, self_join, timings)
    timings.add("build", time.perf_counter() - t0 - (timings.steps["read"] - read_before))
    return inp, ids, direct, index, lists


def similar(input_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector", k: int = 10,
            spec: IndexSpec = DEFAULT_SPEC, fmt: str = "parquet", overwrite: bool = False,
            progress: Progress | None = None, group_col: str | None = None, recall: float | None = None) -> Result:
    """For every item, its ``k`` nearest other items (itself excluded): one output row per item.

    With fewer than k+1 items, each row has every other item (n - 1 neighbours). With
    ``group_col``, an item's neighbours are items of its own group (sparknn.grouped): a row whose
    group has fewer than k + 1 items gets all the others (none for a group of one). ``recall``
    (ivf, hnsw): instead of ``spec``'s nprobe / ef_search, the least that reaches this recall@k,
    measured on a sample of the items after the build (``Index.tune``; ``Result.tuning``).
    """
    if recall is not None:
        check_target(recall)
    progress = progress or Progress(False)
    _check_k(k)
    check_id_col(id_col)
    check_format(fmt)
    check_destination(output, overwrite)
    check_separate([("output", output)], [("input", input_path)])
    timings = Timings()
    if group_col is not None:
        return _similar_in_groups(input_path, output, id_col, vector_col, group_col, k, spec, fmt, overwrite,
                                  progress, timings, recall)
    inp, ids, direct, index, lists = _read_and_build(input_path, id_col, vector_col, spec, progress, timings,
                                                     self_join=True)

    k = capped_k(k, inp.num_rows, self_join=True)
    tuned = None
    if recall is not None and index.kind != "flat" and k > 0:
        t0 = time.perf_counter()
        tuned = index.tune(recall, k=k)  # sets index.nprobe / ef_search
        if lists is not None and tuned.value > lists.shape[1]:
            lists = None  # more lists than kept at the build: the search finds them again
        elif lists is not None:
            lists = lists[:, :tuned.value]
        timings.add("recall tuning", time.perf_counter() - t0)
    t0 = time.perf_counter()
    self_ids = direct if direct is not None else np.arange(inp.num_rows, dtype=np.int64)
    schema = output_schema(pa.field(id_col, ids.type), ids.type)
    preview: list = []
    batches = _search_batches(inp, index, ids, k, None, None if direct is not None else ids, ids.type,
                              self_ids, progress, "searching", timings, lists)
    rows = _write_timed(output, schema, _keep_preview(batches, preview), fmt, overwrite, timings, t0)
    return Result(rows, k, timings, pa.Table.from_batches(preview) if preview else None, tuned)


def _similar_in_groups(input_path: str, output: str, id_col: str, vector_col: str, group_col: str, k: int,
                       spec: IndexSpec, fmt: str, overwrite: bool, progress: Progress, timings: Timings,
                       recall: float | None = None) -> Result:
    t0 = time.perf_counter()
    inp = open_input(input_path, id_col, vector_col)
    if group_col not in inp.dataset.schema.names:
        raise UsageError(f"input {input_path!r} has no column {group_col!r} (--group-col); its columns are: "
                         f"{', '.join(inp.dataset.schema.names)}")
    if group_col in (id_col, vector_col, NEIGHBORS):
        raise UsageError(f"--group-col {group_col!r} names the id, vector or output column: group by another column")
    ids = read_ids(inp, unique=True)
    with reading(inp.path):
        groups = inp.dataset.to_table(columns=[group_col]).column(0)
    try:
        codes = grouped.group_codes(groups, group_col)
    except InvalidArgumentError as exc:
        raise DataError(str(exc)) from None
    parts, dim = [], None
    for first, batch in inp.batches([vector_col], BUILD_BATCH):
        parts.append(_vectors(batch.column(0), vector_col, dim, first))
        dim = parts[-1].shape[1]
    x = np.concatenate(parts) if len(parts) > 1 else parts[0]
    del parts
    timings.add("read", time.perf_counter() - t0)

    t0 = time.perf_counter()
    largest = int(np.bincount(codes).max())
    k = capped_k(k, largest, self_join=True)
    spec = spec.replace(threads=usable_threads(spec.threads))
    tunings: list = []
    if k:
        with progress.bar(len(x), "searching groups") as bar:
            rows, dist = grouped.within_groups(x, codes, k, spec, progress=bar.update, recall=recall, tunings=tunings)
    else:  # every group has one item: no neighbours anywhere
        rows, dist = np.full((len(x), 1), -1, dtype=np.int64), np.full((len(x), 1), np.inf, dtype=np.float32)
    schema = output_schema(pa.field(id_col, ids.type), ids.type)
    step = max(1, RESULT_BYTES // (12 * max(k, 1)))

    def batches():
        for lo in range(0, len(x), step):
            hi = min(len(x), lo + step)
            neighbors = neighbors_array(rows[lo:hi], dist[lo:hi], id_values=ids, k=k)
            yield pa.RecordBatch.from_arrays([ids.slice(lo, hi - lo), neighbors], schema=schema)

    preview: list = []
    written = write_batches(output, schema, _keep_preview(batches(), preview), fmt, overwrite)
    timings.add("search + write", time.perf_counter() - t0)
    chosen = None
    if recall is not None and spec.kind != "flat":
        chosen = grouped.GroupTunings(recall, grouped.SMALL, tuple(tunings))
    return Result(written, k, timings, pa.Table.from_batches(preview) if preview else None, chosen)


def _fingerprint(index_path: str) -> bytes:
    """How indexes built before SideFiles tie an ids file to its index: the header checksum
    (covering every section's checksum) and size, stored in the ids file's metadata."""
    with open(index_path, "rb") as f:
        head = f.read(64)
    return f"{zlib.crc32(head):08x}:{os.path.getsize(index_path)}".encode()


def build(input_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector",
          spec: IndexSpec = DEFAULT_SPEC, overwrite: bool = False,
          progress: Progress | None = None) -> Result:
    """Builds an index file; ids that are not non-negative integers go to ``<output>.ids.parquet``.

    The ids file is written first and its size and CRC-32C are recorded in the
    index file (role ``ids``); both are written under temporary names and
    committed ids first, index last, so a reader never pairs an index with an
    ids file it did not record.
    """
    progress = progress or Progress(False)
    check_destination(output, overwrite)
    sidecar = output + IDS_SUFFIX
    check_destination(sidecar, overwrite)
    check_separate([("index", output), ("ids file", sidecar)], [("input", input_path)])
    timings = Timings()
    inp, ids, direct, index, _ = _read_and_build(input_path, id_col, vector_col, spec, progress, timings)

    t0 = time.perf_counter()
    tmp_index = temp_sibling(output)
    tmp_ids = temp_sibling(sidecar)
    try:
        _save(index, ids, direct, id_col, tmp_index, tmp_ids, output)
        if direct is None:
            commit(tmp_ids, sidecar)  # first: an old index beside a new ids file fails its recorded checksum
        commit(tmp_index, output)
        if direct is not None and os.path.lexists(sidecar):
            remove(sidecar)  # a stale ids file would be refused beside this index; it is not needed any more
    finally:
        remove(tmp_index)
        remove(tmp_ids)
    timings.add("save", time.perf_counter() - t0)
    return Result(len(index), 0, timings)


def _save(index: Index, ids: pa.Array, direct: np.ndarray | None, id_col: str, tmp_index: str, tmp_ids: str,
          output: str) -> None:
    """Writes the ids file (when needed), then the index recording its digest, both under temporary names."""
    try:
        if direct is not None:
            index.save(tmp_index, sync=True)
        else:
            pq.write_table(pa.table({id_col: ids}), tmp_ids)
            sync_file(tmp_ids)
            index.save(tmp_index, sync=True, side_files={IDS_ROLE: tmp_ids})
    except OSError as exc:  # a full disk, an I/O error: named for the file the user asked for
        raise OutputError(exc.errno or errno.EIO, f"cannot write the index {output!r}: "
                          f"{os_reason(exc)}; nothing was written") from exc


def _read_verified_ids(sidecar: str, expected: FileDigest, index_path: str, count: int) -> pa.Array:
    """The ids file checked against the digest the index recorded, from one mapping of its bytes
    (the bytes checked are the bytes read, even if the file is replaced meanwhile)."""
    what = f"ids file of {index_path!r}"
    if not os.path.isfile(sidecar):
        raise IndexFileError(f"{what}, {sidecar!r}, is missing: the index stores row positions and needs it "
                             "to return the items' ids (copy it beside the index, or rebuild with `sparknn build`)")
    with pa.memory_map(sidecar) as source:
        data = source.read_buffer()
        if data.size != expected.size:
            raise IndexFileError(f"{what}, {sidecar!r}, has {data.size} bytes, {expected.size} expected: "
                                 "the file is truncated, extended or from another build")
        actual = crc32c(data)
        if actual != expected.crc32c:
            raise IndexFileError(f"{what}, {sidecar!r}, fails its checksum (CRC-32C {actual:08x}, "
                                 f"{expected.crc32c:08x} expected): the file is damaged or from another build")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:
            raise IndexFileError(f"{what}, {sidecar!r}, matches its checksum but cannot be read: "
                                 f"{one_line(exc)}") from None
    if table.num_columns != 1 or table.num_rows != count:
        raise IndexFileError(f"{what}, {sidecar!r}, holds {table.num_rows} rows in {table.num_columns} columns: "
                             f"expected one column of {count} ids")
    return table.column(0).combine_chunks()


def load_with_ids(index_path: str, threads: int = 0) -> tuple[Index, pa.Array | None]:
    """The index (memory-mapped) and, if it was built with non-integer ids, the user's ids by position.

    An index that records an ids file (``build`` since SideFiles) requires it,
    unchanged: missing or damaged is an IndexFileError naming it. Older indexes
    keep the fingerprint check of the ids file's metadata.
    """
    if not os.path.exists(index_path):
        raise UsageError(f"index {index_path!r} does not exist")
    _check_plain(index_path, "index", "an index file written by `sparknn build`")
    index = load(index_path, mmap=True, threads=usable_threads(threads))
    sidecar = index_path + IDS_SUFFIX
    recorded = index.side_files.get(IDS_ROLE)
    if recorded is not None:
        return index, _read_verified_ids(sidecar, recorded, index_path, len(index))
    if not os.path.exists(sidecar):
        return index, None
    _check_plain(sidecar, "ids file", f"the ids file `sparknn build` wrote beside {index_path!r}")
    try:
        table = pq.read_table(sidecar)
    except (pa.ArrowException, OSError) as exc:
        raise IndexFileError(f"ids file {sidecar!r} cannot be read: {one_line(exc)}") from None
    stamp = (table.schema.metadata or {}).get(_IDS_META)
    if stamp != _fingerprint(index_path) or table.num_rows != len(index) or table.num_columns != 1:
        raise DataError(f"{sidecar!r} does not belong to {index_path!r} (it was written for another build): "
                        "rebuild the index with `sparknn build`")
    return index, table.column(0).combine_chunks()


def query(index_path: str, queries_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector",
          k: int = 10, ef: int | None = None, fmt: str = "parquet", overwrite: bool = False, threads: int = 0,
          progress: Progress | None = None) -> Result:
    """The ``k`` nearest items of every query row: the query's id column and ``neighbors``."""
    progress = progress or Progress(False)
    _check_k(k)
    check_id_col(id_col)
    if ef is not None and (isinstance(ef, bool) or not isinstance(ef, int) or ef < 1):
        raise UsageError(f"ef must be an integer >= 1, got {ef!r}")
    check_format(fmt)
    check_destination(output, overwrite)
    check_separate([("output", output)], [("queries", queries_path), ("index", index_path),
                                          ("ids file", index_path + IDS_SUFFIX)])
    timings = Timings()
    t0 = time.perf_counter()
    index, item_ids = load_with_ids(index_path, threads)
    if len(index) == 0:
        raise DataError(f"index {index_path!r} holds no items: there is nothing to find")
    timings.add("load", time.perf_counter() - t0)
    t0 = time.perf_counter()
    inp = open_input(queries_path, id_col, vector_col, what="queries")
    query_ids = read_ids(inp, unique=False)
    hold_vectors(inp, progress, index.dim)  # read once for the check and the search when they fit
    # Check every query vector before the search starts, so a bad row fails in seconds, not hours.
    for first, x in inp.vector_batches(BUILD_BATCH, index.dim):
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise DataError(f"column {vector_col!r} row {first + int(np.argmin(finite))} has a NaN or infinite "
                            "value: remove or impute it before querying")
    timings.add("read", time.perf_counter() - t0)

    t0 = time.perf_counter()
    k = capped_k(k, len(index), self_join=False)
    if ef is not None:
        ef = min(ef, max(len(index), 1))  # a beam wider than the index visits nothing more
    item_type = item_ids.type if item_ids is not None else pa.int64()
    schema = output_schema(pa.field(id_col, query_ids.type), item_type)
    preview: list = []
    batches = _search_batches(inp, index, query_ids, k, ef, item_ids, item_type, None, progress, "querying", timings)
    rows = _write_timed(output, schema, _keep_preview(batches, preview), fmt, overwrite, timings, t0)
    return Result(rows, k, timings, pa.Table.from_batches(preview) if preview else None)


def info(index_path: str) -> dict:
    """What an index file holds, read from its validated header."""
    index, item_ids = load_with_ids(index_path)
    with open(index_path, "rb") as f:
        version = int.from_bytes(f.read(12)[8:12], "little")
    sidecar = index_path + IDS_SUFFIX
    recorded = index.side_files.get(IDS_ROLE)
    if item_ids is None:
        ids = "stored in the index (int64)"
    elif recorded is not None:
        ids = (f"row positions; the user's ids ({item_ids.type}) are in {sidecar}, verified "
               f"({recorded.size:,} bytes, CRC-32C {recorded.crc32c:08x} as recorded in the index)")
    else:
        ids = (f"row positions; the user's ids ({item_ids.type}) are in {sidecar} (fingerprint matches; an index "
               "built before ids files were checksummed: rebuild it to have the whole file verified)")
    return {
        "path": index_path,
        "kind": index.kind,
        "metric": index.metric,
        "dim": index.dim,
        "count": len(index),
        "file_size": os.path.getsize(index_path),
        "format_version": version,
        "params": index.params,
        "ids": ids,
        "ids_file": None if item_ids is None else {
            "path": sidecar, "verified": recorded is not None,
            **({"bytes": recorded.size, "crc32c": f"{recorded.crc32c:08x}"} if recorded is not None else {}),
        },
    }
