"""Sharded build: items split into N shards, each built by one executor task.

Rows go to shard ``pmod(xxhash64(id), N)``: a duplicated id always lands in
one shard, where it is caught. Each shard is routed to its own partition (see
``tasks.partition_keys``), the task builds the shard's index with ``spark.task.cpus``
threads and writes it to a directory every executor and the driver can read.
Queries search all shards and merge the per-shard top-k (worker.search).
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn import integrity
from sparknn.arrow import vectors_to_numpy
from sparknn.builder import build_streaming, stores_own_ids
from sparknn.errors import InvalidArgumentError
from sparknn.spark import hadoop_store
from sparknn.spark.layout import ARROW_ID_TYPES, Layout, digests_json, shard_files, write_ids
from sparknn.spark.params import FitOptions
from sparknn.spark.returned_files import build_and_gather, build_and_store
from sparknn.spark.schema import check_unique, features_as_float_array, validate
from sparknn.spark.storage import check_task_sees, keep_only
from sparknn.spark.tasks import attempt_id, partition_keys, task_threads

_RESULT = T.StructType([
    T.StructField("shard", T.IntegerType()),
    T.StructField("count", T.LongType()),
    T.StructField("dim", T.IntegerType()),
    T.StructField("index", T.StringType()),
    T.StructField("ids", T.StringType()),
    T.StructField("sideFiles", T.StringType()),  # JSON: role -> digest, as the index records them
])
_RESULT_ARROW = pa.schema([("shard", pa.int32()), ("count", pa.int64()), ("dim", pa.int32()),
                           ("index", pa.string()), ("ids", pa.string()), ("sideFiles", pa.string())])


def _build_task(batches, *, root, prefix, dim, id_type, id_col, features, positional, spec, attempt=None):
    """One partition: build and save the index (and id file) of every shard it holds.

    Files are named after the task attempt, side files first and the index (recording their
    digests) last; the result row names them. The driver keeps the files of the results Spark
    delivers, one attempt per shard, and removes the others (storage.keep_only).
    """
    batches = list(batches)
    if not batches or not sum(b.num_rows for b in batches):
        return
    attempt = attempt_id() if attempt is None else attempt
    check_task_sees(root, "a sharded build")
    table = pa.Table.from_batches(batches)
    spec = spec.replace(threads=task_threads(spec.threads))
    shard_col = table.column("shard").to_numpy()
    for s in np.unique(shard_col):
        part = table.filter(pa.array(shard_col == s)) if len(np.unique(shard_col)) > 1 else table
        ids = part.column("id").combine_chunks().cast(ARROW_ID_TYPES[id_type])
        check_unique(ids, id_col)
        # Rows in id order, not arrival (shuffle) order: positions and the graph do not depend on
        # how the input was partitioned, so two runs give the same index and the same ties.
        order = pc.sort_indices(ids)
        ids = ids.take(order)
        vectors = vectors_to_numpy(part.column("v").take(order), features, dim)
        try:
            index, _ = build_streaming([(0, vectors)], len(vectors), spec,
                                       ids=None if positional else ids.to_numpy())
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"shard {s} (featuresCol {features!r}): {err}") from None
        digests, ids_name = {}, None
        if positional:
            ids_name = f"{prefix}-ids-{s}-a{attempt}.arrow"
            write_ids(os.path.join(root, ids_name), ids)
            digests["ids"] = integrity.digest(os.path.join(root, ids_name))
        name = f"{prefix}-shard-{s}-a{attempt}.snn"
        index.save(os.path.join(root, name), side_files=digests)
        yield pa.RecordBatch.from_arrays(
            [pa.array([s], pa.int32()), pa.array([len(index)], pa.int64()), pa.array([dim], pa.int32()),
             pa.array([name]), pa.array([ids_name], pa.string()), pa.array([digests_json(digests)])],
            schema=_RESULT_ARROW)


def build_sharded(df: DataFrame, features: str, id_col: str, id_type: str, options: FitOptions, root: str,
                  prefix: str, returned: bool = False, store: str | None = None) -> Layout:
    """Validates on the JVM, then builds ``numShards`` indexes in parallel on executors: written to
    ``root``, or with ``returned`` (executors do not see ``root``) returned through Spark, or with
    ``store`` (a URI) written there and fetched into ``root`` (returned_files): every query
    searches every shard, so each executor needs them all."""
    n = options.num_shards
    stats = validate(df, features, id_col, id_type != "string")
    positional = not stores_own_ids(ARROW_ID_TYPES[id_type], stats.get("min_id"))
    dim = int(stats["max_len"])
    spark = df.sparkSession
    keys = partition_keys(spark, n)
    shard = F.pmod(F.xxhash64(F.col(id_col)), F.lit(n)).cast("int")
    key = F.element_at(F.array(*[F.lit(k).cast("long") for k in keys]), shard + 1)
    data = (df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"),
                      shard.alias("shard"), key.alias("key"))
            .repartition(n, "key").drop("key"))
    kw = dict(prefix=prefix, dim=dim, id_type=id_type, id_col=id_col, features=features, positional=positional,
              spec=options.spec)
    if store:
        results, stored = build_and_store(data, _build_task, _RESULT_ARROW, _RESULT, uri=store, key="shard",
                                          file_columns=("index", "ids"), what=f"the sharded build ({n} shards)", **kw)
        hadoop_store.fetch(spark, store, root, stored, store)
    elif returned:
        results = build_and_gather(data, _build_task, _RESULT_ARROW, _RESULT, root=root, key="shard",
                                   file_columns=("index", "ids"), expected_bytes=int(stats["rows"]) * (4 * dim + 128),
                                   what=f"the sharded build ({n} shards)", **kw)
    else:
        results = [r.asDict() for r in data.mapInArrow(partial(_build_task, root=root, **kw), _RESULT).collect()]
    results.sort(key=lambda r: r["shard"])
    built = sum(r["count"] for r in results)
    if built != stats["rows"]:
        raise InvalidArgumentError(f"the sharded build indexed {built} rows but validation counted "
                                   f"{stats['rows']}: is the input DataFrame non-deterministic? "
                                   "Cache or checkpoint it before fit")
    shards = tuple(shard_files(r, root, f"shard {r['shard']}") for r in results)
    layout = Layout(dim, options.spec.metric, options.spec.kind, id_type, positional, shards, root)
    keep_only(root, prefix, layout.files())  # other attempts' files
    return layout
