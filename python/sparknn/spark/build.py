"""Building the index on the driver: Arrow collection (or a direct Parquet read), id mapping, one index."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparknn import integrity
from sparknn.arrow import ChunkedVectors, vectors_to_numpy
from sparknn.builder import build_streaming, engine_ids
from sparknn.errors import InvalidArgumentError
from sparknn.index import IndexSpec, RowBlock
from sparknn.spark.direct_read import ParquetScan, read_scan
from sparknn.spark.ivf_plan import sample_size
from sparknn.spark.layout import MAX_STORED_PROBES, Layout, ShardFiles, probes_column, write_column, write_ids
from sparknn.spark.schema import check_unique, collect_arrow, features_as_float_array, validate

BUILD_BATCH = 65_536  # vectors validated, assigned and added per step


def id_order(ids: pa.Array) -> np.ndarray | None:
    """The permutation that sorts ``ids`` (strings too), or None when they are sorted already."""
    order = pc.sort_indices(ids).to_numpy()
    return None if np.array_equal(order, np.arange(len(order))) else order


def vector_batches(column: pa.ChunkedArray, name: str, rows: int = BUILD_BATCH, order: np.ndarray | None = None):
    """(first row, float32 [m, dim]) over a collected vector column, ``rows`` at a time; with
    ``order``, the rows ``order[first:first + m]`` (gathered batch by batch).

    A batch within one chunk (one per partition) is read in place, zero-copy for float32;
    only a batch across chunks is joined: the column is never copied whole (a second copy
    of the data is what the driver can least afford). With ``order`` each batch gathers its
    rows chunk by chunk (arrow.ChunkedVectors), not through ChunkedArray.take, which joins every
    chunk into one array first (500k x 768: 1.4 GB more and 3.3 s per batch).
    """
    if order is not None:
        yield from _gathered(column, name, rows, order)
        return
    dim = None
    for first in range(0, len(column), rows):
        part = column.slice(first, rows)
        x = vectors_to_numpy(part.chunk(0) if part.num_chunks == 1 else part.combine_chunks(), name, dim)
        dim = x.shape[1]
        yield first, x


def _gathered(column: pa.ChunkedArray, name: str, rows: int, order: np.ndarray):
    """vector_batches in ``order``: each batch's rows gathered chunk by chunk (ChunkedVectors)."""
    vectors = ChunkedVectors(column, name)
    for first in range(0, len(column), rows):
        yield first, vectors.take(order[first:first + rows])


def _sample(column: pa.ChunkedArray, name: str, size: int, seed: int, order: np.ndarray | None) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement, in row order (of ``order``): the k-means sample."""
    n = len(column)
    chosen = np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))
    # only the chosen rows are gathered (a pass over every batch copied the whole column in id order)
    return ChunkedVectors(column, name).take(chosen if order is None else order[chosen])


def _build(vectors: pa.ChunkedArray, ids: np.ndarray | None, features: str, spec: IndexSpec,
           order: np.ndarray | None = None, block: RowBlock | None = None):
    """The index over the collected vectors (builder.build_streaming); for ivf also each item's
    nearest lists, int32 [n, width] (the first is where it is stored, all are where similarItems
    searches it: saved beside the index, so no second quantizer pass). With ``order`` the rows
    are added in that order (``ids`` are given in it already). An ivf index finds every item's
    lists in a first pass over the collected column and reserves each list at its final size
    before the adds: lists grown batch by batch held up to twice their vectors (500k x 768: the
    driver's peak 5.66 GiB). ``block``: the RowBlock ``vectors`` are views of, in file order; a
    float32 index keeps its rows in place (Index.adopt_rows, in ``order``; ivf as its lists):
    the vectors are then on the driver once, and ``vectors`` must not be read after."""
    n = len(vectors)

    def sample(nlist: int) -> np.ndarray:
        return _sample(vectors, features, sample_size(nlist, n), spec.seed, order)

    def batches():
        return vector_batches(vectors, features, order=order)

    first = next(vector_batches(vectors, features, rows=1), None) if spec.kind == "ivf" else None
    return build_streaming(batches(), n, spec, ids=ids, train_sample=sample, keep_lists=MAX_STORED_PROBES,
                           dim=None if first is None else first[1].shape[1],
                           assign_first=None if first is None else batches,
                           adopt=None if block is None else lambda: (block, order))


def driver_table(df: DataFrame, features: str, id_col: str, id_type: str,
                 scan: ParquetScan | None) -> tuple[pa.Table, RowBlock | None]:
    """Columns ``id`` and ``v`` of every row on the driver as Arrow: read from the files when
    ``df`` is a plain scan of local Parquet (direct_read), else collected through Spark; and the
    RowBlock the vectors are views of, when read so (direct_read.read_scan)."""
    table, block = read_scan(scan, id_type) if scan is not None else (None, None)
    if table is None:
        table = collect_arrow(df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v")))
    return table, block


def build_on_driver(df: DataFrame, features: str, id_col: str, id_type: str, spec: IndexSpec, root: str,
                    prefix: str, durable: bool = True, scan: ParquetScan | None = None) -> Layout:
    """Collects ids and vectors as Arrow, builds one index with all driver cores, writes it to root
    (flushed to disk when ``durable``; a temporary directory does not outlive the driver anyway)."""
    table, block = driver_table(df, features, id_col, id_type, scan)
    if table.num_rows == 0:
        raise InvalidArgumentError("the DataFrame to index is empty: fit needs at least one row")
    ids, vectors = table.column("id").combine_chunks(), table.column("v")
    del table
    if ids.null_count:
        validate(df, features, id_col, id_type != "string")  # raises with the counts
        raise InvalidArgumentError(f"idCol {id_col!r} has {ids.null_count} null values")
    check_unique(ids, id_col)
    # Rows in id order, not collection order: positions (string ids), the sample k-means trains on
    # and the graph do not depend on how the input was partitioned, so neither do ties.
    order = id_order(ids)
    if order is not None:
        ids = ids.take(pa.array(order))
    own_ids = engine_ids(ids)
    direct = own_ids is not None
    try:
        index, lists = _build(vectors, own_ids, features, spec.for_items(len(vectors), batch=True), order, block)
    except InvalidArgumentError:
        # Explain with counts and an example id from a JVM pass; fall back to the first error.
        validate(df, features, id_col, id_type != "string")
        raise
    del vectors
    # Side files first, then the index recording their digests (readers verify them against it).
    ids_name = probes_name = None
    digests = {}
    if not direct:
        ids_name = f"{prefix}-ids-0.arrow"
        write_ids(os.path.join(root, ids_name), ids)
        digests["ids"] = integrity.digest(os.path.join(root, ids_name))
    if lists is not None:
        probes_name = f"{prefix}-probes-0.arrow"
        write_column(os.path.join(root, probes_name), "lists", probes_column(lists))
        digests["probes"] = integrity.digest(os.path.join(root, probes_name))
    name = f"{prefix}-shard-0.snn"
    index.save(os.path.join(root, name), sync=durable, side_files=digests)
    return Layout(index.dim, index.metric, index.kind, id_type, not direct,
                  (ShardFiles(name, ids_name, len(index), probes_name, tuple(sorted(digests.items()))),), root)


def file_prefix(uid: str) -> str:
    return f"{uid}-{uuid.uuid4().hex[:8]}"
