"""``KNN(targetRecall=R)``: the model's ``nprobe`` (ivf) or ``efSearch`` (hnsw) chosen at fit, the
least whose recall@k reaches R on a sample of the items (each excluding itself, as in
similarItems), instead of a fixed default that gives one data set 0.99 and another 0.88.

- **An index built on the driver**: ``Index.tune`` on it (sparknn.tuning): exact neighbours of
  1000 sampled items by the engine's flat search over the stored vectors, then the index's own
  searches up the ladder of values.
- **A routed ivf model** (parts on executors): one Spark job finds the sample's exact neighbours
  over the input (each task the top k + 1 of its rows, merged on the driver) and the list each
  neighbour is stored in (the model's quantizer, as the build assigned it). A routed search
  scans a query's probed lists exactly (float32 storage), so its recall at a given nprobe is the
  share of true neighbours whose list the query probes (the routing's own probing policy,
  widening included): each value up the ladder costs a quantizer pass over the sample, no search.
  With sq8 / pq storage this leaves out what compression loses (an upper bound; ``rerank`` helps).

The choice and the recall measured are the model's ``tuning`` and are logged; ``nprobe`` /
``efSearch`` are set on the model (and saved with it).
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
from sparknn.errors import InvalidArgumentError
from sparknn.index import flat_search, load
from sparknn.spark.layout import Layout
from sparknn.spark.schema import features_as_float_array
from sparknn.spark.tasks import cached, load_index

log = logging.getLogger("sparknn.spark")


def check_supported(options, grouped: bool) -> None:
    """Before any job: the builds whose tuning is not there yet are refused, with what to set instead."""
    if grouped:
        raise InvalidArgumentError("targetRecall is not supported with groupCol yet: set nprobe / efSearch")
    if options.num_shards > 1 and options.spec.kind == "hnsw":
        raise InvalidArgumentError("targetRecall is not supported for hnsw with numShards > 1 yet: set efSearch")


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
    """A task's rows -> for each query its kk nearest among them: (query, id, distance, list)."""
    q_index = cached(layout.path(layout.ivf.quantizer), load_index)
    exact_search = flat_search(layout.metric, threads=1)
    best = None
    for batch in batches:
        if not batch.num_rows:
            continue
        x = vectors_to_numpy(batch.column("v"), "v", layout.dim)
        found, dist = exact_search(x, queries, min(kk, len(x)))
        rows = np.maximum(found, 0).reshape(-1)
        ids = batch.column("id").take(pa.array(rows)).to_numpy(zero_copy_only=False).reshape(found.shape)
        lists = q_index.nearest_lists(x[rows], 1, threads=1)[:, 0].reshape(found.shape)
        candidates = (np.where(found >= 0, dist, np.inf), ids, lists)
        best = candidates if best is None else tuning.keep_nearest(best, candidates, kk)
    if best is None:
        return
    best_d, best_id, best_list = best
    q, j = np.nonzero(np.isfinite(best_d))
    yield pa.RecordBatch.from_arrays([pa.array(q.astype(np.int32)), pa.array(best_id[q, j]),
                                      pa.array(best_d[q, j]), pa.array(best_list[q, j].astype(np.int32))],
                                     names=["q", "id", "distance", "list"])


def tune_routed(df: DataFrame, features: str, id_col: str, layout: Layout, task_layout: Layout, target: float,
                k: int, rows: int, seed: int, threads: int) -> tuning.Tuning:
    """A routed ivf model (``layout`` as the driver reads it, ``task_layout`` as tasks do): true
    neighbours by one Spark job, recall per nprobe from their lists."""
    target = tuning.check_target(target)
    sample_ids, queries = _sample(df, features, id_col, rows, seed)
    kk = min(k, rows - 1)
    if not len(queries) or kk < 1:
        return tuning.Tuning("", 0, 1.0, target, k, 0)
    id_type = df.schema[id_col].dataType
    schema = T.StructType([T.StructField("q", T.IntegerType()), T.StructField("id", id_type),
                           T.StructField("distance", T.FloatType()), T.StructField("list", T.IntegerType())])
    data = df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"))
    fn = partial(_nearest_in_task, queries=queries, kk=kk + 1, layout=task_layout)
    found = data.mapInArrow(fn, schema).collect()
    # Per query: nearest first, itself dropped, k kept: the lists its true neighbours are stored in.
    truth_lists = np.full((len(queries), kk), -1, dtype=np.int64)
    by_query: dict[int, list] = {}
    for r in found:
        by_query.setdefault(r["q"], []).append((r["distance"], str(r["id"]), r["id"], r["list"]))
    for q, cands in by_query.items():
        kept = [c for c in sorted(cands) if c[2] != sample_ids[q]][:kk]
        truth_lists[q, :len(kept)] = [c[3] for c in kept]
    quantizer = cached(layout.path(layout.ivf.quantizer), load_index)
    sizes = np.asarray(layout.ivf.list_sizes, dtype=np.int64)
    truth = np.where(truth_lists >= 0, np.arange(kk)[None, :], -1)

    def found_at(nprobe: int) -> np.ndarray:
        offsets, lists = quantizer.probe_lists(queries, min(nprobe, len(sizes)), kk + 1, sizes, threads=threads)
        hit = np.zeros_like(truth_lists, dtype=bool)
        for i in range(len(queries)):
            hit[i] = np.isin(truth_lists[i], lists[offsets[i]:offsets[i + 1]])
        return np.where(hit & (truth >= 0), truth, -1)

    return tuning.tune(found_at, truth, target, "nprobe", layout.ivf.nlist, k)


def report(chosen: tuning.Tuning) -> None:
    log.info("targetRecall: %s", chosen.describe())
