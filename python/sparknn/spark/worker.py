"""Single-index and sharded queries: executor functions that search every shard of a model.

``transform`` adds each query row's neighbours; ``similarItems`` searches the
stored items themselves. Results from several shards merge into one global
top-k, ties broken by the user's id. The files, their cache and the task
plumbing are in ``tasks``; what the files hold is in ``layout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparknn.index import Index
from sparknn.arrow import neighbors_array, vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.spark.layout import ARROW_ID_TYPES, POSITION_BITS, POSITION_MASK, Layout
from sparknn.spark.tasks import load_ids, load_probes, partition_id, shard_index, side_file, task_threads

QUERY_CHUNK = 8192  # similarItems queries per output batch: bounds the memory of one search


@dataclass
class Shard:
    index: Index
    ids: pa.Array | None
    probes: np.ndarray | None = None


def open_shards(layout: Layout) -> list[Shard]:
    out = []
    for s, files in enumerate(layout.shards):
        index = shard_index(layout, s)
        # The user's ids by position: a shard's id file, or a routed part's items file (its "id" column).
        role = "items" if files.items else "ids"
        ids = side_file(layout, s, role, load_ids) if files.ids or files.items else None
        probes = side_file(layout, s, "probes", load_probes) if files.probes else None
        out.append(Shard(index, ids, probes))
    return out


# -- search -----------------------------------------------------------------------------
def search(layout: Layout, shards: list[Shard], queries: np.ndarray, k: int, ef: int, threads: int,
           nprobe: int | None = None):
    """Global top-k over all shards: (engine ids int64 [nq, k], distances float32 [nq, k])."""
    parts_ids, parts_dist = [], []
    for s, shard in enumerate(shards):
        ks = min(k, len(shard.index))
        if ks == 0:
            continue
        shard.index.threads = threads
        ids, dist = shard.index.search(queries, ks, ef=max(ef, ks) if layout.kind == "hnsw" else None,
                                       nprobe=nprobe if layout.kind == "ivf" else None)
        if layout.positional and s:
            ids = np.where(ids >= 0, ids | (s << POSITION_BITS), ids)
        parts_ids.append(ids)
        parts_dist.append(dist)
    if len(parts_ids) == 1:
        return parts_ids[0], parts_dist[0]
    ids = np.concatenate(parts_ids, axis=1)
    dist = np.concatenate(parts_dist, axis=1)
    order = _by_distance_then_id(layout, shards, ids, dist)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dist, order, axis=1)


def _by_distance_then_id(layout: Layout, shards: list[Shard], ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Each row's candidates ordered by distance, then by the user's id (padding, id -1 and
    distance +inf, last): ties do not depend on which shard holds which item."""
    if not layout.positional:
        return np.lexsort((ids, dist), axis=1)
    nq, m = ids.shape
    flat = ids.reshape(-1)
    valid = flat >= 0
    where = np.full(len(flat), -1, dtype=np.int64)
    where[valid] = np.arange(int(valid.sum()))
    users = user_ids(layout, shards, flat[valid]).take(pa.array(where, mask=~valid))
    rows = np.repeat(np.arange(nq, dtype=np.int64), m)
    keys = [(name, "ascending") for name in ("r", "d", "u")]
    order = pc.sort_indices(pa.table({"r": rows, "d": dist.reshape(-1), "u": users}),
                            sort_keys=keys).to_numpy().astype(np.int64)
    return order.reshape(nq, m) - (rows.reshape(nq, m) * m)


def user_ids(layout: Layout, shards: list[Shard], engine_ids: np.ndarray) -> pa.Array:
    """The user's ids for engine ids, typed like the input id column."""
    target = ARROW_ID_TYPES[layout.id_type]
    if not layout.positional:
        return pa.array(engine_ids, type=pa.int64()).cast(target)
    shard_no = engine_ids >> POSITION_BITS
    local = engine_ids & POSITION_MASK
    present = np.unique(shard_no)
    if len(present) <= 1:
        s = int(present[0]) if len(present) else 0
        return shards[s].ids.take(pa.array(local)).cast(target)
    parts, where = [], []
    for s in present:
        sel = np.flatnonzero(shard_no == s)
        parts.append(shards[int(s)].ids.take(pa.array(local[sel])).cast(target))
        where.append(sel)
    # Put the per-shard results back in query order.
    inverse = np.empty(len(engine_ids), dtype=np.int64)
    inverse[np.concatenate(where)] = np.arange(len(engine_ids))
    return pa.concat_arrays(parts).take(pa.array(inverse))


def neighbors(layout, shards, engine_ids, dist, k, exclude=None) -> pa.Array:
    """list<struct<id, distance>> with the user's ids, nearest first."""
    lst = neighbors_array(engine_ids, dist, exclude=exclude, k=k)
    values = lst.values
    ids = user_ids(layout, shards, values.field("id").to_numpy(zero_copy_only=False))
    struct = pa.StructArray.from_arrays([ids, values.field("distance")], names=["id", "distance"])
    return pa.ListArray.from_arrays(lst.offsets, struct)


# -- mapInArrow functions ----------------------------------------------------------------
def transform_batches(batches, *, layout: Layout, features: str, output: str, k: int, ef: int,
                      num_threads: int, nprobe: int | None = None):
    """Adds the neighbours column to every batch of the query DataFrame."""
    shards = open_shards(layout)
    threads = task_threads(num_threads)
    for batch in batches:
        try:
            queries = vectors_to_numpy(batch.column(features), features, layout.dim)
            ids, dist = search(layout, shards, queries, k, ef, threads, nprobe)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"{err} (in partition {partition_id()}; rows are counted from the "
                                       "start of an Arrow batch)") from None
        column = neighbors(layout, shards, ids, dist, k)
        yield pa.RecordBatch.from_arrays(list(batch.columns) + [column], names=batch.schema.names + [output])


def similar_batches(batches, *, layout: Layout, slices, id_col: str, output: str, k: int, ef: int,
                    include_self: bool, num_threads: int, nprobe: int | None = None):
    """Every stored item of the given slices -> its k nearest other items.

    The queries are the vectors stored in the index itself (normalised under
    cosine, which leaves cosine neighbours unchanged; decoded for 16-bit and
    compressed storage), so no training data is needed: this works on a loaded model too.
    An ivf index built on the driver kept each item's nearest lists: the items
    are searched in them, without a pass over the quantizer.
    """
    shards = open_shards(layout)
    threads = task_threads(num_threads)
    kk = k if include_self else k + 1
    for batch in batches:
        for task in batch.column(0).to_numpy():
            s, lo, hi = slices[int(task)]
            index = shards[s].index
            index.threads = threads
            stored = index.vectors if index.kind != "ivf" and index.storage == "float32" else None
            probes = shards[s].probes
            if probes is not None:
                width = min(nprobe or index.nprobe, index.params["nlist"])
                probes = probes if len(shards) == 1 and probes.shape[1] >= width else None
            # Items searched in their stored lists are taken list after list, so each list's
            # members are scanned together (larger sgemm tiles): positions, not labels, slice the task.
            rows = index.list_order() if probes is not None else None
            # float32 lists mapped from the file lie in list order: the queries are slices of them
            in_place = index.rows_in_list_order() if rows is not None else None
            # within 64 MiB of query vectors per search call
            chunk = index.query_batch(QUERY_CHUNK, max(QUERY_CHUNK, (64 << 20) // (4 * index.dim)), nprobe)
            for start in range(lo, hi, chunk):
                stop = min(hi, start + chunk)
                at = np.arange(start, stop, dtype=np.int64) if rows is None else rows[start:stop]
                if layout.positional:
                    own = at | (s << POSITION_BITS)
                else:
                    own = np.asarray(index.ids[at], dtype=np.int64)
                if rows is not None:
                    queries = index.reconstruct_rows(at) if in_place is None else in_place[start:stop]
                    ids, dist = index.search(queries, min(kk, len(index)),
                                             lists=np.ascontiguousarray(probes[at, :width]))
                else:
                    queries = index.reconstruct(start, stop) if stored is None else stored[start:stop]
                    ids, dist = search(layout, shards, queries, kk, ef, threads, nprobe)
                column = neighbors(layout, shards, ids, dist, k, exclude=None if include_self else own)
                yield pa.RecordBatch.from_arrays([user_ids(layout, shards, own), column], names=[id_col, output])
