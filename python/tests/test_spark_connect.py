"""KNN / KNNModel and the CLI on a Spark Connect session: a real Connect server (pyspark's own
sbin/start-connect-server.sh and jar) on 127.0.0.1, results equal to the classic session's.

The Connect client runs in a subprocess: once a process has made a remote session, pyspark
treats the whole process as a Connect client (``is_remote()``), which the classic session of
the other tests must not see. A client on a Connect session has no SparkContext: index files
built on the client reach executors as file artifacts (``addArtifacts``), and builds on
executors (numShards > 1, routed ivf) write to ``indexPath``, or without one where the executors see
the client's directory (this local server does), else return their files through Spark.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import clustered, exact_knn

pyspark = pytest.importorskip("pyspark")
pytest.importorskip("grpc")  # the Connect client (pyspark[connect])
if int(pyspark.__version__.split(".")[0]) < 4:
    pytest.skip("the Connect tests run on pyspark 4 (3.5's client lacks addArtifacts(file=True) for "
                "Python tasks)", allow_module_level=True)
if shutil.which("java") is None:
    pytest.skip("no java", allow_module_level=True)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N, DIM, K = 1500, 12, 6
DATA = clustered(N, DIM, 12, seed=11)
QUERIES = clustered(40, DIM, 12, seed=12)
GROUPS = 5

CLIENT = r"""
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq
from pyspark.sql import SparkSession
from sparknn.spark import KNN, KNNModel

url, items, queries, out = sys.argv[1:5]
cases = json.loads(sys.argv[5])
spark = SparkSession.builder.remote(url).getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect"), type(spark)
df, q = spark.read.parquet(items), spark.read.parquet(queries)
report = {}
import sparknn.spark.estimator as estimator
import sparknn.spark.group_plan as group_plan
sees = estimator.executors_see
for name, params in cases.items():
    # "_returned": as where the server's executors do not see this client's directory
    estimator.executors_see = (lambda spark, root: False) if params.pop("_returned", False) else sees
    # "_small": groupCol thresholds scaled down to the data (large groups on shards of their own, in pieces)
    group_plan.SMALL = params.pop("_small", 4096)
    try:
        model = KNN(k=%(k)d, metric="l2", featuresCol="vector", **params).fit(df)
    except Exception as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    model.similarItems().toArrow().sort_by("id").to_pandas().to_parquet(os.path.join(out, name + "-similar.parquet"))
    model.transform(q).select("id", "neighbors").toArrow().sort_by("id").to_pandas().to_parquet(
        os.path.join(out, name + "-transform.parquet"))
    path = os.path.join(out, name + "-model")
    model.write().overwrite().save(path)
    uri = "viewfs://sparknn/store/" + name  # reached through the server's Hadoop FileSystem only
    model.write().save(uri)
    if name == "flat":  # a second version replaces the first (removed with Connect's own means)
        model.write().overwrite().save(uri)
    report[name] = {"mode": model.layout.mode, "path": path, "uri": uri, "shared": model._index_files().shared,
                    "pieces": [list(p) for p in model.layout.group_pieces],
                    "tuning": model.tuning and [model.tuning.param, model.tuning.value, model.tuning.recall],
                    "nprobe": model.getNprobe()}
spark.stop()
# A fresh session loads every saved model and answers the same.
spark = SparkSession.builder.remote(url).getOrCreate()
for name, r in report.items():
    if "path" in r:
        loaded = KNNModel.load(r["path"])
        loaded.similarItems().toArrow().sort_by("id").to_pandas().to_parquet(
            os.path.join(out, name + "-loaded.parquet"))
        KNNModel.load(r["uri"]).similarItems().toArrow().sort_by("id").to_pandas().to_parquet(
            os.path.join(out, name + "-loaded-uri.parquet"))
spark.stop()
print(json.dumps(report))
""" % {"k": K}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """A Spark Connect server in local[2] mode, listening on 127.0.0.1 only."""
    home = os.path.dirname(pyspark.__file__)
    work = tmp_path_factory.mktemp("connect")
    port = _free_port()
    env = {**os.environ, "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOG_DIR": str(work / "logs"), "SPARK_PID_DIR": str(work / "pids"),
           "SPARK_IDENT_STRING": f"sparknn-test-{port}"}
    conf = {"spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port),
            "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4", "spark.local.dir": str(work / "local"),
            # Storage only the server's Hadoop FileSystem resolves (the client cannot open it).
            "spark.hadoop.fs.viewfs.mounttable.sparknn.link./store": f"file://{work / 'store'}"}
    args = [os.path.join(home, "sbin", "start-connect-server.sh"), "--master", "local[2]"]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    subprocess.run(args, env=env, check=True, capture_output=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    logs = "".join(p.read_text()[-3000:] for p in (work / "logs").glob("*.out"))
                    pytest.fail(f"the Connect server did not listen on 127.0.0.1:{port}: {logs}")
                time.sleep(1)
        yield f"sc://127.0.0.1:{port}", work
    finally:
        subprocess.run([os.path.join(home, "sbin", "stop-connect-server.sh")], env=env, capture_output=True)


def _table(path: str) -> list:
    return pq.read_table(path).to_pylist()


def _neighbour_ids(rows) -> np.ndarray:
    return np.array([[n["id"] for n in r["neighbors"]] for r in rows])


@pytest.fixture(scope="module")
def connect_run(connect_server, tmp_path_factory):
    url, _ = connect_server
    work = tmp_path_factory.mktemp("connect-client")
    items, queries = str(work / "items.parquet"), str(work / "queries.parquet")
    vec = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM).cast(  # noqa: E731
        pa.list_(pa.float32()))
    # "g": the group of groupCol (the other cases ignore it)
    pq.write_table(pa.table({"id": pa.array(np.arange(N) * 3 + 5), "vector": vec(DATA),
                             "g": pa.array((np.arange(N) * 3 + 5) % GROUPS)}), items)
    pq.write_table(pa.table({"id": pa.array(np.arange(len(QUERIES))), "vector": vec(QUERIES),
                             "g": pa.array(np.arange(len(QUERIES)) % GROUPS)}), queries)
    shared = str(work / "shared")
    cases = {
        "flat": {"indexType": "flat"},
        "hnsw": {"indexType": "hnsw", "efSearch": 200},
        "ivf": {"indexType": "ivf", "nlist": 16, "nprobe": 16},
        "sharded": {"indexType": "flat", "numShards": 2, "indexPath": shared + "/sharded"},
        "routed": {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16,
                   "indexPath": shared + "/routed"},
        "routed_no_path": {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16},
        "routed_returned": {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16, "_returned": True},
        # nprobe chosen for a recall target, the quantizer shipped to the truth job's tasks
        "routed_tuned": {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "targetRecall": 0.95,
                         "_returned": True},
        # files written at a URI only the server resolves; the parts stay there
        "routed_uri": {"indexType": "ivf", "ivfMode": "routed", "nlist": 16, "nprobe": 16,
                       "indexPath": "viewfs://sparknn/store/index-routed"},
        "grouped": {"indexType": "flat", "groupCol": "g"},  # neighbours within each item's group
        # every group (300 items) larger than a shard's share (1500 / 8): split into two pieces
        "grouped_pieces": {"indexType": "flat", "groupCol": "g", "numShards": 8, "_small": 100},
    }
    out = str(work / "out")
    os.makedirs(out)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", CLIENT, url, items, queries, out, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out, items


@pytest.mark.parametrize("case", ["flat", "hnsw", "ivf", "sharded", "routed", "routed_no_path", "routed_returned",
                                  "routed_uri"])
def test_connect_fit_transform_similar_save_load_equal_exact(connect_run, case):
    report, out, _ = connect_run
    assert "error" not in report[case], report[case]
    assert report[case]["mode"] == {"sharded": "shards"}.get(case, "routed" if case.startswith("routed") else "single")
    assert report[case]["shared"] == (case in ("sharded", "routed", "routed_no_path")), "where the files are opened"
    ids = np.arange(N) * 3 + 5
    truth, _ = exact_knn(DATA, DATA, K + 1, "l2")
    expected = ids[truth[:, 1:]]  # itself excluded (clustered data: no exact ties)
    similar = _table(os.path.join(out, f"{case}-similar.parquet"))
    assert [r["id"] for r in similar] == ids.tolist()
    found = _neighbour_ids(similar)
    hits = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, expected)])
    assert hits == 1.0 if case != "hnsw" else hits >= 0.98, hits
    loaded = _table(os.path.join(out, f"{case}-loaded.parquet"))
    assert loaded == similar, "a model saved by one Connect session answers the same in another"
    assert _table(os.path.join(out, f"{case}-loaded-uri.parquet")) == similar, "saved at a Hadoop URI"
    q_truth, _ = exact_knn(DATA, QUERIES, K, "l2")
    transformed = _neighbour_ids(_table(os.path.join(out, f"{case}-transform.parquet")))
    q_hits = np.mean([len(set(a) & set(b)) / K for a, b in zip(transformed, ids[q_truth])])
    assert q_hits >= (1.0 if case != "hnsw" else 0.98), q_hits


def test_connect_recall_target_chooses_nprobe(connect_run):
    report, out, _ = connect_run
    assert "error" not in report["routed_tuned"], report["routed_tuned"]
    param, value, measured = report["routed_tuned"]["tuning"]
    assert param == "nprobe" and value == report["routed_tuned"]["nprobe"] and measured >= 0.95
    ids = np.arange(N) * 3 + 5
    truth, _ = exact_knn(DATA, DATA, K + 1, "l2")
    found = _neighbour_ids(_table(os.path.join(out, "routed_tuned-similar.parquet")))
    hits = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, ids[truth[:, 1:]])])
    assert hits >= 0.93, hits


@pytest.mark.parametrize("case", ["grouped", "grouped_pieces"])
def test_connect_grouped_similar_transform_save_load_exact_per_group(connect_run, case):
    report, out, _ = connect_run
    assert "error" not in report[case], report[case]
    assert report[case]["pieces"] == ([[g, 8 + 2 * g, 2] for g in range(GROUPS)] if case == "grouped_pieces" else [])
    ids = np.arange(N) * 3 + 5
    groups = ids % GROUPS
    similar = _table(os.path.join(out, f"{case}-similar.parquet"))
    assert [r["id"] for r in similar] == ids.tolist()
    for i, row in enumerate(similar):
        members = np.flatnonzero((groups == groups[i]) & (np.arange(N) != i))
        truth, _ = exact_knn(DATA[members], DATA[i:i + 1], K, "l2")
        assert sorted(n["id"] for n in row["neighbors"]) == sorted(ids[members[truth[0]]].tolist()), i
    assert _table(os.path.join(out, f"{case}-loaded.parquet")) == similar
    assert _table(os.path.join(out, f"{case}-loaded-uri.parquet")) == similar
    for j, row in enumerate(_table(os.path.join(out, f"{case}-transform.parquet"))):
        members = np.flatnonzero(groups == j % GROUPS)
        truth, _ = exact_knn(DATA[members], QUERIES[j:j + 1], K, "l2")
        assert sorted(n["id"] for n in row["neighbors"]) == sorted(ids[members[truth[0]]].tolist()), j


def test_connect_overwrite_at_a_uri_keeps_one_committed_version(connect_server, connect_run):
    _, work = connect_server
    root = work / "store" / "flat" / "sparknn"
    committed = [v for v in os.listdir(root) if any(n.startswith("part-") and (root / v / "record" / n).stat().st_size
                                                    for n in os.listdir(root / v / "record"))]
    assert len(committed) == 1, os.listdir(root)


def test_connect_results_equal_the_classic_sessions(connect_run, spark):
    """The same fit on the classic local session gives the same neighbours, row for row."""
    from sparknn.spark import KNN

    _, out, items = connect_run
    df = spark.read.parquet(items)
    for case, params in (("flat", {"indexType": "flat"}), ("ivf", {"indexType": "ivf", "nlist": 16, "nprobe": 16})):
        classic = KNN(k=K, metric="l2", featuresCol="vector", **params).fit(df).similarItems()
        rows = sorted(classic.toArrow().to_pylist(), key=lambda r: r["id"])
        assert _neighbour_ids(rows).tolist() == _neighbour_ids(_table(os.path.join(out, f"{case}-similar.parquet"))
                                                                ).tolist(), case


def test_cli_similar_on_a_connect_server(connect_server, connect_run, tmp_path):
    url, _ = connect_server
    _, _, items = connect_run
    out = tmp_path / "similar.parquet"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-m", "sparknn", "similar", items, "-o", str(out), "--k", str(K),
                           "--metric", "l2", "--index", "flat", "--spark", url, "-q"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"])
    truth, _ = exact_knn(DATA, DATA, K + 1, "l2")
    ids = np.arange(N) * 3 + 5
    assert _neighbour_ids(rows).tolist() == ids[truth[:, 1:]].tolist()
