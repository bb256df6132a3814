"""A SparkSession that talks on loopback only, for tests, the CLI and notebooks."""

from __future__ import annotations

import os
import sys


def local_session(master: str = "local[2]", app_name: str = "sparknn", **conf):
    """Builds (or returns the active) SparkSession bound to 127.0.0.1.

    The driver and its Python workers use this interpreter (so the installed
    ``sparknn`` is importable in tasks) and nothing listens on a public
    interface. ``conf`` entries are Spark settings with dots written as given,
    e.g. ``local_session(**{"spark.task.cpus": "2"})``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()
