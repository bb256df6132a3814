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

from sparknn import grouped, integrity
from sparknn.arrow import ChunkedVectors
from sparknn.builder import build_streaming, stores_own_ids
from sparknn.errors import InvalidArgumentError
from sparknn.spark import group_plan, hadoop_store
from sparknn.spark.layout import ARROW_ID_TYPES, Layout, ShardTuning, digests_json, shard_files, write_column, write_ids
from sparknn.spark.params import FitOptions
from sparknn.spark.returned_files import build_and_gather, build_and_store
from sparknn.spark.schema import check_unique, features_as_float_array, validate
from sparknn.spark.storage import check_task_sees, keep_only
from sparknn.spark.tasks import attempt_id, key_column, partition_keys, task_threads

_RESULT = T.StructType([
    T.StructField("shard", T.IntegerType()),
    T.StructField("count", T.LongType()),
    T.StructField("dim", T.IntegerType()),
    T.StructField("index", T.StringType()),
    T.StructField("ids", T.StringType()),
    T.StructField("groups", T.StringType()),
    T.StructField("sideFiles", T.StringType()),  # JSON: role -> digest, as the index records them
    # a large group's index tuned for a recall target: the value chosen, the recall measured, on how many
    T.StructField("tuned", T.IntegerType()),
    T.StructField("recall", T.DoubleType()),
    T.StructField("sample", T.IntegerType()),
])
_RESULT_ARROW = pa.schema([("shard", pa.int32()), ("count", pa.int64()), ("dim", pa.int32()),
                           ("index", pa.string()), ("ids", pa.string()), ("groups", pa.string()),
                           ("sideFiles", pa.string()), ("tuned", pa.int32()), ("recall", pa.float64()),
                           ("sample", pa.int32())])


def _build_task(batches, *, root, prefix, dim, id_type, id_col, features, positional, spec, group_col=None,
                large_spec=None, hashed=None, target=None, k=None, attempt=None):
    """One partition: build and save the index (and id file) of every shard it holds (a grouped
    model's shards from ``hashed`` on hold one large group each: an index of ``large_spec``, with
    a recall ``target`` tuned for it on its own items: ``Index.tune``, recall@``k``).

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
    large_spec = large_spec and large_spec.replace(threads=spec.threads)
    shard_col = table.column("shard").to_numpy()
    for s in np.unique(shard_col):
        part = table.filter(pa.array(shard_col == s)) if len(np.unique(shard_col)) > 1 else table
        ids = part.column("id").combine_chunks().cast(ARROW_ID_TYPES[id_type])
        check_unique(ids, id_col)
        # Rows in id order, not arrival (shuffle) order: positions and the graph do not depend on
        # how the input was partitioned, so two runs give the same index and the same ties.
        order = pc.sort_indices(ids)
        ids = ids.take(order)
        vectors = ChunkedVectors(part.column("v"), features, dim).take(order.to_numpy())
        chosen = None
        try:
            if large_spec is not None and s >= hashed:  # one large group (a piece of it): a real index
                index = grouped.index_of(vectors, large_spec)
                if target is not None and index.kind != "flat":
                    chosen = index.tune(target, k=k)
            else:
                index, _ = build_streaming([(0, vectors)], len(vectors), spec,
                                           ids=None if positional else ids.to_numpy())
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"shard {s} (featuresCol {features!r}): {err}") from None
        digests, ids_name, groups_name = {}, None, None
        if positional:
            ids_name = f"{prefix}-ids-{s}-a{attempt}.arrow"
            write_ids(os.path.join(root, ids_name), ids)
            digests["ids"] = integrity.digest(os.path.join(root, ids_name))
        if group_col is not None:  # each item's group, by position
            groups = part.column("g").take(order).combine_chunks()
            if groups.null_count:
                row = pc.index(groups.is_null(), True).as_py()
                raise InvalidArgumentError(f"groupCol {group_col!r} is null for the item of id {ids[row].as_py()!r}: "
                                           "give every item a group")
            groups_name = f"{prefix}-groups-{s}-a{attempt}.arrow"
            write_column(os.path.join(root, groups_name), "group", groups)
            digests["groups"] = integrity.digest(os.path.join(root, groups_name))
        name = f"{prefix}-shard-{s}-a{attempt}.snn"
        index.save(os.path.join(root, name), side_files=digests)
        yield pa.RecordBatch.from_arrays(
            [pa.array([s], pa.int32()), pa.array([len(index)], pa.int64()), pa.array([dim], pa.int32()),
             pa.array([name]), pa.array([ids_name], pa.string()), pa.array([groups_name], pa.string()),
             pa.array([digests_json(digests)]), pa.array([chosen and chosen.value], pa.int32()),
             pa.array([chosen and chosen.recall], pa.float64()), pa.array([chosen and chosen.sample], pa.int32())],
            schema=_RESULT_ARROW)


def _empty_shard(root: str, prefix: str, s: int, dim: int, spec, id_type: pa.DataType,
                 group_type: pa.DataType) -> dict:
    """A grouped model's shard that no group hashed to: empty files, so shard numbers stay dense."""
    ids_name, groups_name = f"{prefix}-ids-{s}-empty.arrow", f"{prefix}-groups-{s}-empty.arrow"
    write_ids(os.path.join(root, ids_name), pa.array([], id_type))
    write_column(os.path.join(root, groups_name), "group", pa.array([], group_type))
    digests = {"ids": integrity.digest(os.path.join(root, ids_name)),
               "groups": integrity.digest(os.path.join(root, groups_name))}
    name = f"{prefix}-shard-{s}-empty.snn"
    spec.create(dim).save(os.path.join(root, name), side_files=digests)
    return {"shard": s, "count": 0, "dim": dim, "index": name, "ids": ids_name, "groups": groups_name,
            "sideFiles": digests_json(digests), "tuned": None, "recall": None, "sample": None}


def build_sharded(df: DataFrame, features: str, id_col: str, id_type: str, options: FitOptions, root: str,
                  prefix: str, returned: bool = False, store: str | None = None, group_col: str | None = None,
                  num_shards: int | None = None, target: float | None = None, k: int = 10) -> Layout:
    """Validates on the JVM, then builds ``numShards`` indexes in parallel on executors: written to
    ``root``, or with ``returned`` (executors do not see ``root``) returned through Spark, or with
    ``store`` (a URI) written there and fetched into ``root`` (returned_files): every query
    searches every shard, so each executor needs them all.

    With ``group_col`` (grouped_search) rows go to shards by their group (group_plan): a hashed
    shard holds whole small groups, its vectors (a flat index), ids and groups by position; a
    large group has shards of its own, an index of the model's kind each. ``num_shards`` is then
    the least number of hashed shards (more for large data) unless ``options`` set numShards, and
    a recall ``target`` tunes each large group's index on its own items for recall@``k``
    (``Layout.shard_tunings``)."""
    stats = validate(df, features, id_col, id_type != "string")
    positional = group_col is not None or not stores_own_ids(ARROW_ID_TYPES[id_type], stats.get("min_id"))
    dim = int(stats["max_len"])
    spark = df.sparkSession
    pieces, group_type = (), None
    if group_col:
        group_type = df.schema[group_col].dataType.simpleString()
        n = options.num_shards if options.num_shards > 1 else group_plan.num_shards(stats["rows"], dim, num_shards)
        pieces = group_plan.plan(df, group_col, stats["rows"], dim, n)
        shard = group_plan.shard_column(F.col(group_col), F.col(id_col), n, pieces, group_type)
        total = n + sum(count for _, _, count in pieces)
    else:
        n = total = num_shards or options.num_shards
        shard = F.pmod(F.xxhash64(F.col(id_col)), F.lit(n)).cast("int")
    keys = partition_keys(spark, total)
    key = key_column(keys, shard)
    grouping = [F.col(group_col).alias("g")] if group_col else []
    data = (df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"),
                      shard.alias("shard"), key.alias("key"), *grouping)
            .repartition(total, "key").drop("key"))
    spec = options.spec.replace(kind="flat") if group_col else options.spec  # grouped: the shard's vectors
    kw = dict(prefix=prefix, dim=dim, id_type=id_type, id_col=id_col, features=features, positional=positional,
              spec=spec, group_col=group_col, large_spec=options.spec if group_col else None, hashed=n,
              target=target if group_col else None, k=k)
    files = ("index", "ids", "groups")
    if store:
        results, stored = build_and_store(data, _build_task, _RESULT_ARROW, _RESULT, uri=store, key="shard",
                                          file_columns=files, what=f"the sharded build ({total} shards)", **kw)
        hadoop_store.fetch(spark, store, root, stored, store)
    elif returned:
        results = build_and_gather(data, _build_task, _RESULT_ARROW, _RESULT, root=root, key="shard",
                                   file_columns=files, expected_bytes=int(stats["rows"]) * (4 * dim + 128),
                                   what=f"the sharded build ({total} shards)", **kw)
    else:
        results = [r.asDict() for r in data.mapInArrow(partial(_build_task, root=root, **kw), _RESULT).collect()]
    if group_col:  # a query goes to the shard its group hashes to: every shard number must exist
        have = {r["shard"] for r in results}
        group_arrow = ARROW_ID_TYPES[group_type]
        results += [_empty_shard(root, prefix, s, dim, spec, ARROW_ID_TYPES[id_type], group_arrow)
                    for s in range(total) if s not in have]
    results.sort(key=lambda r: r["shard"])
    built = sum(r["count"] for r in results)
    if built != stats["rows"]:
        raise InvalidArgumentError(f"the sharded build indexed {built} rows but validation counted "
                                   f"{stats['rows']}: is the input DataFrame non-deterministic? "
                                   "Cache or checkpoint it before fit")
    shards = tuple(shard_files(r, root, f"shard {r['shard']}") for r in results)
    tunings = tuple(ShardTuning(r["shard"], r["tuned"], r["recall"], r["sample"]) for r in results
                    if r.get("tuned") is not None)
    layout = Layout(dim, options.spec.metric, options.spec.kind, id_type, positional, shards, root,
                    group_type=group_type, group_pieces=pieces, shard_tunings=tunings)
    keep_only(root, prefix, layout.files())  # other attempts' files
    return layout
