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
from sparknn.arrow import vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.spark.direct_read import ParquetScan, first_dim, read_scan
from sparknn.spark.ivf_plan import sample_size
from sparknn.spark.layout import MAX_STORED_PROBES, Layout, ShardFiles, probes_column, write_column, write_ids
from sparknn.spark.schema import check_unique, collect_arrow, features_as_float_array, validate
from sparknn.spark.tasks import new_index

BUILD_BATCH = 65_536  # vectors validated, assigned and added per step


def id_order(ids: pa.Array) -> np.ndarray | None:
    """The permutation that sorts ``ids`` (strings too), or None when they are sorted already."""
    order = pc.sort_indices(ids).to_numpy()
    return None if np.array_equal(order, np.arange(len(order))) else order


def use_direct_ids(ids: pa.Array, id_type: str) -> bool:
    """Non-negative integer ids serve as engine ids; strings and negative ints map via positions."""
    if id_type == "string":
        return False
    return len(ids) == 0 or pc.min(ids).as_py() >= 0


def vector_batches(column: pa.ChunkedArray, name: str, rows: int = BUILD_BATCH, order: np.ndarray | None = None):
    """(first row, float32 [m, dim]) over a collected vector column, ``rows`` at a time; with
    ``order``, the rows ``order[first:first + m]`` (gathered batch by batch).

    A batch within one chunk (one per partition) is read in place, zero-copy for float32;
    only a batch across chunks is joined: the column is never copied whole (a second copy
    of the data is what the driver can least afford).
    """
    dim = None
    for first in range(0, len(column), rows):
        if order is not None:
            part = column.take(pa.array(order[first:first + rows]))
        else:
            part = column.slice(first, rows)
        x = vectors_to_numpy(part.chunk(0) if part.num_chunks == 1 else part.combine_chunks(), name, dim)
        dim = x.shape[1]
        yield first, x


def _sample(column: pa.ChunkedArray, name: str, size: int, seed: int, order: np.ndarray | None) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement, in row order (of ``order``): the k-means sample."""
    n = len(column)
    chosen = np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))
    parts = []
    for first, x in vector_batches(column, name, order=order):
        lo, hi = np.searchsorted(chosen, [first, first + len(x)])
        parts.append(x[chosen[lo:hi] - first])
    return np.concatenate(parts)


def _build(vectors: pa.ChunkedArray, ids: np.ndarray | None, features: str, params: dict,
           order: np.ndarray | None = None):
    """The index over the collected vectors, batch by batch; for ivf also each item's nearest
    lists, int32 [n, width] (the first is where it is stored, all are where similarItems
    searches it: saved beside the index, so no second quantizer pass). With ``order`` the rows
    are added in that order (``ids`` are given in it already)."""
    n = len(vectors)
    index = lists = None
    for first, x in vector_batches(vectors, features, order=order):
        if index is None:
            index = new_index(x.shape[1], params, params["numThreads"], n)
            if index.kind == "ivf":
                nlist = index.params["nlist"]
                index.train(_sample(vectors, features, sample_size(nlist, n), params["seed"], order))
                lists = np.empty((n, min(index.nprobe, nlist, MAX_STORED_PROBES)), dtype=np.int32)
        rows = None if ids is None else ids[first:first + len(x)]
        if lists is None:
            index.add(x, rows)
            continue
        nearest = index.nearest_lists(x, lists.shape[1])
        index.add(x, rows, lists=nearest[:, :1])
        lists[first:first + len(x)] = nearest
    return index, lists


def collect_bytes(df: DataFrame, features: str, scan: ParquetScan | None = None) -> tuple[int, int, int]:
    """(rows, dim, bytes the driver would collect: float32 vectors and 8-byte ids), from a count
    and the first non-null vector: jobs that read row counts and one row, not the data (or, for
    files read directly, the files' footers and one row group)."""
    if scan is not None:
        try:
            dim = first_dim(scan)
            return scan.rows, dim, scan.rows * (4 * max(dim, 1) + 8)
        except (OSError, pa.ArrowException):
            pass  # the files changed since find_scan read their footers: ask Spark
    head = df.select(features_as_float_array(df, features).alias("v")).where(F.col("v").isNotNull()).first()
    dim = len(head[0]) if head is not None else 0
    rows = df.count()
    return rows, dim, rows * (4 * max(dim, 1) + 8)


def driver_or_routed(df: DataFrame, features: str, params: dict, scan: ParquetScan | None = None) -> str:
    """Where a fit with numShards=1 builds: 'driver' (one index from vectors collected as
    Arrow) or 'routed' (an ivf index built in parts on executors).

    ``ivfMode="auto"`` collects only what the driver can hold with room (see
    ivf_memory.driver_collect_budget); a driver build that cannot fit is refused
    with the numbers before any data moves, instead of an OutOfMemoryError.
    """
    ivf = params["kind"] == "ivf"
    if ivf and params["ivfMode"] == "routed":
        return "routed"
    from sparknn.spark.ivf_memory import driver_collect_budget, human

    rows, dim, need = collect_bytes(df, features, scan)
    budget, source = driver_collect_budget(df.sparkSession)
    if need <= budget:
        return "driver"
    if ivf and params["ivfMode"] == "auto":
        return "routed"
    advice = ("use ivfMode='routed' (or 'auto'), which builds on executors"
              if ivf else "use indexType='ivf' (built on executors when the data is large) or numShards=N")
    raise InvalidArgumentError(
        f"building on the driver collects {rows} vectors of dim {dim}, about {human(need)}, but the driver "
        f"can take {human(budget)} ({source}): {advice}, or give the driver more memory "
        "(spark.driver.memory, spark.driver.maxResultSize)")


def driver_table(df: DataFrame, features: str, id_col: str, id_type: str, scan: ParquetScan | None) -> pa.Table:
    """Columns ``id`` and ``v`` of every row on the driver as Arrow: read from the files when
    ``df`` is a plain scan of local Parquet (direct_read), else collected through Spark."""
    table = read_scan(scan, id_type) if scan is not None else None
    if table is None:
        table = collect_arrow(df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v")))
    return table


def build_on_driver(df: DataFrame, features: str, id_col: str, id_type: str, params: dict, root: str,
                    prefix: str, durable: bool = True, scan: ParquetScan | None = None) -> Layout:
    """Collects ids and vectors as Arrow, builds one index with all driver cores, writes it to root
    (flushed to disk when ``durable``; a temporary directory does not outlive the driver anyway)."""
    table = driver_table(df, features, id_col, id_type, scan)
    if table.num_rows == 0:
        raise InvalidArgumentError("the DataFrame to index is empty: fit needs at least one row")
    ids, vectors = table.column("id").combine_chunks(), table.column("v")
    del table
    if ids.null_count:
        validate(df, features, id_col, id_type != "string")  # raises with the counts
        raise InvalidArgumentError(f"idCol {id_col!r} has {ids.null_count} null values")
    check_unique(ids, id_col)
    direct = use_direct_ids(ids, id_type)
    # Rows in id order, not collection order: positions (string ids), the sample k-means trains on
    # and the graph do not depend on how the input was partitioned, so neither do ties.
    order = id_order(ids)
    if order is not None:
        ids = ids.take(pa.array(order))
    try:
        index, lists = _build(vectors, ids.to_numpy() if direct else None, features, params, order)
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
