"""Routed IVF queries: each query goes only to the parts holding its nprobe nearest lists.

Three stages, all Arrow (no Python rows, no groupBy of Python objects):

1. route (mapInArrow over the queries): the nearest lists from the shared
   quantizer, widened for the rare query whose lists hold fewer than k items;
   one row per (query, part holding one of those lists). The first row of a
   query also carries its payload (the input row for ``transform``, the id for
   ``similarItems``), so nothing needs joining back later.
2. search (shuffled by part, one part per task): the part's index searched with
   the query's own lists, carried from the routing (no quantizer pass per
   part). Lists of other parts are empty there, so it scans exactly the routed
   lists it holds; the union over parts is the in-process search.
3. merge (shuffled by query key, sorted within partitions): consecutive rows
   of a query merged into its global top-k with numpy.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn.index import Index
from sparknn.arrow import fixed_rows, neighbors_array, rows_to_list, vectors_to_numpy
from sparknn.spark import part_chunks
from sparknn.spark.candidate_merge import PAYLOAD, candidates_schema, keyed_queries, merged
from sparknn.spark.ivf_plan import expand
from sparknn.spark.layout import ARROW_ID_TYPES, POSITION_BITS, POSITION_MASK, Layout
from sparknn.spark.schema import spark_id_type
from sparknn.spark.tasks import cached, key_column, load_index, shard_index, side_file, task_threads

CHUNK = 4096  # queries routed per output batch: bounds the copies of their vectors


# -- routing -------------------------------------------------------------------------------
def probes(q: Index, x: np.ndarray, sizes: np.ndarray, nprobe: int, need: int,
           nearest: np.ndarray | None = None):
    """(row offsets, lists): the lists each query scans, nearest first, as CSR (query i scans
    ``lists[offsets[i]:offsets[i + 1]]``).

    The engine's probing policy (``Index.probe_lists``) over the routed index's list sizes
    (``sizes``: all parts, not the quantizer's empty lists): a query's nprobe nearest lists
    (``nearest`` [n, >= nprobe] when already known: an item's, found when it was stored), widened
    for a query whose lists hold fewer than ``need`` items (= min(k, n), one more for a
    self-join), so that every row gets its full neighbour count.
    """
    return q.probe_lists(x, min(nprobe, len(sizes)), need, sizes, nearest)


def route(q, routing_arrays, x, nprobe, need, nearest=None):
    """(rows, parts, nprobe per pair, home mask, lists): one pair per (query, part), sorted by query
    then part; ``lists`` is each query's probed lists (CSR: row offsets, list numbers)."""
    sizes, offsets, parts = routing_arrays
    row_offsets, lists = probes(q, x, sizes, nprobe, need, nearest)
    per_row = np.diff(row_offsets).astype(np.int32)
    r, p = expand(np.repeat(np.arange(len(x)), per_row), lists, offsets, parts)
    num_parts = int(parts.max()) + 1 if parts.size else 1
    pairs = np.unique(r * num_parts + p)
    r, p = pairs // num_parts, pairs % num_parts
    home = np.ones(len(r), dtype=bool)
    home[1:] = r[1:] != r[:-1]
    return r, p.astype(np.int32), per_row[r], home, (row_offsets, lists)


def _routed_batch(q, arrays, x, keys, payload: pa.StructArray, nprobe, need, nearest=None) -> pa.RecordBatch:
    r, p, per_pair, home, (row_offsets, row_lists) = route(q, arrays, x, nprobe, need, nearest)
    take = pa.array(np.where(home, r, -1), mask=~home)  # payload once per query, null elsewhere
    # Each pair carries its query's lists, so the part searches exactly them (no quantizer pass there).
    lists = pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), pa.array(row_lists.astype(np.int32)))
    return pa.RecordBatch.from_arrays(
        [pa.array(p), pa.array(keys[r]), pa.array(per_pair), rows_to_list(x[r]), lists.take(pa.array(r)),
         payload.take(take)],
        names=["part", "qkey", "nprobe", "v", "lists", PAYLOAD])


def _quantizer(layout: Layout) -> Index:
    return cached(layout.path(layout.ivf.quantizer), load_index)


def route_queries(batches, *, layout: Layout, features: str, nprobe: int, need: int, num_threads: int):
    """transform: every input row routed; its key is unique per row (partition << 33 | row)."""
    q = _quantizer(layout)
    q.threads = task_threads(num_threads)
    arrays = layout.ivf.arrays()
    for chunk, x, keys in keyed_queries(batches, features, layout.dim, CHUNK):
        payload = pa.StructArray.from_arrays(chunk.columns, names=chunk.schema.names)
        yield _routed_batch(q, arrays, x, keys, payload, nprobe, need)


def _load_items(path: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()  # zero-copy views of the mapped file


def route_items(batches, *, layout: Layout, slices, id_col: str, nprobe: int, need: int, num_threads: int):
    """similarItems: the stored items of the given (part, lo, hi) slices, keyed by their engine ids."""
    q = _quantizer(layout)
    q.threads = task_threads(num_threads)
    for batch in batches:
        for task in batch.column(0).to_numpy():
            s, lo, hi = slices[int(task)]
            yield from _route_slice(q, layout, s, lo, hi, id_col, nprobe, need)


def route_received_items(batches, *, layout: Layout, id_col: str, nprobe: int, need: int, num_threads: int):
    """similarItems on a model whose items files arrive as chunk rows (part_chunks): every part
    named by a marker row is routed whole once its items file is."""
    q = _quantizer(layout)
    q.threads = task_threads(num_threads)
    with part_chunks.PartArrivals(layout, ("items",)) as arrivals:
        for batch in batches:
            for part, _ in arrivals.feed(batch):
                yield from _route_slice(q, layout, part, 0, layout.shards[part].count, id_col, nprobe, need)
        arrivals.finish()


def _route_slice(q: Index, layout: Layout, s: int, lo: int, hi: int, id_col: str, nprobe: int, need: int):
    """Items ``lo:hi`` of part ``s``, routed to the nearest lists stored with them at fit (when at
    least ``nprobe`` were kept), so the quantizer runs only for the rare item whose lists are widened."""
    arrays = layout.ivf.arrays()
    items = side_file(layout, s, "items", _load_items)
    field = items.schema.field("lists") if "lists" in items.schema.names else None
    stored = field is not None and field.type.list_size >= min(nprobe, layout.ivf.nlist)  # else: the quantizer
    for start in range(lo, hi, CHUNK):
        chunk = items.slice(start, min(hi, start + CHUNK) - start)
        x = fixed_rows(chunk.column("vector"))
        nearest = fixed_rows(chunk.column("lists")) if stored else None
        ids = chunk.column("id").combine_chunks()
        if layout.positional:
            keys = np.arange(start, start + len(x), dtype=np.int64) | (s << POSITION_BITS)
        else:
            keys = ids.cast(pa.int64()).to_numpy()
        payload = pa.StructArray.from_arrays([ids], names=[id_col])
        yield _routed_batch(q, arrays, x, keys, payload, nprobe, need, nearest)


# -- searching the parts ---------------------------------------------------------------------
def search_parts(batches, *, layout: Layout, k: int, exclude_self: bool, num_threads: int):
    """Each routed query searched in its part: (qkey, neighbours list<struct<id, distance>>, payload).
    A model whose parts arrive as chunk rows (part_chunks) searches a part once its files are whole."""
    search = partial(_search_part, layout, k, exclude_self, task_threads(num_threads))
    if layout.chunks is None:
        for batch in batches:
            part_col = batch.column("part").to_numpy()
            for p in np.unique(part_col):
                sel = np.flatnonzero(part_col == p)
                yield search(int(p), batch.take(pa.array(sel)) if len(sel) < batch.num_rows else batch)
        return
    with part_chunks.PartArrivals(layout, part_chunks.search_roles(layout)) as arrivals:
        for batch in batches:
            for part, sub in arrivals.feed(batch):
                yield search(part, sub)
        arrivals.finish()


def _search_part(layout: Layout, k: int, exclude_self: bool, threads: int, p: int, sub: pa.RecordBatch):
    kk = k + 1 if exclude_self else k
    index = shard_index(layout, p)
    index.threads = threads
    x = vectors_to_numpy(sub.column("v"), "v", layout.dim)
    keys = sub.column("qkey").to_numpy()
    per_row = sub.column("nprobe").to_numpy()
    ids = np.full((len(x), kk), -1, dtype=np.int64)
    dist = np.full((len(x), kk), np.inf, dtype=np.float32)
    if len(index):
        lists = sub.column("lists").flatten().to_numpy().astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(per_row)])
        for m in np.unique(per_row):
            rows = np.flatnonzero(per_row == m)
            given = lists[(starts[rows][:, None] + np.arange(m)).reshape(-1)].reshape(len(rows), m)
            # Lists of other parts are empty here; widening would scan lists the query was not
            # routed for, so it is off: the union over parts is exactly the in-process search.
            ids[rows], dist[rows] = index.search(x[rows], kk, lists=given, widen=False)
    lst = neighbors_array(ids, dist, exclude=keys if exclude_self else None, k=k)
    found = lst.values.field("id")
    if layout.positional:
        table = side_file(layout, p, "items", _load_items).column("id")
        users = table.take(pa.array(found.to_numpy() & POSITION_MASK)).combine_chunks()
    else:
        users = found
    struct = pa.StructArray.from_arrays([users.cast(ARROW_ID_TYPES[layout.id_type]), lst.values.field("distance")],
                                        names=["id", "distance"])
    return pa.RecordBatch.from_arrays(
        [sub.column("qkey"), pa.ListArray.from_arrays(lst.offsets, struct), sub.column(PAYLOAD)],
        names=["qkey", "neighbors", PAYLOAD])


# -- the DataFrame plan -------------------------------------------------------------------------
def by_part(df: DataFrame, layout: Layout) -> DataFrame:
    """Rows of ``df`` (column "part") shuffled so part p's rows make partition p."""
    key = key_column(layout.ivf.part_keys, F.col("part"))
    return (df.withColumn("__sparknn_key", key).repartition(layout.ivf.num_parts, "__sparknn_key")
            .drop("__sparknn_key"))


def routed_frame(routed: DataFrame, layout: Layout, payload: T.StructType, k: int, exclude_self: bool,
                 output: str, num_threads: int) -> DataFrame:
    """Search and merge stages after routing; the result has the payload's columns plus ``output``."""
    if layout.chunks is not None:
        routed = part_chunks.with_files(routed, layout)
    searched = (by_part(routed, layout)
                .mapInArrow(partial(search_parts, layout=layout, k=k, exclude_self=exclude_self,
                                    num_threads=num_threads), candidates_schema(payload, layout.id_type)))
    return merged(searched, payload, layout.id_type, k, output)


def routed_schema(payload: T.StructType) -> T.StructType:
    return T.StructType([
        T.StructField("part", T.IntegerType()),
        T.StructField("qkey", T.LongType()),
        T.StructField("nprobe", T.IntegerType()),
        T.StructField("v", T.ArrayType(T.FloatType())),
        T.StructField("lists", T.ArrayType(T.IntegerType())),
        T.StructField(PAYLOAD, payload),
    ])


def transform(dataset: DataFrame, layout: Layout, features: str, output: str, k: int, nprobe: int,
              num_threads: int) -> DataFrame:
    """Every row of ``dataset`` plus its k nearest items (min(k, n)), searched only in its routed parts."""
    payload = T.StructType(dataset.schema.fields)
    need = min(k, layout.count)
    route_fn = partial(route_queries, layout=layout, features=features, nprobe=nprobe, need=need,
                       num_threads=num_threads)
    routed = dataset.mapInArrow(route_fn, routed_schema(payload))
    return routed_frame(routed, layout, payload, k, False, output, num_threads)


def similar_items(spark, layout: Layout, slices, id_col: str, output: str, k: int, nprobe: int,
                  include_self: bool, num_threads: int) -> DataFrame:
    """Every stored item (read back from the parts' items files) and its k nearest other items."""
    payload = T.StructType([T.StructField(id_col, spark_id_type(layout.id_type))])
    need = min(k if include_self else k + 1, layout.count)
    if layout.chunks is None:
        route_fn = partial(route_items, layout=layout, slices=slices, id_col=id_col, nprobe=nprobe, need=need,
                           num_threads=num_threads)
        routed = spark.range(0, len(slices), 1, len(slices)).mapInArrow(route_fn, routed_schema(payload))
    else:  # each part's items file comes to one task, with a marker row naming the part
        markers = spark.range(0, layout.ivf.num_parts, 1, 1).select(F.col("id").cast("int").alias("part"))
        frame = part_chunks.chunk_frame(spark, layout, ("items",)).unionByName(markers, allowMissingColumns=True)
        route_fn = partial(route_received_items, layout=layout, id_col=id_col, nprobe=nprobe, need=need,
                           num_threads=num_threads)
        routed = by_part(frame, layout).mapInArrow(route_fn, routed_schema(payload))
    return routed_frame(routed, layout, payload, k, not include_self, output, num_threads)
