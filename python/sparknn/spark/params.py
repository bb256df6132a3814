"""Params shared by :class:`KNN` and :class:`KNNModel`, in pyspark.ml conventions."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasOutputCol, HasSeed

from sparknn.index import KINDS, STORAGES, IndexSpec, default_rerank, first_pass_setting, normalise_metric

IVF_MODES = ("auto", "driver", "routed")

# IndexSpec field -> the KNN Param that sets it (pyspark.ml names are camelCase).
SPEC_PARAMS = {"kind": "indexType", "metric": "metric", "M": "M", "ef_construction": "efConstruction",
               "ef_search": "efSearch", "seed": "seed", "nlist": "nlist", "nprobe": "nprobe", "storage": "storage",
               "pq_m": "pqM", "rerank": "rerank", "threads": "numThreads"}


def knn_params(spec: IndexSpec) -> dict:
    """The KNN Params that give ``spec`` (e.g. for ``KNN(**knn_params(spec))``)."""
    params = {param: getattr(spec, field) for field, param in SPEC_PARAMS.items()}
    params["firstPassDims"] = str(spec.first_pass_dims or "off")
    return params


@dataclass(frozen=True)
class FitOptions:
    """What a fit needs besides the index: how the build is distributed. Made once from the Params."""

    spec: IndexSpec
    num_shards: int = 1
    ivf_mode: str = "auto"
    target_part_bytes: int = 128 << 20
    task_memory_limit: str = "auto"


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


def _first_pass(value):
    """'auto', 'off' or a count of dimensions, kept as text: a Param saved with a model holds one
    type."""
    try:
        setting = first_pass_setting(value, "firstPassDims")
    except ValueError as err:  # InvalidArgumentError is a ValueError; keep pyspark's type
        raise ValueError(str(err)) from None
    return "off" if setting == 0 else str(setting)


def _recall(value):
    from sparknn.tuning import check_target

    return check_target(TypeConverters.toFloat(value))


def _size(value):
    from sparknn.spark.ivf_memory import parse_size

    value = TypeConverters.toString(value).strip().lower()
    if value != "auto":
        try:
            parse_size(value)
        except ValueError as err:
            raise ValueError(f"taskMemoryLimit: {err}") from None
    return value


def _metric(value):
    try:
        return normalise_metric(TypeConverters.toString(value))
    except ValueError as err:  # InvalidArgumentError is a ValueError; keep pyspark's type
        raise ValueError(str(err)) from None


DEFAULT_PART_BYTES = FitOptions.target_part_bytes


class KNNParams(HasFeaturesCol, HasOutputCol, HasSeed):
    """k, metric and index parameters; column names; distribution settings."""

    k = Param(Params._dummy(), "k", "number of neighbours per row (>= 1); rows get min(k, n) neighbours",
              typeConverter=_positive("k"))
    metric = Param(Params._dummy(), "metric", "distance: 'cosine' (1 - cos), 'l2' (squared Euclidean) or "
                   "'ip' (negated inner product); smaller is closer", typeConverter=_metric)
    indexType = Param(Params._dummy(), "indexType", "'hnsw' (approximate graph), 'flat' (exact) or 'ivf' "
                      "(inverted lists searched list by list; see ivfMode)",
                      typeConverter=_choice("indexType", KINDS))
    ivfMode = Param(Params._dummy(), "ivfMode", "ivf: 'driver' builds one index on the driver that every task "
                    "maps (like hnsw); 'routed' trains at the driver, builds parts on executors and routes "
                    "queries to their lists (no node holds all vectors); 'auto' = 'driver' when the vectors "
                    "and ids take at most half of the smaller of spark.driver.maxResultSize and the driver "
                    "JVM's heap, else 'routed'",
                    typeConverter=_choice("ivfMode", IVF_MODES))
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
    indexPath = Param(Params._dummy(), "indexPath", "optional place for the files of builds on executors: a "
                      "directory the driver and executors share (a local path or mount: files opened in place) or "
                      "a Hadoop FileSystem URI (files written there through Spark; a routed model's parts stay "
                      "there); without it files built on the driver are shipped to executors and files built on "
                      "executors come back through Spark where executors do not see the driver's directory",
                      typeConverter=TypeConverters.toString)
    nlist = Param(Params._dummy(), "nlist", "ivf: lists (k-means cells); 0 = about sqrt(n)",
                  typeConverter=_positive("nlist", 0))
    nprobe = Param(Params._dummy(), "nprobe", "ivf: lists scanned per query (widened for a query whose lists "
                   "hold fewer than k items)", typeConverter=_positive("nprobe"))
    storage = Param(Params._dummy(), "storage", "vectors stored as 'float32', 'fp16' or 'bf16' (half the memory; "
                    "every indexType), or ivf 'sq8' (4x smaller) or 'pq' (pqM bytes each)",
                    typeConverter=_choice("storage", STORAGES))
    pqM = Param(Params._dummy(), "pqM", "ivf pq: bytes per vector (divides the dimension); 0 = about dim / 4",
                typeConverter=_positive("pqM", 0))
    rerank = Param(Params._dummy(), "rerank", "ivf: re-rank rerank * k candidates of an approximate scan by "
                   "exact distance (sq8, pq: their codes; float32: a bf16 scan on CPUs with AVX512_BF16); 0 = off; "
                   "unset: 2 for ivf float32, else 0",
                   typeConverter=_positive("rerank", 0))
    targetPartBytes = Param(Params._dummy(), "targetPartBytes", "ivf: target size of one part (an index built "
                            "and searched by one task), in bytes; more data makes more parts",
                            typeConverter=_positive("targetPartBytes"))
    taskMemoryLimit = Param(Params._dummy(), "taskMemoryLimit", "memory one task's Python worker may use, e.g. "
                            "'4g'; 'auto' = from spark.executor.pyspark.memory, the machine (local mode) or "
                            "spark.executor.memory", typeConverter=_size)
    groupCol = Param(Params._dummy(), "groupCol", "neighbours only within each item's group: the name of a column "
                     "of integers or strings (similarItems: the items' group; transform: the group named in each "
                     "query row's column of that name)", typeConverter=TypeConverters.toString)
    targetRecall = Param(Params._dummy(), "targetRecall", "instead of nprobe / efSearch: the least of them whose "
                         "recall@k on a sample of the items reaches this (0 < R <= 1), chosen at fit and set on the "
                         "model (model.tuning says what was chosen and measured); unset: nprobe / efSearch as given",
                         typeConverter=_recall)
    firstPassDims = Param(Params._dummy(), "firstPassDims", "ivf with float32 lists and rerank >= 1: scan the "
                          "lists in the principal subspace of the items first and re-rank the candidates exactly "
                          "('auto': the least multiple of 16 dimensions up to dim / 4 holding 90% of the variance, "
                          "for dim >= 256 and 4096 items or more; 'off'; or a count); the basis is fitted at the "
                          "driver's training and saved with the index, so executors search where the driver "
                          "tuned. 'auto' stays off for other indexes", typeConverter=_first_pass)
    numThreads = Param(Params._dummy(), "numThreads", "engine threads: 0 = all cores for the driver build "
                       "and spark.task.cpus inside tasks", typeConverter=_positive("numThreads", 0))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=10, metric="cosine", indexType="ivf", featuresCol="features", idCol="id",
                         outputCol="neighbors", M=16, efConstruction=200, efSearch=64, seed=42, numShards=1,
                         includeSelf=False, numThreads=0, ivfMode="auto", nlist=0, nprobe=16, storage="float32", pqM=0,
                         rerank=0, firstPassDims="auto",
                         targetPartBytes=DEFAULT_PART_BYTES, taskMemoryLimit="auto")

    def index_spec(self) -> IndexSpec:
        """The index these Params describe (``numThreads`` as the driver build's threads)."""
        fields = {field: self.getOrDefault(param) for field, param in SPEC_PARAMS.items()}
        return IndexSpec(**{**fields, "rerank": self.getRerank(), "first_pass_dims": self.getFirstPassDims()})

    def fit_options(self) -> FitOptions:
        return FitOptions(self.index_spec(), self.getNumShards(), self.getIvfMode(), self.getTargetPartBytes(),
                          self.getTaskMemoryLimit())

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getMetric(self) -> str:
        return self.getOrDefault(self.metric)

    def getIndexType(self) -> str:
        return self.getOrDefault(self.indexType)

    def getIvfMode(self) -> str:
        return self.getOrDefault(self.ivfMode)

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

    def getGroupCol(self):
        return self.getOrDefault(self.groupCol) if self.isDefined(self.groupCol) else None

    def getTargetRecall(self):
        return self.getOrDefault(self.targetRecall) if self.isDefined(self.targetRecall) else None

    def getNumThreads(self) -> int:
        return self.getOrDefault(self.numThreads)

    def getNlist(self) -> int:
        return self.getOrDefault(self.nlist)

    def getNprobe(self) -> int:
        return self.getOrDefault(self.nprobe)

    def getStorage(self) -> str:
        return self.getOrDefault(self.storage)

    def getPqM(self) -> int:
        return self.getOrDefault(self.pqM)

    def getRerank(self) -> int:
        """As set, else the default for the index: 2 for ivf float32 lists (a bf16 scan), else 0."""
        if self.isSet(self.rerank):
            return self.getOrDefault(self.rerank)
        return default_rerank(self.getIndexType(), self.getOrDefault(self.storage))

    def getFirstPassDims(self):
        """As the index takes it: 0 (off), "auto" or a count. "auto" is 0 for indexes without
        float32 ivf lists re-ranked, which the first pass needs; a count there is an error at fit."""
        value = first_pass_setting(self.getOrDefault(self.firstPassDims), "firstPassDims")
        if value != "auto":
            return value
        return IndexSpec(kind=self.getIndexType(), storage=self.getStorage(), rerank=self.getRerank(),
                         first_pass_dims="auto").first_pass_dims

    def getTargetPartBytes(self) -> int:
        return self.getOrDefault(self.targetPartBytes)

    def getTaskMemoryLimit(self) -> str:
        return self.getOrDefault(self.taskMemoryLimit)

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

    def setNprobe(self, value: int):
        return self._set(nprobe=value)

    def setTaskMemoryLimit(self, value: str):
        return self._set(taskMemoryLimit=value)
