"""Routed IVF build: train at the driver, assign on executors, build each part where its rows land.

1. One pass over the ids alone counts the rows and refuses null and duplicate
   ids (a shuffle of ids only). The vectors are checked where they are read
   (the sample, the build tasks); a vector the engine refuses makes a JVM pass
   explain it as the other builds do (column, count, an example id).
2. The driver trains the coarse quantizer on a sample (``DataFrame.sample``,
   collected as Arrow) and saves it as a trained, empty IVF index (centroids,
   SQ8 ranges or PQ codebooks: small), shipped to executors with addFile.
3. The list sizes are estimated from the sample's assignment and the lists
   are packed into balanced parts (ivf_plan.plan_parts).
4. Executors find every item's nearest lists, once: the first says where the
   item is stored, all of them are kept for ``similarItems``, which routes
   the item to them without a second pass over the quantizer (at 10M items
   and 12.6k lists, the four passes this replaced were half of the job).
   Rows are tagged with their part, shuffled so each part lands in its own
   partition, and each
   task adds its part's rows to a copy of the quantizer (with the lists
   found, so nothing is assigned twice) and writes the index plus an Arrow
   "items" file (ids, float32 vectors, probe lists) to the shared directory.
   No process holds more than one part. The tasks report the exact list
   sizes, which replace the estimates in the routing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn import integrity
from sparknn.arrow import ChunkedVectors, rows_to_list, vectors_to_numpy
from sparknn.builder import stores_own_ids
from sparknn.errors import InvalidArgumentError
from sparknn.index import Index, IndexSpec, load
from sparknn.spark import ivf_memory, runtime
from sparknn.spark.ivf_plan import dedupe_parts, item_bytes, plan_parts, sample_size
from sparknn.spark.layout import (
    ARROW_ID_TYPES,
    ChunkSource,
    MAX_STORED_PROBES,
    POSITION_BITS,
    IvfRouting,
    Layout,
    digests_json,
    items_schema,
    probes_column,
    shard_files,
)
from sparknn.spark.params import FitOptions
from sparknn.spark.returned_files import build_and_gather, build_and_store
from sparknn.spark.schema import collect_arrow, features_as_float_array, validate
from sparknn.spark.storage import check_task_sees, keep_only, link, own, temp_dir
from sparknn.spark.tasks import attempt_id, cached, key_column, partition_keys, task_threads

_BUILT = T.StructType([
    T.StructField("part", T.IntegerType()),
    T.StructField("count", T.LongType()),
    T.StructField("index", T.StringType()),
    T.StructField("items", T.StringType()),
    T.StructField("lists", T.ArrayType(T.IntegerType())),  # the part's non-empty lists
    T.StructField("sizes", T.ArrayType(T.LongType())),  # and their sizes
    T.StructField("sideFiles", T.StringType()),  # JSON: role -> digest, as the index records them
])
_BUILT_ARROW = pa.schema([("part", pa.int32()), ("count", pa.int64()), ("index", pa.string()),
                          ("items", pa.string()), ("lists", pa.list_(pa.int32())), ("sizes", pa.list_(pa.int64())),
                          ("sideFiles", pa.string())])


def _load_private(path: str) -> Index:
    return load(path, mmap=True)


def quantizer(path: str, shipped: bool) -> Index:
    """The trained, empty index of a task (loaded once per Python worker)."""
    if shipped:
        from pyspark import SparkFiles

        path = SparkFiles.get(path)
    return cached(path, _load_private)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads consecutive integers uniformly over uint64."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# -- executor functions ------------------------------------------------------------------
def _assign_task(batches, *, qpath, shipped, dim, width, piece_offsets, piece_parts, num_threads):
    """Prepends each row's part (its nearest list, and for a split list one of its pieces by a hash
    of its id: the same piece however the input is partitioned) and its ``width`` nearest lists;
    drops the hash column ``h``."""
    q = quantizer(qpath, shipped)
    q.threads = task_threads(num_threads)
    offsets, parts = np.asarray(piece_offsets), np.asarray(piece_parts)
    for batch in batches:
        x = vectors_to_numpy(batch.column("v"), "features", dim)
        lists = q.nearest_lists(x, width) if len(x) else np.empty((0, width), dtype=np.int64)
        home = lists[:, 0]
        pieces = offsets[home + 1] - offsets[home]
        if len(x) and pieces.min() == 0:  # every list is planned a part (sizes >= 1): never store elsewhere
            raise RuntimeError(f"routed IVF build: list {int(home[pieces.argmin()])} has no part in the plan")
        h = batch.column("h").to_numpy(zero_copy_only=False)
        pick = (_mix(h.view(np.uint64)) % pieces.astype(np.uint64)).astype(np.int64)
        part = parts[offsets[home] + pick].astype(np.int32)
        keep = [i for i, name in enumerate(batch.schema.names) if name != "h"]
        yield pa.RecordBatch.from_arrays([pa.array(part), rows_to_list(lists.astype(np.int32))]
                                         + [batch.column(i) for i in keep],
                                         names=["part", "lists"] + [batch.schema.names[i] for i in keep])


class _PartWriter:
    """One part being built: its index (a copy of the quantizer) and its items file, written batch by batch."""

    def __init__(self, part, *, root, prefix, qpath, shipped, dim, width, id_type, positional, threads, attempt):
        self.part, self.root, self.positional, self.dim = part, root, positional, dim
        src = qpath
        if shipped:
            from pyspark import SparkFiles

            src = SparkFiles.get(qpath)
        self.index = load(src, mmap=False, threads=threads)
        # Named after the task attempt: a speculative or retried copy writes files of its own.
        self.name = f"{prefix}-part-{part}-a{attempt}.snn"
        self.items = f"{prefix}-items-{part}-a{attempt}.arrow"
        self._tmp = os.path.join(root, f"{self.items}.tmp")
        schema = items_schema(id_type, dim, width)
        self._sink = pa.OSFile(self._tmp, "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._id_type = ARROW_ID_TYPES[id_type]
        self.count = 0

    def add(self, ids: pa.Array, x: np.ndarray, lists: np.ndarray) -> None:
        if self.positional:
            eids = np.arange(self.count, self.count + len(x), dtype=np.int64) | (self.part << POSITION_BITS)
        else:
            eids = ids.cast(pa.int64()).to_numpy()
        self.index.add(x, eids, lists=lists[:, :1])
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), self.dim)
        self._writer.write_batch(pa.RecordBatch.from_arrays([ids.cast(self._id_type), vectors, probes_column(lists)],
                                                            ["id", "vector", "lists"]))
        self.count += len(x)

    def finish(self) -> tuple:
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, os.path.join(self.root, self.items))
        digests = {"items": integrity.digest(os.path.join(self.root, self.items))}
        self.index.save(os.path.join(self.root, self.name), side_files=digests)  # last: it vouches for the items
        sizes = self.index.list_sizes  # the part's own rows: it started as the empty quantizer
        nonempty = np.flatnonzero(sizes)
        return self.part, self.count, self.name, self.items, nonempty, sizes[nonempty], digests_json(digests)

    def abort(self) -> None:
        self._sink.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def _build_task(batches, attempt=None, **kw):
    """Streams a partition's rows into the part(s) it holds; writes each part's index and items file
    under names of this task attempt (the driver keeps the delivered attempt's, removes the others)."""
    writers = {}
    check_task_sees(kw["root"], "the routed ivf build")
    threads = task_threads(kw.pop("num_threads"))
    kw["attempt"] = attempt_id() if attempt is None else attempt
    dim = kw["dim"]
    try:
        for batch in batches:
            part_col = batch.column("part").to_numpy()
            for p in np.unique(part_col):
                sub = batch if part_col[0] == part_col[-1] == p else batch.filter(pa.array(part_col == p))
                writer = writers.get(p)
                if writer is None:
                    writer = writers[p] = _PartWriter(int(p), threads=threads, **kw)
                lists = sub.column("lists").flatten().to_numpy().reshape(sub.num_rows, kw["width"])
                writer.add(sub.column("id"), vectors_to_numpy(sub.column("v"), "features", dim), lists)
        done = [w.finish() for w in writers.values()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for part, count, name, items, lists, sizes, digests in done:
        yield pa.RecordBatch.from_arrays([pa.array([part], pa.int32()), pa.array([count], pa.int64()),
                                          pa.array([name]), pa.array([items]),
                                          pa.array([lists.astype(np.int32)], pa.list_(pa.int32())),
                                          pa.array([sizes], pa.list_(pa.int64())), pa.array([digests])],
                                         schema=_BUILT_ARROW)


# -- driver --------------------------------------------------------------------------------
def _check_ids(data: DataFrame, id_col: str) -> tuple[int, object]:
    """Rows and the least id, from one pass over the ids alone (Parquet reads no vectors for it),
    which also refuses an empty input, null ids and duplicate ids. The vectors are checked where
    they are read anyway (the training sample, the build tasks; ``_explained``), not by a pass of
    their own: validation's pass was a tenth of a routed build (4.2 s of 38 s at 200k x 768)."""
    counts = data.groupBy("id").count()
    stats = counts.agg(F.sum("count").alias("rows"),
                       F.sum(F.when(F.col("id").isNull(), F.col("count"))).alias("null_ids"),
                       F.max(F.when(F.col("id").isNotNull(), F.col("count"))).alias("most"),
                       F.min("id").alias("min_id")).first()
    rows = int(stats["rows"] or 0)
    if rows == 0:
        raise InvalidArgumentError("the DataFrame to index is empty: fit needs at least one row")
    if stats["null_ids"]:
        raise InvalidArgumentError(f"idCol {id_col!r} has {stats['null_ids']} null values of {rows} rows")
    if stats["most"] > 1:
        dup = counts.where("count > 1")
        first = dup.limit(1).collect()[0]
        raise InvalidArgumentError(f"idCol {id_col!r} has {dup.count()} duplicate ids (e.g. {first['id']!r} "
                                   f"appears {first['count']} times): ids must be unique")
    return rows, stats["min_id"]


def _first_length(data: DataFrame) -> int:
    """The length of a vector (the first non-null one's; all must have it, which the sample and the
    build check as they read them), from as few rows as Spark needs to find one."""
    row = data.where(F.col("v").isNotNull()).select(F.size("v").alias("n")).first()
    return int(row["n"]) if row is not None else 0


@contextmanager
def _explained(df: DataFrame, features: str, id_col: str, id_type: str):
    """Vectors the engine refuses (null, ragged, empty, NaN or infinite values) fail the step that
    reads them with the engine's error; a pass on the JVM (schema.validate) then names the column,
    the count and an example id, as the other builds do. Errors it does not explain pass on, and
    only a refusal of data (a ValueError, here or in a task) costs that pass: an executor lost or
    out of memory is reported at once."""
    try:
        yield
    except Exception as e:
        if isinstance(e, ValueError) or "InvalidArgumentError" in str(e) or "ValueError" in str(e):
            validate(df, features, id_col, id_type != "string")  # raises the clear error when it finds one
        raise


def _lists(spec: IndexSpec, n: int) -> int:
    """The number of lists for ``n`` items, refused before any step that reads vectors (whose
    ValueErrors cost the explaining pass)."""
    nlist = spec.for_items(n, batch=True).nlist  # a model is searched by batches: sqrt(n) lists
    if nlist > n:
        raise InvalidArgumentError(f"nlist={nlist} is more than the {n} items to index: lower nlist (or leave it "
                                   "0 to choose about sqrt(n))")
    return nlist


def _train(data: DataFrame, n: int, nlist: int, dim: int, spec: IndexSpec, path: str) -> tuple[Index, np.ndarray]:
    """The quantizer of ``nlist`` lists, trained on a sample and saved to ``path``, and the list sizes
    the sample predicts (at least 1 per list, so that every list has a part even if the sample missed it)."""
    want = sample_size(nlist, n)
    # Rows drawn by a hash of their id, in id order: the same sample (and centroids) however the
    # input is partitioned (DataFrame.sample draws per partition).
    h = F.xxhash64(F.col("id"), F.lit(spec.seed))
    sample = data.select("id", "v")
    if want < n:  # overshoots a little so that k-means gets about `want` rows
        sample = sample.where(F.pmod(h, F.lit(1 << 30)) < F.lit(int(min(1.0, 1.1 * want / n) * (1 << 30))))
    x = _in_id_order(collect_arrow(sample), dim)
    if len(x) < nlist:
        x = _in_id_order(collect_arrow(data.select("id", "v").orderBy(h).limit(max(nlist, want))), dim)
    index = spec.replace(nlist=nlist, nprobe=min(spec.nprobe, nlist), train_size=len(x)).create(dim)
    index.train(x)
    index.save(path)
    seen = np.bincount(index.nearest_lists(x, 1)[:, 0], minlength=nlist)
    return index, np.maximum(1, np.rint(seen * (n / len(x)))).astype(np.int64)


def _in_id_order(table: pa.Table, dim: int) -> np.ndarray:
    return ChunkedVectors(table.column("v"), "features", dim).take(pc.sort_indices(table.column("id")).to_numpy())


def build_ivf(df: DataFrame, features: str, id_col: str, id_type: str, options: FitOptions, root: str,
              prefix: str, returned: bool = False, store: str | None = None) -> Layout:
    """The routed build; its parts are written to ``root``, or with ``returned`` (executors do not
    see ``root``) returned through Spark, or with ``store`` (a URI) kept there as chunk rows that
    reach the query tasks of each part (returned_files). The quantizer is in ``root``."""
    spark = df.sparkSession
    spec = options.spec
    data = df.select(F.col(id_col).alias("id"), features_as_float_array(df, features).alias("v"))
    n, min_id = _check_ids(data, id_col)
    positional = not stores_own_ids(ARROW_ID_TYPES[id_type], min_id if id_type != "string" else None)
    nlist = _lists(spec, n)
    explained = partial(_explained, df, features, id_col, id_type)
    with explained():
        dim = _first_length(data)
        if dim == 0:
            raise InvalidArgumentError("every vector is null or empty")

    qname = f"{prefix}-quantizer.snn"
    qpath = os.path.join(root, qname)
    with explained():
        trained, estimated = _train(data, n, nlist, dim, spec, qpath)
    width = min(spec.nprobe, nlist, MAX_STORED_PROBES)
    # Shipped under a unique name (addFile flattens names) from a directory kept until the driver
    # exits: an executor started later fetches every added file.
    ship_dir = temp_dir(spark, "sparknn-ship-")
    own(ship_dir)
    shipped_name = f"{prefix}-{qname}"
    link(qpath, os.path.join(ship_dir, shipped_name))
    runtime.ship(spark, os.path.join(ship_dir, shipped_name))
    common = {"qpath": shipped_name, "shipped": True, "dim": dim, "num_threads": spec.threads}

    # The parts, planned on the estimated list sizes (the sample's share of each list, scaled).
    per_item = item_bytes(dim, spec.metric, spec.storage, trained.params["pq_m"], spec.rerank)
    piece_offsets, piece_parts, part_items = plan_parts(estimated, per_item, options.target_part_bytes,
                                                        runtime.default_parallelism(spark), trained.centroids)
    num_parts = len(part_items)
    need = ivf_memory.build_task_bytes(int(part_items.max()), per_item, os.path.getsize(qpath), dim,
                                       ivf_memory.arrow_batch_rows(spark))
    ivf_memory.check(spark, f"building the IVF index (largest of {num_parts} parts: {int(part_items.max())} "
                     f"items, {per_item} bytes each)", need, options.task_memory_limit,
                     "Lower targetPartBytes (more, smaller parts), use storage='sq8' or 'pq', or give Python "
                     "workers more memory (spark.executor.pyspark.memory, executor memory).")

    keys = partition_keys(spark, num_parts)
    key = key_column(keys, F.col("part"))
    assign = partial(_assign_task, width=width, piece_offsets=piece_offsets.tolist(),
                     piece_parts=piece_parts.tolist(), **common)
    assigned_schema = T.StructType([T.StructField("part", T.IntegerType()),
                                    T.StructField("lists", T.ArrayType(T.IntegerType()))] + data.schema.fields)
    kw = dict(prefix=prefix, width=width, id_type=id_type, positional=positional, **common)
    # Each part's rows in id order, not shuffle order: labels (positions for string ids) and so ties
    # do not depend on how the input was partitioned (Spark sorts, spilling if it must).
    grouped = (data.withColumn("h", F.xxhash64("id")).mapInArrow(assign, assigned_schema)
               .withColumn("key", key).repartition(num_parts, "key").drop("key")
               .sortWithinPartitions("part", "id"))
    stored = {}
    with explained():
        if store:
            rows, stored = build_and_store(grouped, _build_task, _BUILT_ARROW, _BUILT, uri=store, key="part",
                                           file_columns=("index", "items"), what="the routed ivf build", **kw)
        elif returned:
            rows = build_and_gather(grouped, _build_task, _BUILT_ARROW, _BUILT, root=root, key="part",
                                    file_columns=("index", "items"),
                                    expected_bytes=n * (per_item + 4 * dim + 16 + 4 * width),
                                    what="the routed ivf build", **kw)
        else:
            rows = [r.asDict() for r in grouped.mapInArrow(partial(_build_task, root=root, **kw), _BUILT).collect()]
    built = {r["part"]: r for r in rows}
    total = sum(r["count"] for r in rows)
    sizes = np.zeros(nlist, dtype=np.int64)
    for r in rows:
        np.add.at(sizes, np.asarray(r["lists"], dtype=np.int64), np.asarray(r["sizes"], dtype=np.int64))
    if total != n:
        raise InvalidArgumentError(f"the IVF build indexed {total} rows but validation counted {n}: is the input "
                                   "DataFrame non-deterministic? Cache or checkpoint it before fit")
    parts = []
    for p in range(num_parts):
        r = built.get(p)
        if r is None:  # a planned part that got no rows: an empty index keeps part numbers dense
            r = _empty_part(trained, root, f"{prefix}-part-{p}.snn", f"{prefix}-items-{p}.arrow",
                            items_schema(id_type, dim, width))
        parts.append(shard_files(r, None if r["index"] in stored else root, f"part {p}"))
    list_offsets, list_parts = dedupe_parts(piece_offsets, piece_parts)
    part_bytes = [stored[s.index].size if s.index in stored else os.path.getsize(os.path.join(root, s.index))
                  for s in parts]
    routing = IvfRouting(qname, tuple(sizes.tolist()), tuple(list_offsets.tolist()), tuple(list_parts.tolist()),
                         tuple(piece_offsets.tolist()), tuple(piece_parts.tolist()), tuple(keys), tuple(part_bytes))
    chunks = ChunkSource(store, tuple(sorted(stored.items()))) if store else None
    layout = Layout(dim, spec.metric, "ivf", id_type, positional, tuple(parts), root, ivf=routing, chunks=chunks)
    keep_only(root, prefix, layout.files())  # other attempts' files
    return layout


def _empty_part(trained: Index, root: str, name: str, items: str, schema: pa.Schema) -> dict:
    """A part with no rows: an empty items file and the trained, empty quantizer recording it."""
    with pa.OSFile(os.path.join(root, items), "wb") as sink, pa.ipc.new_file(sink, schema):
        pass
    digests = {"items": integrity.digest(os.path.join(root, items))}
    trained.save(os.path.join(root, name), side_files=digests)
    return {"index": name, "items": items, "count": 0, "sideFiles": digests_json(digests)}
