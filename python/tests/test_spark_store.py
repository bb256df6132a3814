"""Models at a URI only Spark's Hadoop FileSystem resolves (issue 13, "storage through Spark").

The store is ``viewfs://sparknn/store/...``: Hadoop's view filesystem mounted (in the session's
Hadoop configuration) on a local directory. Python cannot open a viewfs: path, so every byte of
a save or a load must go through Spark's readers and writers; the tests also run with the
working directory in an empty temporary one and check that nothing named like the URI appears
there (what Python file I/O on such a path would create).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from conftest import clustered, spark_items

pyspark = pytest.importorskip("pyspark")
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn.spark import KNN, KNNModel

pytestmark = pytest.mark.spark

N, DIM, K = 600, 8, 4
MOUNT = "spark.hadoop.fs.viewfs.mounttable.sparknn.link./store"


@pytest.fixture
def store(spark, tmp_path, monkeypatch):
    """(URI prefix, the local directory behind it); the test runs in an empty working directory."""
    backing = tmp_path / "backing"
    backing.mkdir()
    # A fresh mount per test: the viewfs instance (cached per scheme and authority) is made anew.
    spark.sparkContext._jsc.hadoopConfiguration().set(MOUNT[len("spark.hadoop."):], f"file://{backing}")
    spark.sparkContext._jvm.org.apache.hadoop.fs.FileSystem.closeAll()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield "viewfs://sparknn/store", backing
    assert os.listdir(cwd) == [], "Python file I/O touched a path named like the URI"


def _items(spark, n=N, seed=3, string_ids=True):
    x = clustered(n, DIM, 10, seed=seed)
    ids = [f"i{j}" for j in range(n)] if string_ids else np.arange(n) * 2 + 1
    return spark_items(spark, x, ids=ids, id_type="string" if string_ids else "bigint", partitions=3), x


def _answers(model):
    return sorted((r["id"], [n["id"] for n in r["neighbors"]]) for r in model.similarItems().collect())


def _versions(backing, name):
    return sorted(os.listdir(backing / name / "sparknn"))


CASES = {
    "flat": {"indexType": "flat"},
    "hnsw": {"indexType": "hnsw", "efSearch": 100},
    "ivf": {"indexType": "ivf", "nlist": 8, "nprobe": 8},
    "sharded": {"indexType": "flat", "numShards": 2},
    "routed": {"indexType": "ivf", "ivfMode": "routed", "nlist": 8, "nprobe": 8, "targetPartBytes": 8000},
}
CASES["routed-string-ids"] = CASES["routed"]  # positional ids: a part's search reads its items file too


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mode_saves_and_loads_through_spark_alone(spark, store, case):
    uri, backing = store
    df, x = _items(spark, string_ids=case != "routed")
    model = KNN(k=K, metric="l2", featuresCol="vector", **CASES[case]).fit(df)
    if case.startswith("routed"):
        assert model.layout.positional == (case == "routed-string-ids")
    expected = _answers(model)
    model.write().save(f"{uri}/{case}")
    names = {n for _, _, files in os.walk(backing / case) for n in files}
    assert not any(n.endswith((".snn", ".arrow")) for n in names), "index files are kept as Parquet chunks"
    loaded = KNNModel.load(f"{uri}/{case}")
    assert loaded.layout.mode == model.layout.mode and loaded.numItems == N
    assert not loaded.layout.root.startswith("viewfs")
    if case.startswith("routed"):  # parts stay at the URI; the driver fetched only the quantizer
        assert loaded.layout.chunks is not None and loaded.layout.chunks.uri.startswith(uri)
        assert os.listdir(loaded.layout.root) == [loaded.layout.ivf.quantizer]
    assert _answers(loaded) == expected
    queries = spark_items(spark, clustered(30, DIM, 10, seed=9))
    got = sorted(loaded.transform(queries).select("id", "neighbors").collect())
    want = sorted(model.transform(queries).select("id", "neighbors").collect())
    assert got == want
    # Saved again, elsewhere and over itself: the copies answer the same.
    loaded.write().save(f"{uri}/{case}-copy")
    loaded.write().overwrite().save(f"{uri}/{case}")
    assert len(_versions(backing, case)) == 1
    assert _answers(loaded) == expected, "a model saved over the version it was loaded from still answers"
    assert _answers(KNNModel.load(f"{uri}/{case}-copy")) == expected
    loaded.write().save(str(backing / f"{case}-local"))
    assert _answers(KNNModel.load(str(backing / f"{case}-local"))) == expected


def test_overwrite_replaces_only_when_asked_and_keeps_one_version(spark, store):
    uri, backing = store
    old_df, _ = _items(spark, n=300, seed=1)
    new_df, _ = _items(spark, n=400, seed=2)
    old = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(old_df)
    new = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").setK(3).fit(new_df)
    old.write().save(f"{uri}/m")
    with pytest.raises(FileExistsError, match="overwrite"):
        new.write().save(f"{uri}/m")
    assert KNNModel.load(f"{uri}/m").numItems == 300
    new.write().overwrite().save(f"{uri}/m")
    loaded = KNNModel.load(f"{uri}/m")
    assert loaded.numItems == 400 and loaded.getK() == 3
    assert _answers(loaded) == _answers(new)
    assert len(_versions(backing, "m")) == 1, "the older version is removed once the new one is committed"


def test_an_uncommitted_version_is_invisible_and_damage_is_named(spark, store):
    uri, backing = store
    df, _ = _items(spark, n=300)
    model = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(df)
    model.write().save(f"{uri}/m")
    (committed,) = _versions(backing, "m")
    # A save killed before its record: a newer version with files and no record.
    shutil.copytree(backing / "m" / "sparknn" / committed, backing / "m" / "sparknn" / "99999999999999999999-dead")
    shutil.rmtree(backing / "m" / "sparknn" / "99999999999999999999-dead" / "record")
    assert _answers(KNNModel.load(f"{uri}/m")) == _answers(model)
    # A chunk file lost from the committed version.
    files = backing / "m" / "sparknn" / committed / "files"
    parts = sorted((p for p in os.listdir(files) if p.endswith(".parquet")), key=lambda p: os.path.getsize(files / p))
    os.remove(files / parts[-1])
    with pytest.raises(IndexFileError, match="is damaged: .* has .* of .* bytes"):
        KNNModel.load(f"{uri}/m")
    # Nothing committed at all: not a model.
    shutil.rmtree(backing / "m" / "sparknn" / committed / "record")
    with pytest.raises(IndexFileError, match="no committed version"):
        KNNModel.load(f"{uri}/m")
    with pytest.raises(FileNotFoundError, match="no saved KNNModel"):
        KNNModel.load(f"{uri}/nothing-here")


def test_a_flipped_byte_fails_its_checksum(spark, store):
    uri, backing = store
    df, _ = _items(spark, n=300)
    KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(df).write().save(f"{uri}/m")
    (version,) = _versions(backing, "m")
    files = backing / "m" / "sparknn" / version / "files"
    biggest = max((p for p in os.listdir(files) if p.endswith(".parquet")), key=lambda p: os.path.getsize(files / p))
    raw = bytearray((files / biggest).read_bytes())
    raw[len(raw) // 2] ^= 0x40  # inside the uncompressed chunk data
    (files / biggest).write_bytes(bytes(raw))
    os.remove(files / f".{biggest}.crc")  # Hadoop's own checksum would name it first
    with pytest.raises(IndexFileError, match="checksum|damaged"):
        KNNModel.load(f"{uri}/m")


def test_an_estimator_at_the_uri_is_not_a_model(spark, store):
    uri, _ = store
    KNN(k=3).write().save(f"{uri}/estimator")
    with pytest.raises(InvalidArgumentError, match="not a sparknn KNNModel"):
        KNNModel.load(f"{uri}/estimator")


def test_pipeline_model_saves_and_loads_through_spark(spark, store):
    from pyspark.ml import Pipeline, PipelineModel

    uri, _ = store
    df, _ = _items(spark, n=300)
    fitted = Pipeline(stages=[KNN(k=K, metric="l2", indexType="hnsw", featuresCol="vector")]).fit(df)
    fitted.write().save(f"{uri}/pipeline")
    loaded = PipelineModel.load(f"{uri}/pipeline")
    assert isinstance(loaded.stages[0], KNNModel)
    queries = spark_items(spark, clustered(20, DIM, 10, seed=5))
    assert sorted(loaded.transform(queries).select("id", "neighbors").collect()) == \
        sorted(fitted.transform(queries).select("id", "neighbors").collect())


_SAVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import clustered, spark_items
    from sparknn.spark import KNN
    from sparknn.spark.session import local_session

    spark = local_session("local[2]", "saver", **{{{mount!r}: {backing!r}}})
    x = clustered(900, {dim}, 10, seed=4)
    print("fitting", flush=True)
    model = KNN(k={k}, metric="l2", featuresCol="vector", **{params!r}).fit(spark_items(spark, x, partitions=4))
    print("saving", flush=True)
    model.write().overwrite().save({uri!r})
    print("saved", flush=True)
""")


def _committed_versions(backing, name):
    """Versions whose record file is in place (what the loader counts as saved)."""
    root = backing / name / "sparknn"
    return {v for v in os.listdir(root) if os.path.isdir(root / v / "record")
            and any(n.startswith("part-") for n in os.listdir(root / v / "record"))}


def _wait_for(condition, process, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the save ended before the point it was to be killed at"
        assert time.time() < deadline, "the save never reached the point it was to be killed at"
        time.sleep(0.002)


@pytest.mark.slow
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_model(spark, store, tmp_path):
    """SIGKILL (driver and JVM) while the new version's files are written, once they are committed
    but before the record, right after the record, and not at all: every time the path loads, and
    it is the new model exactly when its record was in place."""
    uri, backing = store
    df, _ = _items(spark, n=300)
    old = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(df)
    old.write().save(f"{uri}/m")
    old_answers = _answers(old)
    (old_version,) = _versions(backing, "m")
    script = _SAVER.format(tests=os.path.dirname(__file__), mount=MOUNT, backing=f"file://{backing}", dim=DIM, k=K,
                           uri=f"{uri}/m", params={"indexType": "flat"})
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    root = backing / "m" / "sparknn"
    new_dirs = lambda: [v for v in os.listdir(root) if v != old_version]  # noqa: E731
    points = {
        "writing files": lambda: any((root / v / "files").exists() for v in new_dirs()),
        "files committed": lambda: any((root / v / "files" / "_SUCCESS").exists() for v in new_dirs()),
        "record written": lambda: bool(_committed_versions(backing, "m") - {old_version}),
        "not killed": None,
    }
    for point, reached in points.items():
        with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=tmp_path, start_new_session=True) as saver:
            assert saver.stdout.readline().strip() == "fitting"
            assert saver.stdout.readline().strip() == "saving"
            if reached is not None:
                _wait_for(reached, saver)
                os.killpg(saver.pid, signal.SIGKILL)  # the Python driver and its JVM
            assert saver.wait(timeout=300) == (0 if reached is None else -signal.SIGKILL)
        new_committed = bool(_committed_versions(backing, "m") - {old_version})
        loaded = KNNModel.load(f"{uri}/m")  # never fails: the old model or the new one
        if new_committed:
            assert loaded.numItems == 900, point
        else:
            assert loaded.numItems == 300 and _answers(loaded) == old_answers, point
        assert point not in ("writing files", "files committed") or not new_committed
        assert point != "record written" and point != "not killed" or new_committed
        if new_committed:  # the next round overwrites the new model again: start from the old one
            shutil.rmtree(backing / "m")
            old.write().save(f"{uri}/m")
            (old_version,) = _versions(backing, "m")


@pytest.mark.parametrize("case", ["sharded", "routed"])
def test_builds_on_executors_return_their_files_through_spark(spark, tmp_path, monkeypatch, case):
    """As on nodes that share no disk (test_spark_noshare), here in local mode: the build tasks
    write into scratch directories of their own and the files come back as rows; the model
    answers as one built in place, and no scratch directory is left behind."""
    from sparknn.spark import estimator

    df, _ = _items(spark, string_ids=case != "routed")
    in_place = KNN(k=K, metric="l2", featuresCol="vector", **CASES[case]).fit(df)
    scratch = lambda: {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("sparknn-build-")}  # noqa: E731
    before = scratch()
    monkeypatch.setattr(estimator, "executors_see", lambda spark, root: False)
    returned = KNN(k=K, metric="l2", featuresCol="vector", **CASES[case]).fit(df)
    assert not returned._index_files().shared
    assert set(returned.layout.files()) <= set(os.listdir(returned.layout.root))
    assert _answers(returned) == _answers(in_place)
    assert scratch() == before


@pytest.mark.slow
def test_a_routed_fit_killed_part_way_leaves_nothing_that_loads(spark, store, tmp_path):
    """SIGKILL a routed fit (with indexPath) while its parts are written, and once it is fitted
    (before its save): the model saved before at the URI still loads and answers the same, and
    the fit's files in indexPath are nothing that loads as a model."""
    uri, backing = store
    df, _ = _items(spark, n=300)
    old = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(df)
    old.write().save(f"{uri}/m")
    old_answers = _answers(old)
    index_path = tmp_path / "index"
    params = {"indexType": "ivf", "ivfMode": "routed", "nlist": 8, "targetPartBytes": 8000,
              "indexPath": str(index_path)}
    script = _SAVER.format(tests=os.path.dirname(__file__), mount=MOUNT, backing=f"file://{backing}", dim=DIM, k=K,
                           uri=f"{uri}/m", params=params)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    parts_written = lambda: index_path.exists() and any("-part-" in n for n in os.listdir(index_path))  # noqa: E731
    for point in ("parts written", "fitted"):
        with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=tmp_path, start_new_session=True) as fitter:
            assert fitter.stdout.readline().strip() == "fitting"
            if point == "parts written":
                _wait_for(parts_written, fitter)
            else:
                assert fitter.stdout.readline().strip() == "saving"
            os.killpg(fitter.pid, signal.SIGKILL)
            fitter.wait(timeout=300)
        assert parts_written() or point == "parts written"
        loaded = KNNModel.load(f"{uri}/m")
        assert loaded.numItems == 300 and _answers(loaded) == old_answers, point
        with pytest.raises(FileNotFoundError):
            KNNModel.load(str(index_path))


@pytest.mark.parametrize("case", ["sharded", "routed", "routed-string-ids"])
def test_an_index_path_uri_keeps_the_built_files_there(spark, store, case):
    """indexPath at a URI: build tasks write their files there through Spark. A routed model's parts
    stay there (the driver holds the quantizer only) and reach the tasks that search them; a
    sharded model's shards are fetched to the driver (every query searches all)."""
    uri, backing = store
    df, _ = _items(spark, string_ids=case != "routed")
    params = {"k": K, "metric": "l2", "featuresCol": "vector", **CASES[case]}
    in_place = KNN(**params).fit(df)
    model = KNN(indexPath=f"{uri}/index", **params).fit(df)
    assert model.layout.mode == in_place.layout.mode
    (build,) = os.listdir(backing / "index")
    assert any(n.endswith(".parquet") for n in os.listdir(backing / "index" / build))
    if case.startswith("routed"):
        assert model.layout.chunks is not None and model.layout.chunks.uri == f"{uri}/index/{build}"
        assert os.listdir(model.layout.root) == [model.layout.ivf.quantizer]
        assert model.partSizeBytes == in_place.partSizeBytes
    else:
        assert model.layout.chunks is None
    assert _answers(model) == _answers(in_place)
    queries = spark_items(spark, clustered(30, DIM, 10, seed=9))
    assert (sorted(model.transform(queries).select("id", "neighbors").collect())
            == sorted(in_place.transform(queries).select("id", "neighbors").collect()))
    model.write().save(f"{uri}/m")
    assert _answers(KNNModel.load(f"{uri}/m")) == _answers(in_place)


def test_gathered_output_of_two_attempts_is_detected(tmp_path):
    """What the driver sees when an executor was lost while it read a build's output: a part named
    by two attempts, or a file missing chunks. Either makes it read the output again."""
    from sparknn.spark.chunk_files import Assembler
    from sparknn.spark.returned_files import _check

    columns = ("index", "items")
    whole = [{"part": 0, "index": "p0-a1.snn", "items": "i0-a1.arrow"}]

    def gathered(chunks):
        with Assembler(str(tmp_path)) as files:
            for name, offset, data, size in chunks:
                files.add(name, offset, data, size)
        return files

    files = gathered([("p0-a1.snn", 0, b"0123456789", 10), ("i0-a1.arrow", 0, b"abcd", 4)])
    assert _check(whole, files, "part", columns) is None
    assert (tmp_path / "p0-a1.snn").read_bytes() == b"0123456789"
    assert "two task attempts" in _check(whole * 2, files, "part", columns)
    files = gathered([("p0-a1.snn", 4, b"456789", 10), ("i0-a1.arrow", 0, b"abcd", 4)])
    assert "6 of 10 bytes" in _check(whole, files, "part", columns)
    files = gathered([("p0-a1.snn", 0, b"0123456789", 10)])
    assert "0 of ? bytes" in _check(whole, files, "part", columns)
    # A chunk repeated (two attempts' copies of one offset) does not count twice.
    files = gathered([("p0-a1.snn", 0, b"01234", 10), ("p0-a1.snn", 0, b"01234", 10), ("i0-a1.arrow", 0, b"abcd", 4)])
    assert "5 of 10 bytes" in _check(whole, files, "part", columns)


def test_returned_files_larger_than_the_driver_heap_are_refused_with_the_remedy(spark, monkeypatch):
    from sparknn.spark import estimator, runtime

    df, _ = _items(spark, string_ids=False)
    monkeypatch.setattr(estimator, "executors_see", lambda spark, root: False)
    monkeypatch.setattr(runtime, "driver_heap", lambda spark: 10_000)
    with pytest.raises(InvalidArgumentError, match=r"routed ivf build brings about .* back to the driver.*indexPath"):
        KNN(k=K, metric="l2", featuresCol="vector", **CASES["routed"]).fit(df)
    with pytest.raises(InvalidArgumentError, match=r"sharded build \(2 shards\) brings about"):
        KNN(k=K, metric="l2", featuresCol="vector", **CASES["sharded"]).fit(df)


def test_overwrite_replaces_a_damaged_model_and_clears_killed_saves(spark, store):
    uri, backing = store
    df, _ = _items(spark, n=300)
    model = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector").fit(df)
    model.write().save(f"{uri}/m")
    root = backing / "m" / "sparknn"
    (version,) = _versions(backing, "m")
    shutil.copytree(root / version, root / "00000000000000000001-dead")  # a killed save's files
    shutil.rmtree(root / "00000000000000000001-dead" / "record")
    record = root / version / "record"
    (part,) = [p for p in os.listdir(record) if p.startswith("part-")]
    (record / part).write_text('{"format": 1, "damaged\n')
    os.remove(record / f".{part}.crc")  # as storage would hand back a damaged object
    with pytest.raises(IndexFileError, match="damaged"):
        KNNModel.load(f"{uri}/m")
    with pytest.raises(FileExistsError):
        model.write().save(f"{uri}/m")
    model.write().overwrite().save(f"{uri}/m")
    assert len(_versions(backing, "m")) == 1, "the damaged version and the killed save's files are gone"
    assert _answers(KNNModel.load(f"{uri}/m")) == _answers(model)
