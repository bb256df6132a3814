"""KNN: the estimator that builds the index."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparknn.errors import InvalidArgumentError
from sparknn.spark import hadoop_store, runtime
from sparknn.tuning import DEFAULT_TARGET
from sparknn.spark.grouped_search import check_groups
from sparknn.spark.build import build_on_driver, file_prefix
from sparknn.spark.direct_read import ParquetScan, find_scan, first_dim
from sparknn.spark.ivf_memory import driver_collect_budget, human
from sparknn.spark.ivf_build import build_ivf
from sparknn.spark.model import KNNModel
from sparknn.spark.params import DEFAULT_PART_BYTES, FitOptions, KNNParams
from sparknn.spark.schema import check_features, check_id, features_as_float_array
from sparknn.spark.sharding import build_sharded
from sparknn.spark.storage import IndexFiles, check_shared, executors_see, local_dir, temp_dir


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


def driver_or_routed(df: DataFrame, features: str, options: FitOptions, scan: ParquetScan | None = None) -> str:
    """Where a fit with numShards=1 builds: 'driver' (one index from vectors collected as
    Arrow) or 'routed' (an ivf index built in parts on executors).

    ``ivfMode="auto"`` collects only what the driver can hold with room (see
    ivf_memory.driver_collect_budget); a driver build that cannot fit is refused
    with the numbers before any data moves, instead of an OutOfMemoryError.
    """
    ivf = options.spec.kind == "ivf"
    if ivf and options.ivf_mode == "routed":
        return "routed"
    rows, dim, need = collect_bytes(df, features, scan)
    budget, source = driver_collect_budget(df.sparkSession)
    if need <= budget:
        return "driver"
    if ivf and options.ivf_mode == "auto":
        return "routed"
    advice = ("use ivfMode='routed' (or 'auto'), which builds on executors"
              if ivf else "use indexType='ivf' (built on executors when the data is large) or numShards=N")
    raise InvalidArgumentError(
        f"building on the driver collects {rows} vectors of dim {dim}, about {human(need)}, but the driver "
        f"can take {human(budget)} ({source}): {advice}, or give the driver more memory "
        "(spark.driver.memory, spark.driver.maxResultSize)")


def _files_return_through_spark(spark, index_path: str | None, store: str | None, root: str, what: str) -> bool:
    """Where executors write the files of sharded and routed builds: to an indexPath URI
    (``store``), through Spark; into a local ``indexPath``, which they must see (refused
    otherwise); without it into the driver directory ``root`` when they see it (classic local
    mode, one machine), else into their own scratch space, from where the files come back to the
    driver through Spark (True: nodes that share no disk, a Spark Connect server elsewhere than
    its client)."""
    if store:
        return False
    if index_path:
        check_shared(spark, root, what)
        return False
    return not executors_see(spark, root)


class KNN(Estimator, KNNParams, DefaultParamsReadable, DefaultParamsWritable):
    """k-nearest-neighbour search as a pyspark.ml Estimator.

    >>> knn = KNN(k=10, metric="cosine", indexType="ivf", featuresCol="vector", idCol="id")
    >>> model = knn.fit(items)          # doctest: +SKIP
    >>> model.similarItems()            # doctest: +SKIP

    ``fit`` builds the index: with ``numShards=1`` on the driver (vectors arrive
    as Arrow, all cores build); with ``numShards=N`` on executors, one shard
    per task, written under ``indexPath``; with ``indexType="ivf"`` either on
    the driver like the others (``ivfMode="driver"``) or as parts of an IVF
    index built on executors and searched by routing (``"routed"``, ivf_build);
    ``"auto"`` picks by the size of the vectors.
    """

    @keyword_only
    def __init__(self, *, k=10, metric="cosine", indexType="ivf", featuresCol="features", idCol="id",
                 outputCol="neighbors", M=16, efConstruction=200, efSearch=64, seed=42, numShards=1,
                 includeSelf=False, indexPath=None, numThreads=0, ivfMode="auto", nlist=0, nprobe=16,
                 storage="float32", pqM=0, rerank=None, targetPartBytes=DEFAULT_PART_BYTES, taskMemoryLimit="auto",
                 groupCol=None, targetRecall=None, firstPassDims="auto"):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, k=10, metric="cosine", indexType="ivf", featuresCol="features", idCol="id",
                  outputCol="neighbors", M=16, efConstruction=200, efSearch=64, seed=42, numShards=1,
                  includeSelf=False, indexPath=None, numThreads=0, ivfMode="auto", nlist=0, nprobe=16,
                  storage="float32", pqM=0, rerank=None, targetPartBytes=DEFAULT_PART_BYTES, taskMemoryLimit="auto",
                  groupCol=None, targetRecall=None, firstPassDims="auto"):
        # indexPath=None, groupCol=None, targetRecall=None and rerank=None mean "not set", as if omitted.
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def setMetric(self, value: str):
        return self._set(metric=value)

    def setIndexType(self, value: str):
        return self._set(indexType=value)

    def setM(self, value: int):
        return self._set(M=value)

    def setEfConstruction(self, value: int):
        return self._set(efConstruction=value)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def setNumShards(self, value: int):
        return self._set(numShards=value)

    def setGroupCol(self, value: str):
        return self._set(groupCol=value)

    def setTargetRecall(self, value: float):
        return self._set(targetRecall=value)

    def setFirstPassDims(self, value):
        return self._set(firstPassDims=value)

    def setIndexPath(self, value: str):
        return self._set(indexPath=value)

    def setIvfMode(self, value: str):
        return self._set(ivfMode=value)

    def setNlist(self, value: int):
        return self._set(nlist=value)

    def setStorage(self, value: str):
        return self._set(storage=value)

    def setPqM(self, value: int):
        return self._set(pqM=value)

    def setRerank(self, value: int):
        return self._set(rerank=value)

    def setTargetPartBytes(self, value: int):
        return self._set(targetPartBytes=value)

    def _fit(self, dataset):
        features, id_col = self.getFeaturesCol(), self.getIdCol()
        check_features(dataset, features)
        id_type = check_id(dataset, id_col).dataType.simpleString()
        options = self.fit_options()
        group_col = self.getGroupCol()
        target = self._recall_target(options)
        if group_col:
            check_groups(dataset, group_col, "items")
        elif options.spec.kind == "ivf" and options.num_shards > 1:
            raise InvalidArgumentError("numShards applies to indexType 'flat' and 'hnsw': an ivf index is split "
                                       "into parts by size (set targetPartBytes instead)")
        spark = dataset.sparkSession
        prefix = file_prefix(self.uid)
        index_path = self.getIndexPath()
        # An indexPath URI: builds on executors keep their files there (as chunk rows); the driver's
        # own files (a driver build, the quantizer) go to a temporary directory.
        store = hadoop_store.join(index_path, prefix) if index_path and hadoop_store.is_uri(index_path) else None
        if index_path and not store:
            root, owned = local_dir(index_path, "indexPath"), None
            os.makedirs(root, exist_ok=True)
        else:
            root = owned = temp_dir(spark)
        index_path = None if store else index_path
        try:
            if group_col:  # sharded by group; see grouped_search
                # numShards, else at least twice the default parallelism (more for large data)
                shards = 2 * runtime.default_parallelism(spark)
                returned = _files_return_through_spark(spark, index_path, store, root, "the grouped build")
                layout = build_sharded(dataset, features, id_col, id_type, options, root, prefix, returned, store,
                                       group_col=group_col, num_shards=shards, target=target, k=self.getK())
                shared = not returned and not store
            elif options.num_shards > 1:
                returned = _files_return_through_spark(spark, index_path, store, root,
                                                       f"numShards={options.num_shards}")
                layout = build_sharded(dataset, features, id_col, id_type, options, root, prefix, returned, store)
                shared = not returned and not store
            else:
                # A plain scan of local Parquet is read on the driver without a Spark job.
                scan = find_scan(dataset, id_col, features, id_type)
                if driver_or_routed(dataset, features, options, scan) == "routed":
                    returned = _files_return_through_spark(spark, index_path, store, root, "the routed ivf build")
                    layout = build_ivf(dataset, features, id_col, id_type, options, root, prefix, returned, store)
                    shared = not returned and not store
                else:
                    layout = build_on_driver(dataset, features, id_col, id_type, options.spec, root, prefix,
                                             durable=not owned, scan=scan)
                    shared = bool(index_path)
        except BaseException:
            # Leave nothing behind that could pass for a built index.
            if store:
                hadoop_store.remove_tree(spark, store)
            if owned:
                shutil.rmtree(owned, ignore_errors=True)
            else:
                for name in os.listdir(root):
                    if name.startswith(prefix):
                        os.remove(os.path.join(root, name))
            raise
        model = KNNModel()
        model._resetUid(self.uid)
        self._copyValues(model)
        model._files = IndexFiles(layout, shared=shared, owned=owned)
        if target is not None and layout.kind != "flat":
            model._tune(target, dataset)
        return model

    def _recall_target(self, options: FitOptions) -> float | None:
        """targetRecall; else, for ivf, the default target when nprobe was not set. (hnsw keeps
        efSearch by default: its recall measured from stored items overstates that of other queries.)"""
        if self.getTargetRecall() is not None:
            return self.getTargetRecall()
        if self.isSet(self.nprobe) or options.spec.kind != "ivf":
            return None
        return DEFAULT_TARGET
