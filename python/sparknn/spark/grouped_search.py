"""Searches of a grouped model (``groupCol``): every item and query against the items of its own
group only.

A grouped model is sharded by group (group_plan): a hashed shard holds whole groups, with its
vectors (a flat index), ids and groups by position; a large group has a shard of its own (an
index of the model's kind), or several pieces when larger than a shard (group_pieces).
``similarItems`` runs one task per hashed shard through ``sparknn.grouped.within_groups`` (tiny
groups batched, small ones exact, larger ones with an index of the model's kind) and one per
large group's shard. ``transform`` sends each query to the shard of its group (the same hash, or
the group's own shard) and searches that group's items: exactly up to ``grouped.SMALL`` items,
otherwise with an index of the model's kind built on the group once per Python worker (kept for
the next batches and tasks), or the large group's own index. Queries and items of a group split
into pieces are searched in every piece and merged (group_pieces).

With a recall target (``targetRecall``) every index of a group is tuned on that group's own items
(``Index.tune``): a large group's (or piece's) at fit, its choice kept in the model
(``Layout.shard_tunings``); a hashed shard's groups of more than ``grouped.SMALL`` items when
their index is built for a search (logged by the task).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn import grouped
from sparknn.arrow import neighbors_array, vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.index import IndexSpec
from sparknn.spark import group_pieces, group_plan
from sparknn.spark.layout import Layout
from sparknn.spark.schema import neighbors_spark_type, spark_id_type
from sparknn.spark.tasks import cached, load_ids, shard_index, side_file, task_threads

log = logging.getLogger("sparknn.spark")
QUERY_CHUNK = 8192  # similarItems rows per output batch
_SHARD = "__sparknn_shard"
_GROUP_INDEXES: OrderedDict = OrderedDict()  # (index file, group) -> Index of a large group, per worker
_GROUP_INDEXES_MAX = 8
_LOCK = threading.Lock()


def check_groups(df: DataFrame, group_col: str, what: str, expected: str | None = None) -> str:
    """The Spark type of ``group_col`` in ``df``: integers or strings (and of one kind with the
    items' ``expected`` type); else an InvalidArgumentError before any job runs."""
    if group_col not in df.columns:
        raise InvalidArgumentError(f"groupCol {group_col!r} is not a column of the {what} (columns: "
                                   f"{', '.join(df.columns)})")
    dtype = df.schema[group_col].dataType
    if not isinstance(dtype, (T.StringType, T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        raise InvalidArgumentError(f"groupCol {group_col!r} of the {what} is {dtype.simpleString()}: groups are "
                                   "integers or strings")
    kind = dtype.simpleString()
    if expected is not None and (kind == "string") != (expected == "string"):
        raise InvalidArgumentError(f"groupCol {group_col!r} of the {what} is {kind} but the items' groups are "
                                   f"{expected}: cast it to {expected}")
    return kind


def _shard_files(layout: Layout, s: int):
    index = shard_index(layout, s)
    ids = side_file(layout, s, "ids", load_ids)
    groups = side_file(layout, s, "groups", load_ids)
    return index, ids, groups


def _task_spec(spec: IndexSpec) -> IndexSpec:
    """The index built in a task for a hashed shard's group of more than grouped.SMALL items: the
    model's (kind, metric, M, efConstruction, storage, ...), with the task's threads."""
    return spec.replace(threads=task_threads(spec.threads))


# -- similarItems --------------------------------------------------------------------------------
def similar_batches(batches, *, layout: Layout, id_col: str, output: str, k: int, spec: IndexSpec,
                    target: float | None = None):
    """Each shard's items -> their k nearest items of the same group (with a recall ``target``, a
    hashed shard's groups of more than grouped.SMALL items get an index tuned on their own items)."""
    spec = _task_spec(spec)
    for batch in batches:
        for s in batch.column(0).to_numpy():
            s = int(layout_shard(layout, s))
            index, ids, groups = _shard_files(layout, s)
            if len(index) == 0:
                continue
            if s >= layout.hashed_shards:  # one large group: its own index, built at fit
                for lo in range(0, len(index), QUERY_CHUNK):
                    hi = min(len(index), lo + QUERY_CHUNK)
                    neighbors = group_pieces.own_neighbors(layout, s, s, lo, hi, k, spec.nprobe, spec.ef_search,
                                                               spec.threads)
                    yield pa.RecordBatch.from_arrays([ids.slice(lo, hi - lo), neighbors], names=[id_col, output])
                continue
            tunings: list = []
            rows, dist = grouped.within_groups(index.stored_vectors(), grouped.group_codes(groups), k,
                                               spec, recall=target, tunings=tunings)
            if tunings:
                log.info("targetRecall, shard %d: %s", s,
                         grouped.GroupTunings(target, grouped.SMALL, tuple(tunings)).describe())
            for lo in range(0, len(index), QUERY_CHUNK):
                hi = min(len(index), lo + QUERY_CHUNK)
                neighbors = neighbors_array(rows[lo:hi], dist[lo:hi], id_values=ids, k=k)
                yield pa.RecordBatch.from_arrays([ids.slice(lo, hi - lo), neighbors], names=[id_col, output])


def _with_target(layout: Layout, target: float | None) -> Layout:
    """The layout searched: without a recall target (cleared on the model) the large groups' own
    choices are dropped too, and nprobe / efSearch apply to every group."""
    return layout if target is not None else dataclasses.replace(layout, shard_tunings=())


def layout_shard(layout: Layout, task: int) -> int:
    """Task ``task`` of similarItems -> its shard: the hashed shards, then each unsplit large group's."""
    hashed = layout.hashed_shards
    if task < hashed:
        return task
    return [first for _, first, count in layout.group_pieces if count == 1][task - hashed]


def similar_items(spark, layout: Layout, id_col: str, output: str, k: int, spec: IndexSpec,
                  target: float | None = None) -> DataFrame:
    """Every item and its k nearest other items of its group: ``spec`` is the model's index (its
    nprobe / ef_search those searched with, its threads numThreads), ``target`` its recall target."""
    layout = _with_target(layout, target)
    schema = T.StructType([T.StructField(id_col, spark_id_type(layout.id_type)),
                           T.StructField(output, neighbors_spark_type(layout.id_type))])
    n = layout.hashed_shards + sum(1 for _, _, count in layout.group_pieces if count == 1)
    fn = partial(similar_batches, layout=layout, id_col=id_col, output=output, k=k, spec=spec, target=target)
    result = spark.range(0, n, 1, n).mapInArrow(fn, schema)
    split = group_pieces.similar_items(spark, layout, id_col, output, k, spec.nprobe, spec.ef_search, spec.threads)
    return result if split is None else result.unionByName(split)


# -- transform -----------------------------------------------------------------------------------
def _by_value(values: pa.Array) -> list[tuple[object, np.ndarray]]:
    """(value, positions holding it, ascending) for every distinct value of ``values``."""
    encoded = values.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    return [(encoded.dictionary[int(codes[part[0]])].as_py(), part) for part in np.split(order, cuts) if len(part)]


def load_members(path: str) -> dict:
    """A groups file -> {group value: positions of its items}."""
    return dict(_by_value(load_ids(path)))


def _group_index(key, vectors: np.ndarray, spec: IndexSpec, target: float | None, k: int):
    """The index of one group of a hashed shard (built once per worker); with a recall ``target``
    tuned for recall@k on the group's own items."""
    key = (*key, target, k)
    with _LOCK:
        if key in _GROUP_INDEXES:
            _GROUP_INDEXES.move_to_end(key)
            return _GROUP_INDEXES[key]
    index = grouped.index_of(vectors, spec)
    if target is not None and index.kind != "flat":
        log.info("targetRecall, a group of %d items: %s", len(index), index.tune(target, k=k).describe())
    with _LOCK:
        _GROUP_INDEXES[key] = index
        while len(_GROUP_INDEXES) > _GROUP_INDEXES_MAX:
            _GROUP_INDEXES.popitem(last=False)
    return index


def _exact(q: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions into x, distances) of each query's k nearest, ties by position."""
    if metric == "cosine":
        q, x = grouped.unit_rows(q), grouped.unit_rows(x)
    d = grouped.distances(q, x, metric)
    kk = min(k, x.shape[0])
    part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < x.shape[0] else np.tile(np.arange(kk), (len(q), 1))
    pd = np.take_along_axis(d, part, axis=1)
    order = np.lexsort((part, pd), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(pd, order, axis=1).astype(np.float32)


def search_queries(batches, *, layout: Layout, group_col: str, features: str, output: str, k: int,
                   spec: IndexSpec, target: float | None = None):
    """Query rows (shuffled to their group's shard) -> the same rows plus their neighbours."""
    spec = _task_spec(spec)
    for batch in batches:
        shard_col = batch.column(_SHARD).to_numpy()
        keep = [i for i, name in enumerate(batch.schema.names) if name != _SHARD]
        for s in np.unique(shard_col):
            sub = batch.filter(pa.array(shard_col == s))
            index, ids, groups = _shard_files(layout, int(s))
            qgroups = sub.column(group_col)
            if qgroups.null_count:
                raise InvalidArgumentError(f"groupCol {group_col!r} is null in a query row: give every query a group")
            q = vectors_to_numpy(sub.column(features), features, layout.dim)
            if s >= layout.hashed_shards:  # one large group's own index: every query here is of that group
                kk = min(k, len(index))
                probes, beam = layout.knobs(int(s), spec.nprobe, spec.ef_search)
                found, dist = index.search(q, kk, ef=max(beam, kk), nprobe=probes, threads=spec.threads)
                neighbors = neighbors_array(found, dist, id_values=ids, k=k)
                yield pa.RecordBatch.from_arrays([sub.column(i) for i in keep] + [neighbors],
                                                 names=[batch.schema.names[i] for i in keep] + [output])
                continue
            # Already verified against its digest by side_file: the positions of each group's items.
            members = cached(layout.path(layout.shards[int(s)].groups), load_members, what="groups file")
            x_all = index.stored_vectors() if len(index) else None
            found = np.full((len(q), k), -1, dtype=np.int64)
            dist = np.full((len(q), k), np.inf, dtype=np.float32)
            for value, at in _by_value(qgroups.cast(groups.type)):
                rows = members.get(value)
                if rows is None:
                    continue  # a group with no items: an empty list
                kk = min(k, len(rows))
                if len(rows) <= grouped.SMALL:
                    pos, d = _exact(q[at], x_all[rows], kk, layout.metric)
                else:
                    gindex = _group_index((layout.path(layout.shards[int(s)].index), value), x_all[rows],
                                          spec, target, k)
                    pos, d = gindex.search(q[at], kk)
                found[at[:, None], np.arange(kk)[None, :]] = np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)
                dist[at[:, None], np.arange(kk)[None, :]] = d
            neighbors = neighbors_array(found, dist, id_values=ids, k=k)
            yield pa.RecordBatch.from_arrays([sub.column(i) for i in keep] + [neighbors],
                                             names=[batch.schema.names[i] for i in keep] + [output])


def transform(dataset: DataFrame, layout: Layout, group_col: str, features: str, output: str, k: int,
              spec: IndexSpec, target: float | None = None) -> DataFrame:
    """Every query row plus its k nearest items of the group its ``group_col`` names (min(k, group
    size); none for a group without items): one output row per input row."""
    check_groups(dataset, group_col, "queries", layout.group_type)
    layout = _with_target(layout, target)
    n = len(layout.shards)
    value = F.col(group_col).cast(layout.group_type)
    shard = group_plan.shard_column(value, None, layout.hashed_shards, layout.group_pieces, layout.group_type)
    schema = T.StructType(dataset.schema.fields + [T.StructField(output, neighbors_spark_type(layout.id_type))])
    fn = partial(search_queries, layout=layout, group_col=group_col, features=features, output=output, k=k,
                 spec=spec, target=target)
    if not group_plan.split_values(layout.group_pieces):
        return dataset.withColumn(_SHARD, shard).repartition(n, _SHARD).mapInArrow(fn, schema)
    # Queries of groups split into pieces are searched in every piece and merged; the others as above.
    split, rest = group_pieces.split_filter(layout, group_col)
    result = dataset.where(rest).withColumn(_SHARD, shard).repartition(n, _SHARD).mapInArrow(fn, schema)
    return result.unionByName(group_pieces.transform(dataset.where(split), layout, group_col, features, output, k,
                                                     spec.nprobe, spec.ef_search, spec.threads))

