"""The in-process jobs behind the ``sparknn`` command: Parquet in, the engine, Parquet or Delta out.

No JVM and no per-row Python: pyarrow reads only the two needed columns in
record batches, each batch becomes a float32 matrix without a copy when it can,
the engine adds or searches it on all cores with the GIL released, and results
are written batch by batch. Memory holds the index plus one batch, never the
input table: items are read once to build and once more to query.

Ids: the engine stores int64 ids. Non-negative integer ids are used as they
are. Any other id (strings, negative or over-large integers) is replaced by the
row position, and the user's id column maps positions back; ``build`` stores
that column beside the index file as ``<index>.ids.parquet``.
"""

from __future__ import annotations

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
from sparknn.errors import InvalidArgumentError
from sparknn.index import Index, load
from sparknn.output import (
    DataError,
    UsageError,
    check_destination,
    check_format,
    commit,
    remove,
    temp_sibling,
    write_batches,
)
from sparknn.progress import Progress

BUILD_BATCH = 50_000  # rows read and added per step: the progress bar moves, memory stays bounded
SEARCH_BATCH = 8_192  # rows searched per call: enough to keep every core busy
IDS_SUFFIX = ".ids.parquet"
_IDS_META = b"sparknn.index"


@dataclass(frozen=True)
class IndexOptions:
    kind: str = "hnsw"
    metric: str = "cosine"
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    nlist: int = 0  # ivf: 0 = about 4 sqrt(n)
    nprobe: int = 16
    storage: str = "float32"
    pq_m: int = 0
    rerank: int = 0
    threads: int = 0  # 0: all cores


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

    def batches(self, columns, batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row, batch) over ``columns``, in file order."""
        offset = 0
        for batch in self.dataset.to_batches(columns=list(columns), batch_size=batch_size):
            if batch.num_rows:
                yield offset, batch
                offset += batch.num_rows


def _open_dataset(path: str) -> ds.Dataset:
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "_delta_log")):
        try:
            from deltalake import DeltaTable  # the current version's files, not every file in the directory
        except ImportError:
            raise UsageError(f"{path!r} is a Delta table: reading it needs the deltalake package "
                             "(pip install 'sparknn[delta]')") from None

        return DeltaTable(path).to_pyarrow_dataset()
    dataset = ds.dataset(path, format="parquet")  # skips files starting with "." or "_" (_SUCCESS, .crc)
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


def open_input(path: str, id_col: str, vector_col: str, what: str = "input") -> Input:
    """Opens ``path`` and checks the columns exist with usable types and that there are rows.

    Reads only metadata: nothing here costs time on large inputs.
    """
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    try:
        dataset = _open_dataset(path)
        schema = dataset.schema
        for name, flag in ((id_col, "--id-col"), (vector_col, "--vector-col")):
            if name not in schema.names:
                raise UsageError(f"{what} {path!r} has no column {name!r} ({flag}); its columns are: "
                                 f"{', '.join(schema.names) or '(none)'}")
        _check_id_type(schema.field(id_col).type, id_col, path)
        _check_vector_type(schema.field(vector_col).type, vector_col, path)
        num_rows = dataset.count_rows()
    except pa.ArrowException as exc:
        raise DataError(f"cannot read {what} {path!r} as Parquet: {exc}") from None
    if num_rows == 0:
        raise DataError(f"{what} {path!r} has no rows")
    return Input(path, dataset, id_col, vector_col, num_rows)


def read_ids(inp: Input, unique: bool) -> pa.Array:
    """The id column as one array, checked for nulls (and duplicates when ``unique``)."""
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


def engine_ids(ids: pa.Array) -> np.ndarray | None:
    """The ids as int64 engine ids if they can be used directly, else None (use row positions)."""
    if not pa.types.is_integer(ids.type) or len(ids) == 0:
        return None
    lo, hi = pc.min_max(ids).values()
    if lo.as_py() < 0 or hi.as_py() > np.iinfo(np.int64).max:
        return None
    return ids.to_numpy().astype(np.int64, copy=False)


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
    """A uniform sample of about ``rows`` vectors from the whole input (one extra read of the column)."""
    rng = np.random.default_rng(seed)
    fraction = min(1.0, rows / max(inp.num_rows, 1))
    parts = []
    for first, batch in inp.batches([inp.vector_col], BUILD_BATCH):
        keep = np.flatnonzero(rng.random(batch.num_rows) < fraction)
        if keep.size:
            parts.append(_vectors(batch.column(0).take(pa.array(keep)), inp.vector_col, dim, first))
    return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)


def _new_index(dim: int, opts: IndexOptions, n: int) -> Index:
    if opts.kind != "ivf":
        return Index(dim, opts.metric, opts.kind, M=opts.M, ef_construction=opts.ef_construction,
                     ef_search=opts.ef_search, threads=opts.threads)
    # Lists are chosen for the whole input, not for its first batch.
    nlist = opts.nlist or max(1, min(n, round(4 * n**0.5)))
    return Index(dim, opts.metric, "ivf", nlist=nlist, nprobe=opts.nprobe, storage=opts.storage, pq_m=opts.pq_m,
                 rerank=opts.rerank, threads=opts.threads)


def build_index(inp: Input, ids: np.ndarray | None, opts: IndexOptions, progress: Progress,
                keep_lists: bool = False) -> tuple[Index, np.ndarray | None]:
    """Reads the vectors in batches and adds them to a new index; ``ids`` None means row positions.

    An ivf index is first trained on a uniform sample of the whole input, then
    each batch is assigned to its ``nprobe`` nearest lists in one pass: the
    first is where the item goes, and with ``keep_lists`` (a self-join) all of
    them are returned, int32 [n, nprobe], so the search does not compute them
    again. Otherwise the second value is None.
    """
    index = None
    kept: list[np.ndarray] = []
    with progress.bar(inp.num_rows, "building") as bar:
        for first, batch in inp.batches([inp.vector_col], BUILD_BATCH):
            if index is None:
                dim = len(_vectors(batch.column(0).slice(0, 1), inp.vector_col, None, first)[0])
                index = _new_index(dim, opts, inp.num_rows)
                if opts.kind == "ivf":
                    nlist = index.params["nlist"]
                    with _rows_of_input(inp.vector_col, 0, inp.num_rows):
                        index.train(_train_sample(inp, dim, ivf_default_train_size(nlist, inp.num_rows)))
            rows = np.arange(first, first + batch.num_rows, dtype=np.int64) if ids is None else \
                ids[first:first + batch.num_rows]
            x = _vectors(batch.column(0), inp.vector_col, index.dim, first)
            with _rows_of_input(inp.vector_col, first, len(x)):
                if opts.kind == "ivf":
                    lists = index.nearest_lists(x, min(index.params["nprobe"], index.params["nlist"])
                                                if keep_lists else 1)
                    index.add(x, rows, lists=lists)
                    if keep_lists:
                        kept.append(lists.astype(np.int32))
                else:
                    index.add(x, rows)
            bar.update(batch.num_rows)
    if index is None or len(index) != inp.num_rows:
        raise DataError(f"{inp.path!r} changed while it was read: expected {inp.num_rows} rows")
    return index, (np.concatenate(kept) if kept else None)


def _map_back(neighbors: pa.Array, id_type: pa.DataType) -> pa.Array:
    """Neighbour ids as the user's integer type (they came from it, so they fit)."""
    target = neighbors_type(id_type)
    return neighbors if neighbors.type == target else neighbors.cast(target)


def output_schema(id_field: pa.Field, item_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(id_field.name, id_field.type), pa.field("neighbors", neighbors_type(item_id_type))])


def _search_batches(inp: Input, index: Index, query_ids: pa.Array, k: int, ef: int | None,
                    item_ids: pa.Array | None, item_id_type: pa.DataType, self_ids: np.ndarray | None,
                    progress: Progress, desc: str, lists: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
    """Output batches (query id, neighbors); ``self_ids`` set means a self-join that drops each row's own id.

    ``lists`` (ivf): each input row's lists to scan, from the build.

    ``item_ids`` maps engine ids (row positions) back to the user's ids; None
    means the engine ids are the user's ids.
    """
    schema = output_schema(pa.field(inp.id_col, query_ids.type), item_id_type)
    kk = k + 1 if self_ids is not None else k
    with progress.bar(inp.num_rows, desc) as bar:
        for first, batch in inp.batches([inp.vector_col], index.query_batch(SEARCH_BATCH, 262_144)):
            x = _vectors(batch.column(0), inp.vector_col, index.dim, first)
            with _rows_of_input(inp.vector_col, first, len(x)):
                if lists is not None:
                    found, dist = index.search(x, kk, lists=lists[first:first + len(x)])
                else:
                    found, dist = index.search(x, kk, ef)
            own = None if self_ids is None else self_ids[first:first + len(x)]
            neighbors = neighbors_array(found, dist, id_values=item_ids, exclude=own, k=k)
            if item_ids is None:
                neighbors = _map_back(neighbors, item_id_type)
            yield pa.RecordBatch.from_arrays([query_ids.slice(first, len(x)), neighbors], schema=schema)
            bar.update(len(x))


# --------------------------------------------------------------------------- jobs
@dataclass
class Result:
    rows: int
    neighbors: int  # neighbours per row (fewer only when the data has fewer items)
    timings: Timings
    preview: pa.Table | None = None


def _keep_preview(batches: Iterator[pa.RecordBatch], holder: list, rows: int = 3) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if not holder:
            holder.append(batch.slice(0, rows))
        yield batch


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be an integer >= 1, got {k!r}")


def _read_and_build(input_path: str, id_col: str, vector_col: str, opts: IndexOptions, progress: Progress,
                    timings: Timings, keep_lists: bool = False
                    ) -> tuple[Input, pa.Array, np.ndarray | None, Index, np.ndarray | None]:
    """Opens the input, checks its ids are unique and builds the index (engine ids: ``direct``, or positions)."""
    t0 = time.perf_counter()
    inp = open_input(input_path, id_col, vector_col)
    ids = read_ids(inp, unique=True)
    direct = engine_ids(ids)
    index, lists = build_index(inp, direct, opts, progress, keep_lists)
    timings.add("read + build", time.perf_counter() - t0)
    return inp, ids, direct, index, lists


def similar(input_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector", k: int = 10,
            opts: IndexOptions = IndexOptions(), fmt: str = "parquet", overwrite: bool = False,
            progress: Progress | None = None) -> Result:
    """For every item, its ``k`` nearest other items (itself excluded): one output row per item.

    With fewer than k+1 items, each row has every other item (n - 1 neighbours).
    """
    progress = progress or Progress(False)
    _check_k(k)
    check_format(fmt)
    check_destination(output, overwrite)
    timings = Timings()
    inp, ids, direct, index, lists = _read_and_build(input_path, id_col, vector_col, opts, progress, timings,
                                                     keep_lists=True)

    t0 = time.perf_counter()
    self_ids = direct if direct is not None else np.arange(inp.num_rows, dtype=np.int64)
    schema = output_schema(pa.field(id_col, ids.type), ids.type)
    preview: list = []
    batches = _search_batches(inp, index, ids, k, None, None if direct is not None else ids, ids.type,
                              self_ids, progress, "searching", lists)
    rows = write_batches(output, schema, _keep_preview(batches, preview), fmt, overwrite)
    timings.add("search + write", time.perf_counter() - t0)
    return Result(rows, min(k, inp.num_rows - 1), timings, pa.Table.from_batches(preview) if preview else None)


def _fingerprint(index_path: str) -> bytes:
    """Ties an ids file to its index: the header checksum (covering every section's checksum) and size."""
    with open(index_path, "rb") as f:
        head = f.read(64)
    return f"{zlib.crc32(head):08x}:{os.path.getsize(index_path)}".encode()


def build(input_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector",
          opts: IndexOptions = IndexOptions(), overwrite: bool = False,
          progress: Progress | None = None) -> Result:
    """Builds an index file; ids that are not non-negative integers go to ``<output>.ids.parquet``."""
    progress = progress or Progress(False)
    check_destination(output, overwrite)
    sidecar = output + IDS_SUFFIX
    if not overwrite:
        check_destination(sidecar, overwrite)
    timings = Timings()
    inp, ids, direct, index, _ = _read_and_build(input_path, id_col, vector_col, opts, progress, timings)

    t0 = time.perf_counter()
    tmp_index = temp_sibling(output)
    tmp_ids = temp_sibling(sidecar)
    try:
        index.save(tmp_index)
        if direct is None:
            meta = {_IDS_META: _fingerprint(tmp_index)}
            pq.write_table(pa.table({id_col: ids}).replace_schema_metadata(meta), tmp_ids)
            commit(tmp_ids, sidecar)  # first: a new ids file beside an old index fails its fingerprint check
        commit(tmp_index, output)
        if direct is not None and os.path.lexists(sidecar):
            remove(sidecar)  # a stale ids file would fail its check; it is not needed any more
    finally:
        remove(tmp_index)
        remove(tmp_ids)
    timings.add("save", time.perf_counter() - t0)
    return Result(len(index), 0, timings)


def load_with_ids(index_path: str, threads: int = 0) -> tuple[Index, pa.Array | None]:
    """The index (memory-mapped) and, if it was built with non-integer ids, the user's ids by position."""
    if not os.path.exists(index_path):
        raise UsageError(f"index {index_path!r} does not exist")
    index = load(index_path, mmap=True, threads=threads)
    sidecar = index_path + IDS_SUFFIX
    if not os.path.exists(sidecar):
        return index, None
    table = pq.read_table(sidecar)
    stamp = (table.schema.metadata or {}).get(_IDS_META)
    if stamp != _fingerprint(index_path) or table.num_rows != len(index):
        raise DataError(f"{sidecar!r} does not belong to {index_path!r} (it was written for another build): "
                        "rebuild the index with `sparknn build`")
    return index, table.column(0).combine_chunks()


def query(index_path: str, queries_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector",
          k: int = 10, ef: int | None = None, fmt: str = "parquet", overwrite: bool = False, threads: int = 0,
          progress: Progress | None = None) -> Result:
    """The ``k`` nearest items of every query row: the query's id column and ``neighbors``."""
    progress = progress or Progress(False)
    _check_k(k)
    if ef is not None and (isinstance(ef, bool) or not isinstance(ef, int) or ef < 1):
        raise UsageError(f"ef must be an integer >= 1, got {ef!r}")
    check_format(fmt)
    check_destination(output, overwrite)
    timings = Timings()
    t0 = time.perf_counter()
    index, item_ids = load_with_ids(index_path, threads)
    inp = open_input(queries_path, id_col, vector_col, what="queries")
    query_ids = read_ids(inp, unique=False)
    # Check every query vector before the search starts, so a bad row fails in seconds, not hours.
    for first, batch in inp.batches([vector_col], BUILD_BATCH):
        finite = np.isfinite(_vectors(batch.column(0), vector_col, index.dim, first)).all(axis=1)
        if not finite.all():
            raise DataError(f"column {vector_col!r} row {first + int(np.argmin(finite))} has a NaN or infinite "
                            "value: remove or impute it before querying")
    timings.add("load + check", time.perf_counter() - t0)

    t0 = time.perf_counter()
    item_type = item_ids.type if item_ids is not None else pa.int64()
    schema = output_schema(pa.field(id_col, query_ids.type), item_type)
    preview: list = []
    batches = _search_batches(inp, index, query_ids, k, ef, item_ids, item_type, None, progress, "querying")
    rows = write_batches(output, schema, _keep_preview(batches, preview), fmt, overwrite)
    timings.add("search + write", time.perf_counter() - t0)
    return Result(rows, min(k, len(index)), timings, pa.Table.from_batches(preview) if preview else None)


def info(index_path: str) -> dict:
    """What an index file holds, read from its validated header."""
    index, item_ids = load_with_ids(index_path)
    with open(index_path, "rb") as f:
        version = int.from_bytes(f.read(12)[8:12], "little")
    return {
        "path": index_path,
        "kind": index.kind,
        "metric": index.metric,
        "dim": index.dim,
        "count": len(index),
        "file_size": os.path.getsize(index_path),
        "format_version": version,
        "params": index.params,
        "ids": "stored in the index (int64)" if item_ids is None else
               f"row positions; the user's ids ({item_ids.type}) are in {index_path + IDS_SUFFIX}",
    }
