"""sparknn.spark on a cluster whose nodes share no disk: a standalone master and two workers on
127.0.0.1, each worker in its own mount namespace with a private tmpfs over /tmp (its work and
local dirs), the driver outside. No executor sees the driver's files or the other's.

Every mode runs there: builds on the driver (flat, hnsw, ivf; files shipped with addFile), builds
on executors (numShards > 1, routed ivf) whose files come back through Spark, transform,
similarItems, save and load in a new session, at a driver path or a Hadoop URI, and Pipelines.
"""

import os
import shutil
import subprocess
import tempfile
import time

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


def _session(url: str, **conf):
    # Two "hosts" on one address would read each other's shuffle files from disk.
    return cluster_session(url, "sparknn-noshare-test", **{"spark.shuffle.readHostLocalDisk": "false", **conf})


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


@pytest.fixture(scope="module")
def store():
    """A Hadoop URI every process reaches through Spark (a viewfs mount on a directory outside the
    workers' private /tmp): the stand-in for HDFS or an object store."""
    backing = tempfile.mkdtemp(prefix="sparknn-noshare-store-", dir="/var/tmp")
    yield "viewfs://sparknn/store", backing
    shutil.rmtree(backing, ignore_errors=True)


@pytest.mark.parametrize("params", [{"indexType": "flat", "numShards": 2},
                                    {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16,
                                     "targetPartBytes": 40_000}],
                         ids=["sharded", "routed"])
def test_builds_on_executors_return_their_files_through_spark(noshare, store, tmp_path, params):
    """No indexPath: each build task writes on its own node and its files come back through Spark;
    the model answers exactly, saves to a driver path and to a Hadoop URI, a Pipeline too, and a
    fresh session loads each. An indexPath the executors do not see is refused with the reason."""
    from pyspark.ml import Pipeline, PipelineModel

    uri, backing = store
    name = "sharded" if "numShards" in params else "routed"
    mount = {"spark.hadoop.fs.viewfs.mounttable.sparknn.link./store": f"file://{backing}"}
    spark = _session(noshare.url, **mount)
    truth, _ = exact_knn(BASE, BASE, K + 1, "cosine")
    expected = {i: truth[i][truth[i] != i][:K].tolist() for i in range(len(BASE))}
    try:
        df = spark_items(spark, BASE, partitions=4)
        with pytest.raises(sparknn.InvalidArgumentError, match=r"executors do not see that directory.*indexPath"):
            KNN(k=K, featuresCol="vector", indexPath=str(tmp_path / "driver-only"), **params).fit(df)
        assert not os.listdir(tmp_path / "driver-only"), "a refused fit leaves no files"

        model = KNN(k=K, featuresCol="vector", **params).fit(df)
        assert model.layout.mode == ("shards" if name == "sharded" else "routed")
        assert len(model.layout.shards) >= 2
        got = _rows(model.similarItems())
        hits = np.mean([len(set(got[i]) & set(expected[i])) / K for i in expected])
        assert hits >= 0.999, hits
        transformed = _rows(model.transform(spark_items(spark, BASE[:50], partitions=2)))
        assert all(transformed[i][0] == i for i in range(50))
        model.write().save(str(tmp_path / "model"))
        model.write().save(f"{uri}/{name}")
        Pipeline(stages=[KNN(k=K, featuresCol="vector", **params)]).fit(df).write().save(f"{uri}/{name}-pipeline")
    finally:
        spark.stop()

    spark = _session(noshare.url, **mount)  # a fresh session (and fresh executors)
    try:
        assert _rows(KNNModel.load(str(tmp_path / "model")).similarItems()) == got
        assert _rows(KNNModel.load(f"{uri}/{name}").similarItems()) == got
        (stage,) = PipelineModel.load(f"{uri}/{name}-pipeline").stages
        assert _rows(stage.similarItems()) == got
    finally:
        spark.stop()

