"""The in-process jobs behind the ``sparknn`` command: Parquet in, the engine, Parquet or Delta out.

No JVM and no per-row Python: pyarrow reads only the two needed columns in
record batches (sparknn.inputs), each batch becomes a float32 matrix without a
copy when it can, the engine adds or searches it on all cores with the GIL
released, and results are written batch by batch. The vectors are read once and
held when they fit in a quarter of the available memory (a self-join reads them
for its training sample, its build and its search); a larger input is read again
for each pass and memory holds the index plus one batch.

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
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparknn._core import ivf_default_train_size
from sparknn.arrow import integer_values, neighbors_array, neighbors_type, primitive_array
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn import grouped
from sparknn.builder import build_streaming, engine_ids
from sparknn.index import Index, IndexSpec, first_pass_setting, load
from sparknn.integrity import FileDigest, crc32c
from sparknn.machine import usable_cores
from sparknn.output import (
    PARQUET_WRITE,
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
    sync_file,
    temp_sibling,
    write_batches,
)
from sparknn.inputs import (
    Input,
    check_plain,
    hold_vectors,
    open_input,
    read_ids,
    reading,
    rows_of_input,
    train_sample,
)
from sparknn.progress import Progress
from sparknn.tuning import Tuning, check_target

BUILD_BATCH = 50_000  # rows read and added per step: the progress bar moves, memory stays bounded
SEARCH_BATCH = 8_192  # rows searched per call: enough to keep every core busy
# queries per batch of a self-join that searches its index's own rows: at most machine.HEAP_BLOCK_LIMIT,
# so the batch and its normalised copy come from memory the command reuses
STORED_BATCH_BYTES = 24 << 20
RESULT_BYTES = 256 << 20  # bound on one search call's id + distance matrices (rows x k x 12 bytes)
IDS_SUFFIX = ".ids.parquet"
IDS_ROLE = "ids"  # the ids file's role in the index file's SideFiles section
_IDS_META = b"sparknn.index"  # the fingerprint of indexes built before SideFiles (still read)
NEIGHBORS = "neighbors"  # the output's neighbour column
DEFAULT_SPEC = IndexSpec()


@dataclass
class Timings:
    """Seconds per step, in the order they ran."""

    steps: dict = field(default_factory=dict)

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + seconds

    @contextmanager
    def span(self, step: str, excluding: tuple[str, ...] = ()) -> Iterator[None]:
        """Adds the block's seconds to ``step``, less what the steps in ``excluding`` gained during
        it: work the block drives but that is timed as a step of its own (reading during the
        build, reading and searching while the output is written)."""
        def nested() -> float:
            return sum(self.steps.get(name, 0.0) for name in excluding)

        t0, before = time.perf_counter(), nested()
        yield
        self.add(step, time.perf_counter() - t0 - (nested() - before))


# --------------------------------------------------------------------------- build
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
    return min(threads, usable_cores())


def build_index(inp: Input, ids: np.ndarray | None, spec: IndexSpec, progress: Progress,
                keep_lists: bool, timings: Timings, consume: bool = False) -> tuple[Index, np.ndarray | None]:
    """Reads the vectors in batches into a new index (builder.build_streaming); ``ids`` None means
    row positions. With ``keep_lists`` (a self-join, ivf) also each item's nprobe nearest lists,
    int32 [n, nprobe], else None. ``consume``: held vectors are let go as they are added
    (Input.vector_batches), so the input and the index are not both in memory. The time spent
    reading input (none when it is held) is added to ``timings`` as "read"."""
    spec = spec.replace(threads=usable_threads(spec.threads))
    dim = inp.held[0][1].shape[1] if inp.held else None
    with progress.bar(inp.num_rows, "building") as bar:
        def batches():
            nonlocal dim
            for first, x in _timed(inp.vector_batches(BUILD_BATCH, consume=consume), timings, "read"):
                dim = x.shape[1]
                yield first, x
                bar.update(len(x))

        def sample(nlist: int) -> np.ndarray:
            with timings.span("read"):
                return train_sample(inp, dim, ivf_default_train_size(nlist, inp.num_rows))

        index, lists = build_streaming(
            batches(), inp.num_rows, spec, ids=ids, train_sample=sample, keep_lists=spec.nprobe if keep_lists else 0,
            rows_context=lambda first, rows: rows_of_input(inp.vector_col, first, rows), dim=dim,
            # held: the lists are sized by a first pass over the vectors in memory, then filled,
            # or (held in one block, to be let go) kept where they are as the lists
            assign_first=(lambda: inp.vector_batches(BUILD_BATCH)) if inp.held else None,
            adopt=(lambda: (inp.take_block(), None)) if consume and inp.block is not None else None)
        if inp.block is None and inp.consumed:
            bar.update(inp.num_rows - bar.n)  # adopted whole: no batch passed the bar
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
    source = _stored_rows(index, kk) if inp.consumed else _input_rows(inp, rows, index.dim)
    with progress.bar(inp.num_rows, desc) as bar:
        for sel, x in _timed(source, timings, "read"):
            t0 = time.perf_counter()
            first = sel.start if isinstance(sel, slice) else 0  # stored rows were checked when added
            with rows_of_input(inp.vector_col, first, len(x)):
                if lists is not None:
                    found, dist = index.search(x, kk, lists=lists[sel])
                else:
                    found, dist = index.search(x, kk, ef)
            own = None if self_ids is None else self_ids[sel]
            neighbors = neighbors_array(found, dist, id_values=item_ids, exclude=own, k=k)
            if item_ids is None:
                neighbors = _map_back(neighbors, item_id_type)
            if isinstance(sel, slice):
                ids = query_ids.slice(first, len(x))
            elif pa.types.is_integer(query_ids.type) and not query_ids.null_count:
                # (numpy's take: Array.take imports pyarrow.compute, 0.05-0.07 s of a job's start)
                ids = primitive_array(integer_values(query_ids)[sel], query_ids.type)
            else:
                ids = query_ids.take(primitive_array(sel, pa.int64()))
            out = pa.RecordBatch.from_arrays([ids, neighbors], schema=schema)
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
    first_pass: tuple[int, int, float] | None = None  # (dims, of dim, variance share): a projected first pass used


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

    ``self_join``: the index is built to search its own items (IndexSpec.for_items: a batch) and an ivf
    build also returns each item's lists to scan. The vectors are read once into memory first
    when the job passes over them more than once (the self-join searches them again; an ivf
    build samples them first) and they fit (hold_vectors). The held vectors are let go as the
    build adds them unless a self-join needs them again: its index keeps float32 rows and gives
    them back (``inp.consumed``: search from ``index.reconstruct``), so the input and the index
    are never both in memory. A float32 ivf or flat index takes the held vectors whole (one
    RowBlock, ``Index.adopt_rows``: ivf as its lists): they are never copied. Timings: "read" (all
    reading of the input, also in batches during the build when it is not held) and "build".
    """
    t0 = time.perf_counter()
    inp = open_input(input_path, id_col, vector_col)
    ids = read_ids(inp, unique=True)
    direct = engine_ids(ids)
    spec = spec.for_items(inp.num_rows, batch=self_join)
    if self_join or spec.kind == "ivf":
        # float32 ivf and flat indexes adopt the rows read (builder.build_streaming); hnsw adds
        # them batch by batch, so its long build moves the progress bar (and each held batch is
        # let go once added: one copy of the vectors plus a batch, as adopting would hold)
        hold_vectors(inp, progress, threads=usable_threads(spec.threads),
                     one_block=spec.kind in ("ivf", "flat") and spec.storage == "float32")
    timings.add("read", time.perf_counter() - t0)
    consume = inp.held is not None and (not self_join or spec.storage == "float32")
    with timings.span("build", excluding=("read",)):
        index, lists = build_index(inp, direct, spec, progress, self_join, timings, consume=consume)
    return inp, ids, direct, index, lists


def _stored_rows(index: Index, k: int) -> Iterator[tuple[np.ndarray | slice, np.ndarray]]:
    """(rows, float32 [m, dim]) of the index's own float32 vectors: a self-join's queries once the
    input was let go (under cosine normalised, as searched). ``rows``: their positions in the input.

    ivf gives them list after list (Index.list_order), STORED_BATCH_BYTES of them at a time: a
    batch then holds whole lists' members, and each list is scanned once for all of them (the
    500k x 768 clustered self-join at nprobe 1: its search 5.5 s in input order in 181k-row
    batches, 3.9-4.0 s so in 8k-16k-row batches, and its batch 24 MB instead of 0.5-0.7 GB).
    flat and hnsw in input order (float32: slices of Index.vectors in place)."""
    n = len(index)
    rows = max(1, min(STORED_BATCH_BYTES // (4 * index.dim), RESULT_BYTES // (12 * max(k, 1))))
    if index.kind == "ivf":
        order = index.list_order()
        in_place = index.rows_in_list_order()  # lists that adopted the input: no copy
        for lo in range(0, n, rows):
            sel = order[lo:lo + rows]
            yield sel, index.reconstruct_rows(sel) if in_place is None else in_place[lo:lo + rows]
        return
    in_place = index.vectors if index.storage == "float32" else None  # no copy of float32 rows
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        yield slice(lo, hi), index.reconstruct(lo, hi) if in_place is None else in_place[lo:hi]


def _input_rows(inp: Input, rows: int, dim: int) -> Iterator[tuple[slice, np.ndarray]]:
    for first, x in inp.vector_batches(rows, dim):
        yield slice(first, first + len(x)), x


def use_first_pass(index: Index, setting, timings: Timings) -> tuple[int, int, float] | None:
    """Turns on ``index``'s projected first pass (``setting``, as :func:`first_pass_setting` gives
    it: ``"auto"``, a count, or 0 for off) when it can take one (ivf, float32 lists re-ranked), and
    fits it now (timed as "projection"). Returns (dims, of dim, variance share) when a search will
    use it, else None."""
    if not setting or index.kind != "ivf" or index.storage != "float32" or not index.params["rerank"]:
        return None
    if index.first_pass_dims != setting:  # else set at creation (IndexSpec.first_pass_dims): trained in it
        index.first_pass_dims = setting
    t0 = time.perf_counter()
    dims, share = index.first_pass_in_use()
    if not dims:
        return None
    timings.add("projection", time.perf_counter() - t0)
    return dims, index.dim, share


def similar(input_path: str, output: str, *, id_col: str = "id", vector_col: str = "vector", k: int = 10,
            spec: IndexSpec = DEFAULT_SPEC, fmt: str = "parquet", overwrite: bool = False,
            progress: Progress | None = None, group_col: str | None = None, recall: float | None = None,
            first_pass="auto") -> Result:
    """For every item, its ``k`` nearest other items (itself excluded): one output row per item.

    With fewer than k+1 items, each row has every other item (n - 1 neighbours). With
    ``group_col``, an item's neighbours are items of its own group (sparknn.grouped): a row whose
    group has fewer than k + 1 items gets all the others (none for a group of one). ``recall``
    (ivf, hnsw): instead of ``spec``'s nprobe / ef_search, the least that reaches this recall@k,
    measured on a sample of the items after the build (``Index.tune``; ``Result.tuning``).
    ``first_pass`` (ivf with float32 lists re-ranked, the default): ``Index.first_pass_dims`` for
    the search and its tuning, ``"auto"`` by default (``Result.first_pass``: what was used).
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
    first_pass = 0 if first_pass is None else first_pass_setting(first_pass, "first_pass")
    if spec.kind == "ivf" and spec.storage == "float32" and spec.rerank and first_pass:
        spec = spec.replace(first_pass_dims=first_pass)  # from the index's creation: k-means in the subspace
    inp, ids, direct, index, lists = _read_and_build(input_path, id_col, vector_col, spec, progress, timings,
                                                     self_join=True)

    k = capped_k(k, inp.num_rows, self_join=True)
    first = use_first_pass(index, first_pass, timings) if k > 0 else None
    tuned = None
    if recall is not None and index.kind != "flat" and k > 0:
        t0 = time.perf_counter()
        tuned = index.tune(recall, k=k)  # sets index.nprobe / ef_search
        if lists is not None and tuned.value > lists.shape[1]:
            lists = None  # more lists than kept at the build: the search finds them again
        elif lists is not None:
            lists = lists[:, :tuned.value]
        timings.add("recall tuning", time.perf_counter() - t0)
    self_ids = direct if direct is not None else np.arange(inp.num_rows, dtype=np.int64)
    schema = output_schema(pa.field(id_col, ids.type), ids.type)
    preview: list = []
    batches = _search_batches(inp, index, ids, k, None, None if direct is not None else ids, ids.type,
                              self_ids, progress, "searching", timings, lists)
    with timings.span("write", excluding=("read", "search")):  # the batches are read and searched as written
        rows = write_batches(output, schema, _keep_preview(batches, preview), fmt, overwrite)
    return Result(rows, k, timings, pa.Table.from_batches(preview) if preview else None, tuned, first)


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
    parts = [x for _, x in inp.vector_chunks()]
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
            pq.write_table(pa.table({id_col: ids}), tmp_ids, **PARQUET_WRITE)  # distinct ids: no dictionary
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
            table = _read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:
            raise IndexFileError(f"{what}, {sidecar!r}, matches its checksum but cannot be read: "
                                 f"{one_line(exc)}") from None
    if table.num_columns != 1 or table.num_rows != count:
        raise IndexFileError(f"{what}, {sidecar!r}, holds {table.num_rows} rows in {table.num_columns} columns: "
                             f"expected one column of {count} ids")
    return table.column(0).combine_chunks()


def _read_table(source) -> pa.Table:
    """A whole Parquet file as a table: pq.read_table would import pyarrow.dataset, and with it pandas."""
    with pq.ParquetFile(source) as parquet:
        return parquet.read()


def load_with_ids(index_path: str, threads: int = 0) -> tuple[Index, pa.Array | None]:
    """The index (memory-mapped) and, if it was built with non-integer ids, the user's ids by position.

    An index that records an ids file (``build`` since SideFiles) requires it,
    unchanged: missing or damaged is an IndexFileError naming it. Older indexes
    keep the fingerprint check of the ids file's metadata.
    """
    if not os.path.exists(index_path):
        raise UsageError(f"index {index_path!r} does not exist")
    check_plain(index_path, "index", "an index file written by `sparknn build`")
    index = load(index_path, mmap=True, threads=usable_threads(threads))
    sidecar = index_path + IDS_SUFFIX
    recorded = index.side_files.get(IDS_ROLE)
    if recorded is not None:
        return index, _read_verified_ids(sidecar, recorded, index_path, len(index))
    if not os.path.exists(sidecar):
        return index, None
    check_plain(sidecar, "ids file", f"the ids file `sparknn build` wrote beside {index_path!r}")
    try:
        table = _read_table(sidecar)
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
    # read once for the check and the search when they fit
    hold_vectors(inp, progress, index.dim, threads=usable_threads(threads))
    # Check every query vector before the search starts, so a bad row fails in seconds, not hours.
    for first, x in inp.vector_batches(BUILD_BATCH, index.dim):
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise DataError(f"column {vector_col!r} row {first + int(np.argmin(finite))} has a NaN or infinite "
                            "value: remove or impute it before querying")
    timings.add("read", time.perf_counter() - t0)

    k = capped_k(k, len(index), self_join=False)
    if ef is not None:
        ef = min(ef, max(len(index), 1))  # a beam wider than the index visits nothing more
    item_type = item_ids.type if item_ids is not None else pa.int64()
    schema = output_schema(pa.field(id_col, query_ids.type), item_type)
    preview: list = []
    batches = _search_batches(inp, index, query_ids, k, ef, item_ids, item_type, None, progress, "querying", timings)
    with timings.span("write", excluding=("read", "search")):  # the batches are read and searched as written
        rows = write_batches(output, schema, _keep_preview(batches, preview), fmt, overwrite)
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
