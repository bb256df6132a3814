"""sparknn.spark on a real standalone cluster: a master and two 1-core workers on 127.0.0.1.

The daemons are started from the jars and ``bin/spark-class`` that the pyspark
package ships (it has no sbin/start-master.sh), in their own process groups,
and stopped at the end even when a test fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import clustered, spark_items

pyspark = pytest.importorskip("pyspark")
import sparknn
from sparknn.spark import KNN
from sparknn.spark.session import local_session

pytestmark = [pytest.mark.cluster, pytest.mark.spark]

SPARK_HOME = os.path.dirname(pyspark.__file__)
STARTUP_SECONDS = 180  # generous: a shared 2-core machine starts three JVMs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return -1


class Cluster:
    """``private_tmp``: each worker (and so its executors and their Python workers) runs in its own
    mount namespace with a private tmpfs over /tmp, holding its work and local dirs: a node that
    shares no disk with the driver or the other worker (needs root, as CI has)."""

    def __init__(self, work: str, private_tmp: bool = False):
        self.work = work
        self.private_tmp = private_tmp
        self.procs = []
        self.port, self.ui_port = _free_port(), _free_port()
        conf_dir = os.path.join(work, "conf")  # empty: no site spark-defaults/spark-env leak in
        os.makedirs(conf_dir)
        self.env = dict(os.environ, SPARK_HOME=SPARK_HOME, SPARK_LOCAL_IP="127.0.0.1", SPARK_CONF_DIR=conf_dir,
                        SPARK_LOG_DIR=os.path.join(work, "logs"), PYSPARK_PYTHON=sys.executable,
                        SPARK_NO_DAEMONIZE="1")

    def _start(self, name: str, *args, private_dir: str | None = None):
        command = [os.path.join(SPARK_HOME, "bin", "spark-class"), *args]
        if private_dir:  # mounted in the new namespace only; the daemon starts inside it
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs -o size=4g tmpfs /tmp && mkdir -p "$0" && exec "$@"', private_dir, *command]
        with open(os.path.join(self.work, f"{name}.log"), "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc))

    def start(self):
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui_port))
        for i in range(2):
            work = f"/tmp/sparknn-node{i}" if self.private_tmp else os.path.join(self.work, f"worker{i}")
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                        "--cores", "1", "--memory", "1g", "--webui-port", str(_free_port()),
                        "--work-dir", work, self.url, private_dir=work if self.private_tmp else None)
        deadline = time.monotonic() + STARTUP_SECONDS
        while _alive_workers(self.ui_port) < 2:
            self._check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"standalone cluster not up after {STARTUP_SECONDS}s; logs in {self.work}")
            time.sleep(0.5)

    def _check_running(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                with open(os.path.join(self.work, f"{name}.log"), errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def stop(self):
        for _, proc in reversed(self.procs):  # each daemon and the executors it forked
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cluster_session(url: str, app_name: str, **conf):
    """A loopback session on the standalone cluster at ``url`` (two 1-core executors), returned once
    both executors have registered."""
    session = local_session(url, app_name, **{
        "spark.executor.cores": "1", "spark.executor.memory": "512m", "spark.cores.max": "2",
        "spark.default.parallelism": "4", "spark.sql.shuffle.partitions": "4", **conf})
    deadline = time.monotonic() + STARTUP_SECONDS
    while session.sparkContext._jsc.sc().getExecutorMemoryStatus().size() < 3:  # driver + 2 executors
        if time.monotonic() > deadline:
            session.stop()
            raise RuntimeError("two executors did not register")
        time.sleep(0.5)
    return session


@pytest.fixture(scope="module")
def cluster_spark(tmp_path_factory, _spark_holder):
    from pyspark.sql import SparkSession

    # One SparkContext per JVM: stop the shared local session; the `spark` fixture remakes it if needed.
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    cluster = Cluster(str(tmp_path_factory.mktemp("standalone")))
    session = None
    try:
        cluster.start()
        session = cluster_session(cluster.url, "sparknn-cluster-test")
        yield session
    finally:
        if session is not None:
            session.stop()
        cluster.stop()


def _in_process(base: np.ndarray, k: int):
    """The self-join computed directly with sparknn.Index (flat, cosine), self excluded."""
    index = sparknn.Index(base.shape[1], "cosine", "flat")
    index.add(base)
    ids, dist = index.search(base, k + 1)
    keep = ids != np.arange(len(base))[:, None]
    return {q: (ids[q][keep[q]][:k], dist[q][keep[q]][:k]) for q in range(len(base))}


def _check(result, expected):
    rows = result.toArrow().to_pylist()
    assert len(rows) == len(expected)
    for r in rows:
        _ids, dist = expected[r["id"]]
        got = r["neighbors"]
        np.testing.assert_allclose([n["distance"] for n in got], dist, atol=1e-5)
        assert r["id"] not in [n["id"] for n in got]


def test_two_executors_match_in_process(cluster_spark, tmp_path):
    spark = cluster_spark
    cwd = spark.sparkContext.parallelize(range(8), 8).map(lambda _: os.getcwd()).distinct().collect()
    assert len(cwd) == 2, f"tasks ran in {cwd}: expected two executors"
    base = clustered(3000, 16, seed=11)
    df = spark_items(spark, base, partitions=4).cache()
    expected = _in_process(base, 10)
    model = KNN(k=10, indexType="flat", featuresCol="vector").fit(df)
    _check(model.similarItems(), expected)
    sharded = KNN(k=10, indexType="flat", featuresCol="vector", numShards=2, indexPath=str(tmp_path)).fit(df)
    assert len(sharded.layout.shards) == 2
    _check(sharded.similarItems(), expected)
    out = sharded.transform(df).toArrow()
    assert out.num_rows == len(base) and out.column_names == ["id", "vector", "neighbors"]


def test_routed_ivf_matches_in_process(cluster_spark, tmp_path):
    """Parts built and searched on two executors give the in-process IVF result for the same centroids."""
    spark = cluster_spark
    base = clustered(3000, 16, seed=12)
    model = KNN(k=10, indexType="ivf", ivfMode="routed", nlist=16, nprobe=3, featuresCol="vector",
                indexPath=str(tmp_path)).fit(
        spark_items(spark, base, partitions=4))
    assert len(model.layout.shards) >= 2
    reference = sparknn.load(os.path.join(str(tmp_path), model.layout.ivf.quantizer), mmap=False)
    reference.add(base)
    ids, dist = reference.search(base, 11, nprobe=3)
    keep = ids != np.arange(len(base))[:, None]
    _check(model.similarItems(), {q: (ids[q][keep[q]][:10], dist[q][keep[q]][:10]) for q in range(len(base))})
