"""Searches of a grouped model's large groups (group_plan): each on shards of its own, an index of
the model's kind built at fit on that group alone.

A large group on one shard is searched like any index (grouped_search calls ``own_neighbors``). A
group split into pieces is searched piece by piece and merged (candidate_merge):

- ``similar_items``: one task per (query piece, searched piece) pair of each split group: the
  query piece's items, read back from its index, searched in the other piece (themselves excluded
  in their own piece); the payload (the item's id) rides on the pair searching its own piece.
- ``transform``: each query of a split group becomes one row per piece (its payload on the
  first), shuffled so a piece's rows make one task, searched there, and merged.

No task holds more than two pieces, so a group larger than any one task's memory is searched.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn.arrow import neighbors_array, rows_to_list, vectors_to_numpy
from sparknn.spark import group_plan
from sparknn.spark.candidate_merge import PAYLOAD, candidates_schema, keyed_queries, merged
from sparknn.spark.layout import POSITION_BITS, Layout
from sparknn.spark.schema import spark_id_type
from sparknn.spark.tasks import key_column, load_ids, partition_keys, shard_index, side_file, task_threads

CHUNK = 8192  # query rows searched (and output) per batch


def own_neighbors(layout: Layout, query: int, searched: int, lo: int, hi: int, k: int, nprobe: int, ef: int,
                  threads: int) -> pa.Array:
    """The items ``lo:hi`` of shard ``query`` (one large group, or a piece of it) searched in shard
    ``searched`` (the same group; with the knob its recall target chose for it, if any):
    list<struct<id, distance>>, themselves excluded."""
    nprobe, ef = layout.knobs(searched, nprobe, ef)
    index = shard_index(layout, searched)
    x = shard_index(layout, query).reconstruct(lo, hi)  # under cosine already unit length
    ids = side_file(layout, searched, "ids", load_ids)
    own = query == searched
    kk = min(k + 1 if own else k, len(index))
    found, dist = index.search(x, kk, ef=max(ef, kk), nprobe=nprobe, threads=threads)
    return neighbors_array(found, dist, id_values=ids, exclude=np.arange(lo, hi) if own else None, k=k)


# -- similarItems of split groups ------------------------------------------------------------------
def pairs(layout: Layout) -> list[tuple[int, int]]:
    """(query piece, searched piece) of every split group."""
    return [(first + i, first + j) for _, first, count in layout.group_pieces if count > 1
            for i in range(count) for j in range(count)]


def _pair_batches(batches, *, layout: Layout, tasks, id_col: str, k: int, nprobe: int, ef: int,
                  num_threads: int):
    threads = task_threads(num_threads)
    payload_type = pa.struct([pa.field(id_col, side_file(layout, tasks[0][0], "ids", load_ids).type)])
    for batch in batches:
        for t in batch.column(0).to_numpy():
            query, searched = tasks[int(t)]
            ids = side_file(layout, query, "ids", load_ids)
            for lo in range(0, len(ids), CHUNK):
                hi = min(len(ids), lo + CHUNK)
                neighbors = own_neighbors(layout, query, searched, lo, hi, k, nprobe, ef, threads)
                keys = (query << POSITION_BITS) | np.arange(lo, hi, dtype=np.int64)
                if query == searched:
                    payload = pa.StructArray.from_arrays([ids.slice(lo, hi - lo)], fields=list(payload_type))
                else:
                    payload = pa.nulls(hi - lo, payload_type)
                yield pa.RecordBatch.from_arrays([pa.array(keys), neighbors, payload],
                                                 names=["qkey", "neighbors", PAYLOAD])


def similar_items(spark, layout: Layout, id_col: str, output: str, k: int, nprobe: int, ef: int,
                  num_threads: int) -> DataFrame | None:
    """Every item of a split group and its k nearest other items of the group; None without any."""
    tasks = pairs(layout)
    if not tasks:
        return None
    payload = T.StructType([T.StructField(id_col, spark_id_type(layout.id_type))])
    fn = partial(_pair_batches, layout=layout, tasks=tasks, id_col=id_col, k=k, nprobe=nprobe, ef=ef,
                 num_threads=num_threads)
    searched = spark.range(0, len(tasks), 1, len(tasks)).mapInArrow(fn, candidates_schema(payload, layout.id_type))
    return merged(searched, payload, layout.id_type, k, output)


# -- transform of split groups ---------------------------------------------------------------------
def _route(batches, *, layout: Layout, group_col: str, features: str):
    """Each query row -> one row per piece of its group; its payload on the first."""
    split = {value: (first, count) for value, first, count in layout.group_pieces if count > 1}
    group_type = pa.string() if layout.group_type == "string" else pa.int64()
    for batch, x, keys in keyed_queries(batches, features, layout.dim):
        groups = batch.column(group_col).cast(group_type).to_pylist()
        first = np.array([split[g][0] for g in groups], dtype=np.int64)
        count = np.array([split[g][1] for g in groups], dtype=np.int64)
        rows = np.repeat(np.arange(len(x)), count)
        piece = first[rows] + (np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count))
        home = np.ones(len(rows), dtype=bool)
        home[1:] = rows[1:] != rows[:-1]
        payload = pa.StructArray.from_arrays(batch.columns, names=batch.schema.names)
        take = pa.array(np.where(home, rows, -1), mask=~home)
        yield pa.RecordBatch.from_arrays(
            [pa.array(piece.astype(np.int32)), pa.array(keys[rows]), rows_to_list(x[rows]), payload.take(take)],
            names=["part", "qkey", "v", PAYLOAD])


def _search(batches, *, layout: Layout, k: int, nprobe: int, ef: int, num_threads: int):
    threads = task_threads(num_threads)
    for batch in batches:
        part_col = batch.column("part").to_numpy()
        for p in np.unique(part_col):
            sub = batch.filter(pa.array(part_col == p))
            index = shard_index(layout, int(p))
            kk = min(k, len(index))
            x = vectors_to_numpy(sub.column("v"), "v", layout.dim)
            probes, beam = layout.knobs(int(p), nprobe, ef)
            found, dist = index.search(x, kk, ef=max(beam, kk), nprobe=probes, threads=threads)
            neighbors = neighbors_array(found, dist, id_values=side_file(layout, int(p), "ids", load_ids), k=k)
            yield pa.RecordBatch.from_arrays([sub.column("qkey"), neighbors, sub.column(PAYLOAD)],
                                             names=["qkey", "neighbors", PAYLOAD])


def transform(dataset: DataFrame, layout: Layout, group_col: str, features: str, output: str, k: int,
              nprobe: int, ef: int, num_threads: int) -> DataFrame:
    """Queries of split groups only (grouped_search filters them) plus their k nearest of the group."""
    payload = T.StructType(dataset.schema.fields)
    split = [(first, count) for _, first, count in layout.group_pieces if count > 1]
    lo, hi = min(f for f, _ in split), max(f + c for f, c in split)
    routed = dataset.mapInArrow(partial(_route, layout=layout, group_col=group_col, features=features),
                                T.StructType([T.StructField("part", T.IntegerType()),
                                              T.StructField("qkey", T.LongType()),
                                              T.StructField("v", T.ArrayType(T.FloatType())),
                                              T.StructField(PAYLOAD, payload)]))
    # Pieces lo..hi-1 (with any unsplit large groups between them) make one partition each.
    key = key_column(partition_keys(dataset.sparkSession, hi - lo), F.col("part") - lo)
    searched = (routed.withColumn("__sparknn_key", key).repartition(hi - lo, "__sparknn_key").drop("__sparknn_key")
                .mapInArrow(partial(_search, layout=layout, k=k, nprobe=nprobe, ef=ef, num_threads=num_threads),
                            candidates_schema(payload, layout.id_type)))
    return merged(searched, payload, layout.id_type, k, output)


def split_filter(layout: Layout, group_col: str):
    """(rows of split groups, other rows: null groups too) as Column predicates."""
    values = [F.lit(v).cast(layout.group_type) for v in group_plan.split_values(layout.group_pieces)]
    inside = F.col(group_col).cast(layout.group_type).isin(*values)
    return inside, F.coalesce(~inside, F.lit(True))
