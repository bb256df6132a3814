"""sparknn on Spark: a pyspark.ml Estimator/Model over the native engine (no JVM jar).

>>> from sparknn.spark import KNN, KNNModel
>>> knn = KNN(k=10, metric="cosine", indexType="ivf", featuresCol="vector", idCol="id")
>>> model = knn.fit(items_df)              # doctest: +SKIP
>>> model.transform(queries_df)            # doctest: +SKIP
>>> model.similarItems()                   # doctest: +SKIP

See docs/spark.md.
"""

from importlib import import_module

__all__ = ["KNN", "KNNModel", "local_session"]

# Imported on first use: executors' Python workers import sparknn.spark.worker for every
# job, and pyspark.ml (with pandas) behind the estimator cost each worker about 0.3 s.
_HOMES = {"KNN": "sparknn.spark.estimator", "KNNModel": "sparknn.spark.model", "local_session": "sparknn.spark.session"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_HOMES})
