import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest


def _short_lived_jvms() -> None:
    """Every JVM the tests start lives for seconds to minutes (a session's executors, a CLI's driver,
    a cluster's daemons), where the C2 compiler's warm-up is most of their CPU: with the C1 compiler
    alone, a standalone session with a small job took 16 s instead of 27 s on 2 cores. Set for every
    spark-submit of the tests (this process's driver, subprocesses, the Connect server) through a
    spark-defaults.conf of their own, and for masters and workers through SPARK_DAEMON_JAVA_OPTS.
    SPARKNN_TEST_JVM_OPTS replaces the options (empty: none)."""
    opts = os.environ.get("SPARKNN_TEST_JVM_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    conf_dir = tempfile.mkdtemp(prefix="sparknn-test-conf-")
    atexit.register(shutil.rmtree, conf_dir, ignore_errors=True)
    with open(os.path.join(conf_dir, "spark-defaults.conf"), "w") as f:
        if opts:
            f.write(f"spark.driver.extraJavaOptions {opts}\nspark.executor.extraJavaOptions {opts}\n")
    os.environ["SPARK_CONF_DIR"] = conf_dir  # also keeps a developer's own spark-defaults out of the tests
    os.environ["SPARK_DAEMON_JAVA_OPTS"] = opts


_short_lived_jvms()


def clustered(n: int, dim: int, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Fixed-seed Gaussian clusters, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str):
    """numpy brute force in float64: (ids, distances) with 'smaller is closer'."""
    b = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        d = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * q @ b.T
        d = np.maximum(d, 0)
    elif metric == "ip":
        d = -(q @ b.T)
    else:
        d = 1 - q @ b.T
    idx = _first_k(d, k)
    return idx, np.take_along_axis(d, idx, axis=1)


def _first_k(d: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(d, axis=1, kind="stable")[:, :k] (ties: the lower column first) without sorting
    whole rows: a full sort of 12k x 12k distances took 15-30 s of the suite per call. Only the
    entries at most each row's k-th smallest are sorted."""
    k = min(k, d.shape[1])
    if k == 0:
        return np.zeros((d.shape[0], 0), dtype=np.int64)
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    rows, cols = np.nonzero(d <= kth)  # row-major: ascending columns within a row
    counts = np.bincount(rows, minlength=d.shape[0])
    if counts.min() < k:  # NaN among a row's k smallest: argsort's order (NaN last) as it is
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    order = np.lexsort((cols, d[rows, cols], rows))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return cols[order][starts[:, None] + np.arange(k)[None, :]].astype(np.int64)


def mixed_groups(n: int, seed: int = 0, scale: int = 1, large=(900, 1400)) -> np.ndarray:
    """Group codes of every shape at once, shuffled: singletons, pairs, groups of 7, Zipf-sized ones
    (up to 250), and ``large`` groups; ``scale`` multiplies the counts of the small ones."""
    rng = np.random.default_rng(seed)
    sizes = ([1] * 20 * scale + [2] * 30 * scale + [7] * 15 * scale
             + list(np.minimum(rng.zipf(1.8, 100 * scale), 250)) + list(large))
    codes = np.repeat(np.arange(len(sizes)), sizes)
    codes = np.concatenate([codes, rng.integers(0, len(sizes), max(0, n - len(codes)))])[:n]
    rng.shuffle(codes)
    return codes


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


@pytest.fixture(scope="session")
def clustered_data():
    return clustered(5000, 32, seed=1), clustered(200, 32, seed=2)


# --------------------------------------------------------------------------- Spark
_SPARK = {}


def _spark_35_shims() -> bool:
    """Spark 3.5 has no DataFrame.toArrow and no createDataFrame(pyarrow.Table) (both 4.0): the
    tests use them, so on 3.5 they go through sparknn's own Arrow collection and pandas."""
    try:
        from pyspark.sql import DataFrame
    except ImportError:
        return False
    if hasattr(DataFrame, "toArrow"):
        return False
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    def to_arrow(df):  # what Spark 4's toArrow does, from 3.5's private batch collection
        batches = df._collect_as_arrow()
        return pa.Table.from_batches(batches) if batches else to_arrow_schema(df.schema).empty_table()

    DataFrame.toArrow = to_arrow
    return True


_SPARK_35 = _spark_35_shims()


@pytest.fixture(scope="session")
def _spark_holder():
    """Stops the shared local SparkSession once, at the end of the test session."""
    yield _SPARK
    session = _SPARK.pop("session", None)
    if session is not None and session.sparkContext._jsc is not None:
        session.stop()


@pytest.fixture
def spark(_spark_holder):
    """One local[2] SparkSession on 127.0.0.1 shared by all tests (made again if a test stopped it)."""
    pytest.importorskip("pyspark")
    session = _spark_holder.get("session")
    if session is None or session.sparkContext._jsc is None:
        from sparknn.spark.session import local_session

        session = local_session("local[2]", "sparknn-tests", **{"spark.default.parallelism": "2",
                                                                  "spark.sql.shuffle.partitions": "4"})
        _spark_holder["session"] = session
    return session


def spark_items(spark, vectors: np.ndarray, ids=None, id_type: str = "bigint", features: str = "vector",
                vector_type: str = "array<float>", partitions: int = 0):
    """A DataFrame (id, features) built from Arrow (no Python rows), features typed as asked:
    array<float>, array<double> or vector (pyspark.ml.linalg dense vectors)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    n, dim = vectors.shape
    ids = np.arange(n) if ids is None else ids
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table({"id": pa.array(ids), features: pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), values)})
    if _SPARK_35:  # no createDataFrame(pyarrow.Table) before Spark 4: via pandas (Arrow-enabled)
        df = spark.createDataFrame(table.to_pandas())
    else:
        df = spark.createDataFrame(table)
    df = df.withColumn("id", F.col("id").cast(id_type))
    if vector_type == "vector":
        from pyspark.ml.functions import array_to_vector

        df = df.withColumn(features, array_to_vector(F.col(features).cast("array<double>")))
    elif vector_type != "array<float>":
        df = df.withColumn(features, F.col(features).cast(vector_type))
    return df.repartition(partitions) if partitions else df
