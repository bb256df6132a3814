"""sparknn on Spark: a pyspark.ml Estimator/Model over the native engine (no JVM jar).

>>> from sparknn.spark import KNN, KNNModel
>>> knn = KNN(k=10, metric="cosine", indexType="ivf", featuresCol="vector", idCol="id")
>>> model = knn.fit(items_df)              # doctest: +SKIP
>>> model.transform(queries_df)            # doctest: +SKIP
>>> model.similarItems()                   # doctest: +SKIP

See docs/spark.md.
"""

from sparknn.spark.estimator import KNN
from sparknn.spark.model import KNNModel
from sparknn.spark.session import local_session

__all__ = ["KNN", "KNNModel", "local_session"]
