"""What the Spark layer asks of its session, answered alike on classic and Spark Connect sessions.

A Spark Connect session (Spark 4 thin clients, Databricks shared and serverless
compute) has no ``SparkContext``, no RDDs and no py4j gateway: the client talks
to a remote driver over gRPC. Everything the layer needs from the session goes
through here: configuration, parallelism, shipping a file to executors, the
driver's heap. Nothing else in ``sparknn.spark`` touches ``sparkContext``.
"""

from __future__ import annotations


def is_connect(spark) -> bool:
    """True for a Spark Connect session (``pyspark.sql.connect``), False for a classic one."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def conf(spark, key: str, default: str | None = None) -> str | None:
    """A Spark setting: the SparkConf on a classic session (spark.local.dir, spark.executor.*), the
    session's configuration (which starts as the driver's SparkConf) on Connect."""
    if is_connect(spark):
        return spark.conf.get(key, default)
    return spark.sparkContext.getConf().get(key, default)


def master(spark) -> str:
    return conf(spark, "spark.master", "") or ""


def is_local_mode(spark) -> bool:
    """Local mode: the executors are threads of the driver, on the driver's machine."""
    m = master(spark)
    return m == "local" or m.startswith("local[")


def default_parallelism(spark) -> int:
    """Tasks Spark runs at once by default (sc.defaultParallelism)."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    cached = getattr(spark, "_sparknn_parallelism", None)
    if cached is None:
        given = conf(spark, "spark.default.parallelism")
        if given:
            cached = int(given)
        else:  # spark.range without a partition count splits into defaultParallelism partitions
            from pyspark.sql import functions as F

            cached = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).distinct().count()
        spark._sparknn_parallelism = cached
    return cached


def application_key(spark) -> tuple:
    """Identifies where shipped files are valid: the application, and on Connect the session
    (artifacts are per session)."""
    if is_connect(spark):
        return conf(spark, "spark.app.id"), spark.session_id
    return spark.sparkContext.applicationId, None


def ship(spark, path: str) -> None:
    """Makes a local file of the driver (the client, on Connect) available to every task as
    ``SparkFiles.get(basename)``: ``SparkContext.addFile``, or a file artifact on Connect."""
    if is_connect(spark):
        spark.addArtifacts(path, file=True)
    else:
        spark.sparkContext.addFile(path)


def driver_heap(spark) -> int | None:
    """Bytes of the driver JVM's heap, asked of the JVM; None on Connect, which cannot ask."""
    if is_connect(spark):
        return None
    return int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())


def task_cpus(spark) -> int:
    return int(conf(spark, "spark.task.cpus", "1"))


def set_quiet(spark) -> None:
    """Only errors in the driver's log (classic sessions; a Connect server's log is its own)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel("ERROR")


def local_files_visible(spark) -> bool:
    """Can tasks open the driver's local files in place? Only in classic local mode: a Connect
    client need not run on the driver's machine, whatever the master."""
    return not is_connect(spark) and is_local_mode(spark)
