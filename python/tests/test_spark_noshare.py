"""sparknn.spark on a cluster whose nodes share no disk: a standalone master and two workers on
127.0.0.1, each worker in its own mount namespace with a private tmpfs over /tmp (its work and
local dirs), the driver outside. No executor sees the driver's files or the other's.

What runs there today: every build on the driver (flat, hnsw, ivf; files shipped with addFile),
transform, similarItems, save and load in a new session. Builds on executors (numShards > 1,
routed ivf) need a directory every node shares: without one, fit refuses with the reason
before any data moves, instead of an executor's I/O error (issue 13 makes them run there).
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import clustered, exact_knn, spark_items
from test_spark_cluster import Cluster, cluster_session

pyspark = pytest.importorskip("pyspark")
import sparknn
from sparknn.spark import KNN, KNNModel

pytestmark = [pytest.mark.cluster, pytest.mark.spark]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /tmp"], capture_output=True)
    return done.returncode == 0


if not _can_unshare():
    pytest.skip("needs root and unshare --mount (private /tmp per worker)", allow_module_level=True)

BASE = clustered(2000, 16, seed=21)
K = 8


def _session(url: str):
    # Two "hosts" on one address would read each other's shuffle files from disk.
    return cluster_session(url, "sparknn-noshare-test", **{"spark.shuffle.readHostLocalDisk": "false"})


@pytest.fixture(scope="module")
def noshare(tmp_path_factory, _spark_holder):
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    cluster = Cluster(str(tmp_path_factory.mktemp("noshare")), private_tmp=True)
    try:
        cluster.start()
        yield cluster
    finally:
        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
        cluster.stop()


def _rows(df):
    return {r["id"]: [n["id"] for n in r["neighbors"]] for r in df.toArrow().to_pylist()}


def test_driver_builds_save_and_load_on_nodes_that_share_no_disk(noshare, tmp_path):
    spark = _session(noshare.url)
    marker = tmp_path / "driver-only"
    marker.write_text("x")
    seen = spark.sparkContext.parallelize(range(4), 4).map(lambda _: os.path.exists(str(marker))).collect()
    assert not any(seen), "the executors must not see the driver's files"
    dirs = spark.sparkContext.parallelize(range(8), 8).map(lambda _: os.getcwd()).distinct().collect()
    assert len(dirs) == 2, dirs

    df = spark_items(spark, BASE, partitions=4).cache()
    truth, _ = exact_knn(BASE, BASE, K + 1, "cosine")
    expected = {i: truth[i][truth[i] != i][:K].tolist() for i in range(len(BASE))}
    queries = spark_items(spark, BASE[:50], partitions=2)
    results = {}
    for kind, params in (("flat", {}), ("hnsw", {"efSearch": 200}), ("ivf", {"nlist": 16, "nprobe": 16})):
        model = KNN(k=K, indexType=kind, featuresCol="vector", **params).fit(df)
        got = _rows(model.similarItems())
        hits = np.mean([len(set(got[i]) & set(expected[i])) / K for i in expected])
        assert hits >= (0.98 if kind == "hnsw" else 0.999), (kind, hits)
        transformed = _rows(model.transform(queries))
        assert all(transformed[i][0] == i for i in range(50)), kind  # each query's nearest is itself
        model.write().save(str(tmp_path / kind))
        results[kind] = got
    spark.stop()

    spark = _session(noshare.url)  # a fresh session (and fresh executors) loads the saved models
    try:
        for kind, got in results.items():
            assert _rows(KNNModel.load(str(tmp_path / kind)).similarItems()) == got, kind
    finally:
        spark.stop()


@pytest.mark.parametrize("params", [{"indexType": "flat", "numShards": 2},
                                    {"indexType": "ivf", "ivfMode": "routed", "nlist": 16}],
                         ids=["sharded", "routed"])
def test_builds_on_executors_without_a_shared_directory_are_refused_with_the_reason(noshare, tmp_path, params):
    spark = _session(noshare.url)
    try:
        df = spark_items(spark, BASE, partitions=4)
        for index_path in (None, str(tmp_path / "driver-only")):
            kw = {"indexPath": index_path} if index_path else {}
            with pytest.raises(sparknn.InvalidArgumentError, match=r"executors do not see that directory.*indexPath"):
                KNN(k=K, featuresCol="vector", **params, **kw).fit(df)
        assert not os.listdir(tmp_path / "driver-only"), "a refused fit leaves no files"
    finally:
        spark.stop()
