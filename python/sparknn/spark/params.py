"""Params shared by :class:`KNN` and :class:`KNNModel`, in pyspark.ml conventions."""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasOutputCol, HasSeed

from sparknn.index import _normalise_metric

# Index kinds the Spark layer distributes (ivf has its own routed path, not yet here).
SPARK_KINDS = ("flat", "hnsw")


def _positive(name: str, minimum: int = 1):
    def convert(value):
        value = TypeConverters.toInt(value)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value

    return convert


def _choice(name: str, choices):
    def convert(value):
        value = TypeConverters.toString(value).lower()
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return convert


def _metric(value):
    try:
        return _normalise_metric(TypeConverters.toString(value))
    except ValueError as err:  # InvalidArgumentError is a ValueError; keep pyspark's type
        raise ValueError(str(err)) from None


class KNNParams(HasFeaturesCol, HasOutputCol, HasSeed):
    """k, metric and index parameters; column names; distribution settings."""

    k = Param(Params._dummy(), "k", "number of neighbours per row (>= 1); rows get min(k, n) neighbours",
              typeConverter=_positive("k"))
    metric = Param(Params._dummy(), "metric", "distance: 'cosine' (1 - cos), 'l2' (squared Euclidean) or "
                   "'ip' (negated inner product); smaller is closer", typeConverter=_metric)
    indexType = Param(Params._dummy(), "indexType", "'hnsw' (approximate graph) or 'flat' (exact)",
                      typeConverter=_choice("indexType", SPARK_KINDS))
    idCol = Param(Params._dummy(), "idCol", "item id column: any integer or string type, returned as given",
                  typeConverter=TypeConverters.toString)
    M = Param(Params._dummy(), "M", "hnsw: graph links per node", typeConverter=_positive("M", 2))
    efConstruction = Param(Params._dummy(), "efConstruction", "hnsw: candidate list size while building",
                           typeConverter=_positive("efConstruction"))
    efSearch = Param(Params._dummy(), "efSearch", "hnsw: candidate list size while searching (raised to k)",
                     typeConverter=_positive("efSearch"))
    numShards = Param(Params._dummy(), "numShards", "1: build one index on the driver; N > 1: split the "
                      "items into N shards built on executors and merge per-shard results",
                      typeConverter=_positive("numShards"))
    includeSelf = Param(Params._dummy(), "includeSelf", "similarItems: keep each item among its own "
                        "neighbours", typeConverter=TypeConverters.toBoolean)
    indexPath = Param(Params._dummy(), "indexPath", "optional directory on a filesystem shared by the "
                      "driver and executors to write index files to (required for numShards > 1 on a "
                      "multi-node cluster); without it files are shipped with SparkContext.addFile",
                      typeConverter=TypeConverters.toString)
    numThreads = Param(Params._dummy(), "numThreads", "engine threads: 0 = all cores for the driver build "
                       "and spark.task.cpus inside tasks", typeConverter=_positive("numThreads", 0))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=10, metric="cosine", indexType="hnsw", featuresCol="features", idCol="id",
                         outputCol="neighbors", M=16, efConstruction=200, efSearch=64, seed=42, numShards=1,
                         includeSelf=False, numThreads=0)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getMetric(self) -> str:
        return self.getOrDefault(self.metric)

    def getIndexType(self) -> str:
        return self.getOrDefault(self.indexType)

    def getIdCol(self) -> str:
        return self.getOrDefault(self.idCol)

    def getM(self) -> int:
        return self.getOrDefault(self.M)

    def getEfConstruction(self) -> int:
        return self.getOrDefault(self.efConstruction)

    def getEfSearch(self) -> int:
        return self.getOrDefault(self.efSearch)

    def getNumShards(self) -> int:
        return self.getOrDefault(self.numShards)

    def getIncludeSelf(self) -> bool:
        return self.getOrDefault(self.includeSelf)

    def getIndexPath(self):
        return self.getOrDefault(self.indexPath) if self.isDefined(self.indexPath) else None

    def getNumThreads(self) -> int:
        return self.getOrDefault(self.numThreads)

    # Setters shared by the estimator and the model (query-time k, efSearch, columns).
    def setK(self, value: int):
        return self._set(k=value)

    def setEfSearch(self, value: int):
        return self._set(efSearch=value)

    def setFeaturesCol(self, value: str):
        return self._set(featuresCol=value)

    def setIdCol(self, value: str):
        return self._set(idCol=value)

    def setOutputCol(self, value: str):
        return self._set(outputCol=value)

    def setIncludeSelf(self, value: bool):
        return self._set(includeSelf=value)

    def setNumThreads(self, value: int):
        return self._set(numThreads=value)
