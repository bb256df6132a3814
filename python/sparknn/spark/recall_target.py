"""``KNN(targetRecall=R)``: the model's ``nprobe`` (ivf) or ``efSearch`` (hnsw) chosen at fit, the
least whose recall@k reaches R on a sample of the items (each excluding itself, as in
similarItems), instead of a fixed default that gives one data set 0.99 and another 0.88.

- **An index built on the driver**: ``Index.tune`` on it (sparknn.tuning): exact neighbours of
  1000 sampled items by the engine's flat search over the stored vectors, then the index's own
  searches up the ladder of values.
- **Sharded hnsw** (``numShards`` > 1, built on executors): the sample's exact neighbours by one
  Spark job over the input (as below), then on the driver every shard searched at each ef up the
  ladder and merged as a transform task merges them (``worker.search``), ties by the user's id.
- **A routed ivf model** (parts on executors): one Spark job finds the sample's exact neighbours
  over the input (each task the top k + 1 of its rows, merged on the driver) and the list each
  neighbour is stored in (the model's quantizer, as the build assigned it). A routed search
  scans a query's probed lists exactly (float32 storage), so its recall at a given nprobe is the
  share of true neighbours whose list the query probes (the routing's own probing policy,
  widening included): each value up the ladder costs a quantizer pass over the sample, no search.
  With sq8 / pq storage this leaves out what compression loses (an upper bound; ``rerank`` helps).

- **A grouped model** (``groupCol``): each large group's index (each piece of a split group) is
  tuned on its own items by its build task (``Index.tune``); the choices are kept in the model
  (``Layout.shard_tunings``) and the target on it, so the searches of smaller groups that get an
  index (more than ``grouped.SMALL`` items on a hashed shard) tune it on their own items too.

The choice and the recall measured are the model's ``tuning`` and are logged; ``nprobe`` /
``efSearch`` (or a grouped model's per group values) are set on the model (and saved with it).
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn import tuning
from sparknn.arrow import vectors_to_numpy
from sparknn.grouped import GroupTunings
from sparknn.index import flat_search, load
from sparknn.spark import group_plan, worker
from sparknn.spark.layout import Layout
from sparknn.spark.schema import features_as_float_array
from sparknn.spark.tasks import cached, load_index

log = logging.getLogger("sparknn.spark")


def grouped(layout: Layout, target: float, k: int) -> GroupTunings:
    """A grouped model: what the build chose for each large group's index (each piece of a split
    group tuned on its own items), and how the other groups are searched."""
    kind = "nprobe" if layout.kind == "ivf" else "ef"
    counts = [s.count for s in layout.shards]
    chosen = tuple((counts[t.shard], tuning.Tuning(kind, t.value, t.recall, target, k, t.sample))
                   for t in layout.shard_tunings)
    large = group_plan.large_rows(layout.count)
    rest = "smaller groups exact"
    if large > group_plan.SMALL:
        rest = (f"groups of {group_plan.SMALL + 1} to {large} items tuned when searched (logged by their tasks); "
                "smaller groups exact")
    split = any(count > 1 for _, _, count in layout.group_pieces)
    what = "large group index(es) (a piece each, of a group split into pieces)" if split else "large group(s)"
    return GroupTunings(target, large, chosen, what=what, rest=rest)


def tune_driver_index(layout: Layout, target: float, k: int, threads: int) -> tuning.Tuning:
    """An index built on the driver: tuned on its own stored vectors."""
    index = load(layout.path(layout.shards[0].index), mmap=True, threads=threads)
    return index.tune(target, k=k)


# -- routed ivf --------------------------------------------------------------------------------------
def _sample(df: DataFrame, features: str, id_col: str, rows: int, seed: int):
    """About ``tuning.SAMPLE`` items (ids, float32 vectors), drawn with ``seed``."""
    fraction = min(1.0, 2.0 * tuning.SAMPLE / max(rows, 1))
    picked = (df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"))
              .sample(False, fraction, seed).limit(tuning.SAMPLE).collect())
    return [r["id"] for r in picked], np.asarray([r["v"] for r in picked], dtype=np.float32)


def _nearest_in_task(batches, *, queries: np.ndarray, kk: int, layout: Layout):
    """A task's rows -> for each query its kk nearest among them: (query, id, distance, list); the
    list each is stored in (the model's quantizer), -1 without one (not an ivf model)."""
    q_index = cached(layout.path(layout.ivf.quantizer), load_index) if layout.ivf else None
    exact_search = flat_search(layout.metric, threads=1)
    best = None
    for batch in batches:
        if not batch.num_rows:
            continue
        x = vectors_to_numpy(batch.column("v"), "v", layout.dim)
        found, dist = exact_search(x, queries, min(kk, len(x)))
        rows = np.maximum(found, 0).reshape(-1)
        ids = batch.column("id").take(pa.array(rows)).to_numpy(zero_copy_only=False).reshape(found.shape)
        lists = (q_index.nearest_lists(x[rows], 1, threads=1)[:, 0].reshape(found.shape) if q_index is not None
                 else np.full(found.shape, -1, dtype=np.int64))
        candidates = (np.where(found >= 0, dist, np.inf), ids, lists)
        best = candidates if best is None else tuning.keep_nearest(best, candidates, kk)
    if best is None:
        return
    best_d, best_id, best_list = best
    q, j = np.nonzero(np.isfinite(best_d))
    yield pa.RecordBatch.from_arrays([pa.array(q.astype(np.int32)), pa.array(best_id[q, j]),
                                      pa.array(best_d[q, j]), pa.array(best_list[q, j].astype(np.int32))],
                                     names=["q", "id", "distance", "list"])


def _true_neighbours(df: DataFrame, features: str, id_col: str, task_layout: Layout, sample_ids: list,
                     queries: np.ndarray, kk: int) -> list:
    """Per sampled item, its kk nearest other items over the whole input by one Spark job (each
    task the top kk + 1 of its rows, merged here): [(id, list stored in), ...] nearest first,
    ties by the id's text."""
    id_type = df.schema[id_col].dataType
    schema = T.StructType([T.StructField("q", T.IntegerType()), T.StructField("id", id_type),
                           T.StructField("distance", T.FloatType()), T.StructField("list", T.IntegerType())])
    data = df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"))
    fn = partial(_nearest_in_task, queries=queries, kk=kk + 1, layout=task_layout)
    by_query: dict[int, list] = {}
    for r in data.mapInArrow(fn, schema).collect():
        by_query.setdefault(r["q"], []).append((r["distance"], str(r["id"]), r["id"], r["list"]))
    return [[(c[2], c[3]) for c in sorted(by_query.get(q, [])) if c[2] != sample_ids[q]][:kk]
            for q in range(len(queries))]


def tune_routed(df: DataFrame, features: str, id_col: str, layout: Layout, task_layout: Layout, target: float,
                k: int, rows: int, seed: int, threads: int) -> tuning.Tuning:
    """A routed ivf model (``layout`` as the driver reads it, ``task_layout`` as tasks do): true
    neighbours by one Spark job, recall per nprobe from their lists."""
    target = tuning.check_target(target)
    sample_ids, queries = _sample(df, features, id_col, rows, seed)
    kk = min(k, rows - 1)
    if not len(queries) or kk < 1:
        return tuning.Tuning("", 0, 1.0, target, k, 0)
    # Per query: the lists its true neighbours are stored in.
    truth_lists = np.full((len(queries), kk), -1, dtype=np.int64)
    for q, kept in enumerate(_true_neighbours(df, features, id_col, task_layout, sample_ids, queries, kk)):
        truth_lists[q, :len(kept)] = [lst for _, lst in kept]
    quantizer = cached(layout.path(layout.ivf.quantizer), load_index)
    sizes = np.asarray(layout.ivf.list_sizes, dtype=np.int64)
    truth = np.where(truth_lists >= 0, np.arange(kk)[None, :], -1)

    def found_at(nprobe: int) -> np.ndarray:
        offsets, lists = quantizer.probe_lists(queries, min(nprobe, len(sizes)), kk + 1, sizes, threads=threads)
        return np.where(tuning.members(truth_lists, offsets, lists), truth, -1)

    return tuning.tune(found_at, truth, target, "nprobe", layout.ivf.nlist, k)


def tune_shards(df: DataFrame, features: str, id_col: str, layout: Layout, task_layout: Layout, target: float,
                k: int, rows: int, seed: int, threads: int) -> tuning.Tuning:
    """Sharded hnsw (``layout`` as the driver reads it): true neighbours by one Spark job, then the
    shards searched on the driver at each ef and merged as transform merges them."""
    target = tuning.check_target(target)
    sample_ids, queries = _sample(df, features, id_col, rows, seed)
    kk = min(k, rows - 1)
    if not len(queries) or kk < 1:
        return tuning.Tuning("", 0, 1.0, target, k, 0)
    # Ids of any type compared as codes: each true neighbour's own, anything else -1.
    codes: dict = {}
    truth = np.full((len(queries), kk), -1, dtype=np.int64)
    for q, kept in enumerate(_true_neighbours(df, features, id_col, task_layout, sample_ids, queries, kk)):
        truth[q, :len(kept)] = [codes.setdefault(i, len(codes)) for i, _ in kept]
    shards = worker.open_shards(layout)

    def found_at(ef: int) -> np.ndarray:
        ids, _ = worker.search(layout, shards, queries, kk + 1, ef, threads)
        valid = ids >= 0
        users = worker.user_ids(layout, shards, ids[valid]).to_pylist()  # row after row
        query_of = np.repeat(np.arange(len(queries)), valid.sum(axis=1))
        found = np.full(ids.shape, -1, dtype=np.int64)  # a true neighbour's code, else -1 (no hit)
        found[valid] = [codes.get(u, -1) for u in users]
        own = np.zeros(ids.shape, dtype=bool)
        own[valid] = [u == sample_ids[q] for u, q in zip(users, query_of)]
        return tuning.first_kept(found, valid & ~own, kk)  # itself dropped, kk kept

    return tuning.tune(found_at, truth, target, "ef", max(kk + 1, min(4096, rows)), k, lowest=kk + 1)


def report(chosen: tuning.Tuning) -> None:
    log.info("targetRecall: %s", chosen.describe())
