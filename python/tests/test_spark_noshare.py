"""sparknn.spark on a cluster whose nodes share no disk: a standalone master and two workers on
127.0.0.1, each worker in its own mount namespace with a private tmpfs over /tmp (its work and
local dirs), the driver outside. No executor sees the driver's files or the other's.

Every mode runs there: builds on the driver (flat, hnsw, ivf; files shipped with addFile), builds
on executors (numShards > 1, routed ivf) whose files come back through Spark, transform,
similarItems, save and load in a new session, at a driver path or a Hadoop URI, and Pipelines.
"""

import json
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
from sparknn.spark import KNN, KNNModel, group_plan

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


def test_driver_builds_save_and_load_on_nodes_that_share_no_disk(noshare, store, tmp_path):
    from pyspark.ml import PipelineModel

    uri, backing = store
    mount = {"spark.hadoop.fs.viewfs.mounttable.noshare.link./store": f"file://{backing}"}
    spark = _session(noshare.url, **mount)
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
    results, models = {}, {}
    for kind, params in (("flat", {}), ("hnsw", {"efSearch": 200}), ("ivf", {"nlist": 16, "nprobe": 16})):
        model = KNN(k=K, indexType=kind, featuresCol="vector", **params).fit(df)
        got = _rows(model.similarItems())
        hits = np.mean([len(set(got[i]) & set(expected[i])) / K for i in expected])
        assert hits >= (0.98 if kind == "hnsw" else 0.999), (kind, hits)
        transformed = _rows(model.transform(queries))
        assert all(transformed[i][0] == i for i in range(50)), kind  # each query's nearest is itself
        model.write().save(str(tmp_path / kind))
        model.write().save(f"{uri}/driver-{kind}")
        results[kind] = got
        models[kind] = model
    # a Pipeline of the fitted model (Pipeline.fit is KNN.fit: refitting would only cost time)
    PipelineModel(stages=[models["flat"]]).write().save(f"{uri}/driver-pipeline")
    spark.stop()

    spark = _session(noshare.url, **mount)  # a fresh session (and fresh executors) loads the saved models
    try:
        for kind, got in results.items():
            assert _rows(KNNModel.load(str(tmp_path / kind)).similarItems()) == got, kind
            assert _rows(KNNModel.load(f"{uri}/driver-{kind}").similarItems()) == got, kind
        (stage,) = PipelineModel.load(f"{uri}/driver-pipeline").stages
        assert _rows(stage.similarItems()) == results["flat"]
    finally:
        spark.stop()


@pytest.fixture(scope="module")
def store():
    """A Hadoop URI every process reaches through Spark (a viewfs mount on a directory outside the
    workers' private /tmp): the stand-in for HDFS or an object store."""
    backing = tempfile.mkdtemp(prefix="sparknn-noshare-store-", dir="/var/tmp")
    yield "viewfs://noshare/store", backing
    shutil.rmtree(backing, ignore_errors=True)


@pytest.mark.parametrize("params", [{"indexType": "flat", "numShards": 2},
                                    {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16,
                                     "targetPartBytes": 40_000}],
                         ids=["sharded", "routed"])
def test_builds_on_executors_return_their_files_through_spark(noshare, store, tmp_path, params):
    """No indexPath: each build task writes on its own node and its files come back through Spark
    (with an indexPath every node mounts, here /var/tmp, they are written and opened there; with an
    indexPath URI they are written there through Spark, and a routed model's parts stay there); the
    model answers exactly, saves to a driver path and to a Hadoop URI, a Pipeline too, and a fresh
    session loads each. An indexPath the executors do not see is refused with the reason.

    The three places of the files are fitted in one session and loaded in one fresh session (a
    session's executors start cold: two sessions per place took 1.8 times as long)."""
    from pyspark.ml import PipelineModel

    uri, backing = store
    mode = "sharded" if "numShards" in params else "routed"
    index_path = {"none": None, "shared": tempfile.mkdtemp(prefix="sparknn-noshare-index-", dir="/var/tmp"),
                  "uri": f"{uri}/index-{mode}"}
    mount = {"spark.hadoop.fs.viewfs.mounttable.noshare.link./store": f"file://{backing}"}
    truth, _ = exact_knn(BASE, BASE, K + 1, "cosine")
    expected = {i: truth[i][truth[i] != i][:K].tolist() for i in range(len(BASE))}
    got, transformed = {}, {}
    try:
        spark = _session(noshare.url, **mount)
        try:
            df = spark_items(spark, BASE, partitions=4)
            with pytest.raises(sparknn.InvalidArgumentError, match=r"executors do not see that directory.*indexPath"):
                KNN(k=K, featuresCol="vector", **{**params, "indexPath": str(tmp_path / "driver-only")}).fit(df)
            assert not os.listdir(tmp_path / "driver-only"), "a refused fit leaves no files"
            queries = spark_items(spark, BASE[:50], partitions=2)
            for where, path in index_path.items():
                placed = params if path is None else {**params, "indexPath": path}
                model = KNN(k=K, featuresCol="vector", **placed).fit(df)
                assert model.layout.mode == ("shards" if mode == "sharded" else "routed"), where
                assert len(model.layout.shards) >= 2, where
                assert model._index_files().shared == (where == "shared"), where
                assert (model.layout.chunks is not None) == (where == "uri" and mode == "routed"), where
                got[where] = _rows(model.similarItems())
                hits = np.mean([len(set(got[where][i]) & set(expected[i])) / K for i in expected])
                assert hits >= 0.999, (where, hits)
                transformed[where] = _rows(model.transform(queries))
                assert all(transformed[where][i][0] == i for i in range(50)), where
                model.write().save(str(tmp_path / f"model-{where}"))
                model.write().save(f"{uri}/{mode}-{where}")
                # saved a second time, in a Pipeline
                PipelineModel(stages=[model]).write().save(f"{uri}/{mode}-{where}-pipeline")
        finally:
            spark.stop()

        spark = _session(noshare.url, **mount)  # a fresh session (and fresh executors)
        try:
            queries = spark_items(spark, BASE[:50], partitions=2)
            for where in index_path:
                assert _rows(KNNModel.load(str(tmp_path / f"model-{where}")).similarItems()) == got[where], where
                at_uri = KNNModel.load(f"{uri}/{mode}-{where}")
                # A routed model's parts stay at the URI and reach only the executors that search them.
                assert (at_uri.layout.chunks is not None) == (mode == "routed"), where
                assert _rows(at_uri.similarItems()) == got[where], where
                assert _rows(at_uri.transform(queries)) == transformed[where], where
                (stage,) = PipelineModel.load(f"{uri}/{mode}-{where}-pipeline").stages
                assert _rows(stage.similarItems()) == got[where], where
        finally:
            spark.stop()
    finally:
        shutil.rmtree(index_path["shared"], ignore_errors=True)


def test_grouped_model_on_nodes_that_share_no_disk(noshare, store, monkeypatch):
    """groupCol on the two-worker cluster, every shape of group (thresholds scaled down to the
    data): small groups in hashed shards (exact), a large group on a shard of its own and one split
    into pieces (ivf, recall >= 0.95). The shards come back through Spark, and the model saved at
    a URI answers the same in a fresh session."""
    from pyspark.sql import functions as F

    monkeypatch.setattr(group_plan, "SMALL", 100)
    uri, backing = store
    mount = {"spark.hadoop.fs.viewfs.mounttable.noshare.link./store": f"file://{backing}"}
    groups = np.where(np.arange(len(BASE)) < 1200, 0, np.where(np.arange(len(BASE)) < 1500, 1,
                                                               2 + np.arange(len(BASE)) % 7))
    spark = _session(noshare.url, **mount)
    try:
        df = spark_items(spark, BASE, partitions=4).withColumn(
            "g", F.when(F.col("id") < 1200, 0).when(F.col("id") < 1500, 1).otherwise(2 + F.col("id") % 7))
        model = KNN(k=K, featuresCol="vector", indexType="ivf", nprobe=8, groupCol="g", numShards=2).fit(df)
        assert [(v, c) for v, _, c in model.layout.group_pieces] == [(0, 2), (1, 1)]
        got = _rows(model.similarItems())
        queries = spark_items(spark, BASE[:1500:10], ids=list(range(0, 1500, 10)), partitions=2).withColumn(
            "g", F.when(F.col("id") < 1200, 0).otherwise(1))
        transformed = _rows(model.transform(queries))
        model.write().save(f"{uri}/grouped")
    finally:
        spark.stop()
    hits = {"small": [], "large": []}
    for i in range(len(BASE)):
        members = np.flatnonzero((groups == groups[i]) & (np.arange(len(BASE)) != i))
        truth, _ = exact_knn(BASE[members], BASE[i:i + 1], K, "cosine")
        hits["small" if groups[i] >= 2 else "large"].append(len(set(got[i]) & set(members[truth[0]].tolist())) / K)
    assert min(hits["small"]) == 1.0 and np.mean(hits["large"]) >= 0.95, {c: np.mean(h) for c, h in hits.items()}
    assert sorted(transformed) == list(range(0, 1500, 10))
    assert np.mean([transformed[i][0] == i for i in transformed]) >= 0.95  # each query is an item of its group
    spark = _session(noshare.url, **mount)
    try:
        assert _rows(KNNModel.load(f"{uri}/grouped").similarItems()) == got
    finally:
        spark.stop()


# -- faults: a routed self-join survives lost executors, crashed Python workers and speculation ----
FAULT_DATA = clustered(60_000, 32, 64, seed=5)
FAULT_PARAMS = {"indexType": "ivf", "ivfMode": "routed", "nlist": 64, "nprobe": 6, "targetPartBytes": 2_000_000,
                "k": K, "featuresCol": "vector", "metric": "l2"}


def _procs():
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(pid)] = (ppid, cmd)
    return out


def _executors(procs, app_id):
    return [pid for pid, (_, cmd) in procs.items() if "CoarseGrainedExecutorBackend" in cmd and app_id in cmd]


def _python_workers(procs, app_id):
    """Python workers forked by the executors' pyspark daemons (not the daemons themselves)."""
    daemons = {pid for pid, (ppid, cmd) in procs.items() if "pyspark.daemon" in cmd
               and ppid in _executors(procs, app_id)}
    return [pid for pid, (ppid, _) in procs.items() if ppid in daemons]


def _executor_of(procs, worker):
    daemon = procs.get(worker, (None,))[0]
    return procs.get(daemon, (None,))[0]


def _building(worker) -> bool:
    """A Python worker running a build task: its own scratch directory (named with its pid, seen
    through its node's mounts) exists. A killed build leaves its directory behind, so the pid, not
    the bare presence of one, tells the live build."""
    import glob

    return bool(glob.glob(f"/proc/{worker}/root/tmp/**/sparknn-build-{worker}-*", recursive=True))


def _searching(pid) -> bool:
    """A Python worker that has a routed part's index file mapped (the search stage)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("-part-" in line and line.rstrip().endswith(".snn") for line in f)
    except OSError:
        return False


def _run_with_fault(url, fault):
    """Fits the routed model and collects its self-join while each fault of ``fault`` (None,
    "speculation", or (stage, target) pairs, one per stage) strikes once, in order; returns (rows,
    what was killed, how many tasks failed as their Python worker crashed, model layout, names under
    its root)."""
    import threading

    events = tempfile.mkdtemp(prefix="sparknn-events-")
    # The event log keeps every task's end, of every stage attempt: a lost executor makes the stage
    # run again as a new attempt, whose counts (all the status tracker shows) start again at zero.
    conf = {"spark.task.maxFailures": "8", "spark.eventLog.enabled": "true", "spark.eventLog.dir": events,
            "spark.eventLog.compress": "false"}
    if fault == "speculation":
        conf.update({"spark.speculation": "true", "spark.speculation.interval": "20ms",
                     "spark.speculation.multiplier": "1.01", "spark.speculation.quantile": "0.1",
                     "spark.speculation.minTaskRuntime": "0ms"})
    spark = _session(url, **conf)
    sc = spark.sparkContext
    app_id, killed, done = sc.applicationId, [], threading.Event()

    def victims(stage, target):
        procs = _procs()
        if stage == "build":
            workers = [w for w in _python_workers(procs, app_id) if _building(w)]
            return workers if target == "python" else list({_executor_of(procs, w) for w in workers} - {None})
        workers = [w for w in _python_workers(procs, app_id) if _searching(w)]
        return workers if target == "python" else list({_executor_of(procs, w) for w in workers} - {None})

    def strike():
        for stage, target in fault:
            while not done.is_set():
                found = victims(stage, target)
                if found:
                    os.kill(found[0], 9)
                    killed.append((stage, target, found[0]))
                    break
                time.sleep(0.005)

    try:
        try:
            df = spark_items(spark, FAULT_DATA, partitions=4)
            striker = threading.Thread(target=strike, daemon=True) if fault and fault != "speculation" else None
            if striker:
                striker.start()
            model = KNN(**FAULT_PARAMS).fit(df)
            rows = model.similarItems().toArrow().to_pylist()
            done.set()
            layout = model.layout
            names = sorted(os.listdir(layout.root))
        finally:
            done.set()
            spark.stop()
        return rows, killed, _python_crashes(events), layout, names  # (the log is whole once stopped)
    finally:
        shutil.rmtree(events, ignore_errors=True)


def _python_crashes(events: str) -> int:
    """Tasks that ended failed because their Python worker died, from the event logs under ``events``."""
    crashes = 0
    for name in (os.path.join(d, f) for d, _, files in os.walk(events) for f in files):  # Spark 4 rolls them
        with open(name) as f:
            for line in f:
                if '"SparkListenerTaskEnd"' in line:
                    reason = json.loads(line).get("Task End Reason", {})
                    crashes += reason.get("Reason") == "ExceptionFailure" and \
                        "Python worker exited unexpectedly" in reason.get("Description", "")
    return crashes


@pytest.fixture(scope="module")
def clean_run(noshare):
    rows, _, _, layout, names = _run_with_fault(noshare.url, None)
    return {r["id"]: [n["id"] for n in r["neighbors"]] for r in rows}


@pytest.mark.slow
@pytest.mark.parametrize("fault", [(("build", "executor"), ("search", "python")),
                                   (("build", "python"), ("search", "executor")), "speculation"],
                         ids=lambda f: f if isinstance(f, str) else "+".join("-".join(one) for one in f))
def test_routed_self_join_survives_faults(noshare, clean_run, fault):
    """Each kind of fault (a lost executor, a crashed Python worker) strikes in each stage (build,
    search); two strike in one run."""
    rows, killed, crashes, layout, names = _run_with_fault(noshare.url, fault)
    if fault != "speculation":
        assert [k[:2] for k in killed] == list(fault), f"the faults {fault} did not all find their target: {killed}"
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(FAULT_DATA), "exactly one row per item"
    got = {r["id"]: [n["id"] for n in r["neighbors"]] for r in rows}
    assert got == clean_run, "the same neighbours as a clean run"
    assert names == sorted(layout.files()), "no stray or half-written file beside the model's"
    if fault != "speculation":
        assert crashes >= 1, "the killed Python worker's task failed and was retried"
