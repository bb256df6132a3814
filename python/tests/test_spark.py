"""sparknn.spark on a real local[2] Spark: exactness, recall, id and vector types, persistence, errors."""

import os

import numpy as np
import pyarrow as pa
import pytest
from conftest import clustered, exact_knn, recall, spark_items

pyspark = pytest.importorskip("pyspark")
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F
import sparknn
from sparknn.spark import KNN, KNNModel

pytestmark = pytest.mark.spark

BASE = clustered(2000, 16, seed=3)
QUERIES = clustered(100, 16, seed=4)


def distances(q: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Exact float64 distances between paired rows of q and b."""
    q, b = q.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
        return 1 - (q * b).sum(-1)
    if metric == "ip":
        return -(q * b).sum(-1)
    return ((q - b) ** 2).sum(-1)


def by_id(table: pa.Table, id_col: str = "id", col: str = "neighbors") -> dict:
    """{id: [(neighbour id, distance), ...]} from a result table."""
    rows = table.select([id_col, col]).to_pylist()
    assert len({r[id_col] for r in rows}) == len(rows), "one output row per input row"
    return {r[id_col]: [(n["id"], n["distance"]) for n in r[col]] for r in rows}


def assert_exact(result: dict, queries: dict, base: np.ndarray, base_pos: dict, k: int, metric: str,
                 exclude_self: bool = False):
    """Each row's neighbours are the true k nearest: returned distances match the distances
    recomputed from the returned ids (ids are mapped right) and the exact top-k (nothing
    better was missed). Comparing distances keeps ties from failing the test."""
    assert set(result) == set(queries)
    for qid, neigh in result.items():
        q = queries[qid]
        pos = np.array([base_pos[i] for i, _ in neigh])
        got = np.array([d for _, d in neigh])
        all_d = distances(q[None, :], base, metric)
        if exclude_self:
            all_d[base_pos[qid]] = np.inf
            assert qid not in [i for i, _ in neigh]
        want = np.sort(all_d)[: min(k, np.isfinite(all_d).sum())]
        assert len(neigh) == len(want)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, distances(q[None, :], base[pos], metric), atol=2e-5 * scale)
        np.testing.assert_allclose(got, want, atol=2e-5 * scale)
        assert np.all(np.diff(got) >= -1e-6 * scale), "nearest first"


def items(spark, **kw):
    return spark_items(spark, BASE, **kw)


def queries_df(spark, **kw):
    return spark_items(spark, QUERIES, ids=np.arange(10_000, 10_000 + len(QUERIES)), **kw)


# --------------------------------------------------------------------------- exact results
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_flat_equals_brute_force(spark, metric):
    model = KNN(k=7, metric=metric, indexType="flat", featuresCol="vector").fit(items(spark))
    pos = {i: i for i in range(len(BASE))}
    out = model.transform(queries_df(spark)).toArrow()
    assert out.column_names == ["id", "vector", "neighbors"]
    assert_exact(by_id(out), {10_000 + i: q for i, q in enumerate(QUERIES)}, BASE, pos, 7, metric)
    sim = model.similarItems().toArrow()
    assert sim.column_names == ["id", "neighbors"] and sim.num_rows == len(BASE)
    assert_exact(by_id(sim), dict(enumerate(BASE)), BASE, pos, 7, metric, exclude_self=True)


def test_hnsw_recall(spark):
    base, queries = clustered(3000, 32, seed=5), clustered(200, 32, seed=6)
    model = KNN(k=10, indexType="hnsw", featuresCol="vector").fit(spark_items(spark, base))
    truth, _ = exact_knn(base, queries, 10, "cosine")
    out = by_id(model.transform(spark_items(spark, queries)).toArrow())
    found = np.array([[i for i, _ in out[q]] for q in range(len(queries))])
    assert recall(found, truth) >= 0.95
    sharded = KNN(k=10, indexType="hnsw", featuresCol="vector", numShards=2).fit(spark_items(spark, base))
    out = by_id(sharded.transform(spark_items(spark, queries)).toArrow())
    found = np.array([[i for i, _ in out[q]] for q in range(len(queries))])
    assert recall(found, truth) >= 0.95
    truth_self, _ = exact_knn(base, base, 11, "cosine")
    sim = by_id(model.similarItems().toArrow())
    found = np.array([[i for i, _ in sim[q]] for q in range(len(base))])
    truth_other = np.array([[j for j in row if j != q][:10] for q, row in enumerate(truth_self)])
    assert recall(found, truth_other) >= 0.95


@pytest.mark.parametrize("num_shards", [1, 2])
def test_half_storage_flat_is_exact_on_stored_values_and_hnsw_keeps_recall(spark, tmp_path, num_shards):
    """storage="fp16" / "bf16" on every layout: flat answers exactly for the stored (rounded)
    vectors, hnsw keeps its recall, the shards' files hold 16-bit rows, save/load keeps them."""
    model = KNN(k=7, metric="l2", indexType="flat", storage="fp16", numShards=num_shards,
                featuresCol="vector").fit(items(spark))
    stored = BASE.astype(np.float16).astype(np.float32)  # what fp16 keeps: nearest even
    pos = {i: i for i in range(len(BASE))}
    out = by_id(model.transform(queries_df(spark)).toArrow())
    assert_exact(out, {10_000 + i: q for i, q in enumerate(QUERIES)}, stored, pos, 7, "l2")
    sim = by_id(model.similarItems().toArrow())
    assert_exact(sim, dict(enumerate(stored)), stored, pos, 7, "l2", exclude_self=True)
    shards = [sparknn.load(model.layout.path(s.index)) for s in model.layout.shards]
    assert len(shards) == num_shards and all(s.storage == "fp16" for s in shards)
    model.write().overwrite().save(str(tmp_path / "flat"))
    assert by_id(KNNModel.load(str(tmp_path / "flat")).similarItems().toArrow()) == sim

    base, queries = clustered(3000, 32, seed=5), clustered(200, 32, seed=6)
    hnsw = KNN(k=10, indexType="hnsw", storage="bf16", numShards=num_shards,
               featuresCol="vector").fit(spark_items(spark, base))
    truth, _ = exact_knn(base, queries, 10, "cosine")
    got = by_id(hnsw.transform(spark_items(spark, queries)).toArrow())
    assert recall(np.array([[i for i, _ in got[q]] for q in range(len(queries))]), truth) >= 0.93
    assert all(sparknn.load(hnsw.layout.path(s.index)).storage == "bf16" for s in hnsw.layout.shards)


# --------------------------------------------------------------------------- ids and vector types
@pytest.mark.parametrize("id_type, make_ids, num_shards", [
    ("string", lambda n: np.array([f"item-{i:05d}" for i in range(n)], dtype=object), 1),
    ("int", lambda n: np.arange(n) * 3 + 7, 1),
    ("bigint", lambda n: np.arange(n, dtype=np.int64) + (1 << 50), 1),
    ("bigint", lambda n: np.arange(n, dtype=np.int64) - 1000, 1),  # negative ids map through positions
    ("smallint", lambda n: np.arange(n) - 300, 2),  # ... also across shards
], ids=["string", "int", "long", "negative", "negative-sharded"])
def test_ids_come_back_as_given(spark, id_type, make_ids, num_shards):
    n = 400
    base = BASE[:n]
    ids = make_ids(n)
    df = spark_items(spark, base, ids=ids.tolist(), id_type=id_type)
    model = KNN(k=5, metric="l2", indexType="flat", featuresCol="vector", numShards=num_shards).fit(df)
    sim = model.similarItems()
    assert sim.schema["id"].dataType == df.schema["id"].dataType
    assert sim.schema["neighbors"].dataType.elementType["id"].dataType == df.schema["id"].dataType
    pos = {v: i for i, v in enumerate(ids.tolist())}
    assert_exact(by_id(sim.toArrow()), dict(zip(ids.tolist(), base)), base, pos, 5, "l2", exclude_self=True)


@pytest.mark.parametrize("vector_type", ["array<double>", "vector"])
def test_vector_types_give_the_same_result(spark, vector_type):
    reference = KNN(k=5, indexType="flat", featuresCol="vector").fit(items(spark))
    model = KNN(k=5, indexType="flat", featuresCol="vector").fit(items(spark, vector_type=vector_type))
    queries = queries_df(spark, vector_type=vector_type)
    assert by_id(model.transform(queries).toArrow()) == by_id(reference.transform(queries).toArrow())


# --------------------------------------------------------------------------- options
def test_include_self_and_k_larger_than_data(spark):
    base = BASE[:6]
    df = spark_items(spark, base, ids=[f"s{i}" for i in range(6)], id_type="string")
    model = KNN(k=10, metric="l2", indexType="flat", featuresCol="vector").fit(df)
    # k > n: every row gets all n items (n - 1 without itself), never fewer rows.
    out = by_id(model.transform(df).toArrow())
    assert len(out) == 6 and all(len(v) == 6 for v in out.values())
    assert all(v[0][0] == k and v[0][1] == pytest.approx(0, abs=1e-4) for k, v in out.items())
    sim = by_id(model.similarItems().toArrow())
    assert len(sim) == 6 and all(len(v) == 5 and k not in dict(v) for k, v in sim.items())
    # The model is garbage as soon as similarItems returns; its files must outlive it.
    assert KNN(k=2, indexType="flat", featuresCol="vector").fit(df).similarItems().count() == 6
    with_self = by_id(model.setIncludeSelf(True).setK(3).similarItems().toArrow())
    assert all(len(v) == 3 and v[0][0] == k for k, v in with_self.items())


def test_self_excluded_by_id_not_by_rank(spark):
    """Under ip an item's own vector is not its nearest: excluding rank 0 would drop a neighbour."""
    base = np.array([[1, 0], [2, 0], [3, 0], [0, 1]], dtype=np.float32)
    model = KNN(k=2, metric="ip", indexType="flat", featuresCol="vector").fit(spark_items(spark, base))
    sim = by_id(model.similarItems().toArrow())
    assert [i for i, _ in sim[0]] == [2, 1]
    assert [i for i, _ in sim[2]] == [1, 0]


@pytest.mark.parametrize("id_type", ["bigint", "string"])
def test_sharded_equals_single_index(spark, tmp_path, id_type):
    ids = [f"x{i}" for i in range(len(BASE))] if id_type == "string" else list(range(len(BASE)))
    df = spark_items(spark, BASE, ids=ids, id_type=id_type, partitions=3)
    single = KNN(k=8, indexType="flat", featuresCol="vector").fit(df)
    sharded = KNN(k=8, indexType="flat", featuresCol="vector", numShards=2, indexPath=str(tmp_path)).fit(df)
    assert len(sharded.layout.shards) == 2 and sharded.numItems == len(BASE)
    assert min(s.count for s in sharded.layout.shards) > 0
    queries = queries_df(spark)

    def assert_same_distances(a, b):
        # float32 distances of the same pairs may differ by an ulp (other batching): not rounded
        # to 4 places, where an ulp can flip the last digit
        assert a.keys() == b.keys()
        for q in a:
            np.testing.assert_allclose([d for _, d in a[q]], [d for _, d in b[q]], rtol=1e-5, atol=1e-6)

    a, b = by_id(single.transform(queries).toArrow()), by_id(sharded.transform(queries).toArrow())
    assert_same_distances(a, b)
    a, b = by_id(single.similarItems().toArrow()), by_id(sharded.similarItems().toArrow())
    assert_same_distances(a, b)
    assert all(q not in dict(v) for q, v in b.items())


def test_index_path_holds_the_files(spark, tmp_path):
    model = KNN(k=3, indexType="flat", featuresCol="vector", indexPath=f"file://{tmp_path}").fit(items(spark))
    assert [n for n in os.listdir(tmp_path) if n.endswith(".snn")]
    assert model.transform(queries_df(spark)).count() == len(QUERIES)


def test_task_threads_follow_spark_task_cpus(spark):
    """Engine threads in a task: numThreads when set, else the task's spark.task.cpus (1 here)."""
    import pyarrow as pa

    def threads(batches):
        from sparknn.spark.tasks import task_threads

        for _ in batches:
            yield pa.RecordBatch.from_pydict({"auto": [task_threads(0)], "fixed": [task_threads(3)]})

    row = spark.range(1).mapInArrow(threads, "auto bigint, fixed bigint").first()
    assert (row.auto, row.fixed) == (int(spark.conf.get("spark.task.cpus", "1")), 3)


# --------------------------------------------------------------------------- persistence
def test_save_load_in_a_fresh_session(spark, tmp_path, _spark_holder):
    ids = [f"id{i}" for i in range(len(BASE))]
    df = spark_items(spark, BASE, ids=ids, id_type="string")
    model = KNN(k=4, metric="l2", indexType="flat", featuresCol="vector", efSearch=77).fit(df)
    expected = by_id(model.similarItems().toArrow())
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    with pytest.raises(FileExistsError, match="overwrite"):
        model.write().save(path)
    model.write().overwrite().save(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary directory left behind
    spark.stop()
    from sparknn.spark.session import local_session

    session = _spark_holder["session"] = local_session("local[2]", "sparknn-tests")
    loaded = KNNModel.load(path)
    assert loaded.getK() == 4 and loaded.getEfSearch() == 77 and loaded.getMetric() == "l2"
    assert loaded.uid == model.uid
    assert by_id(loaded.similarItems().toArrow()) == expected
    queries = spark_items(session, QUERIES[:5], features="vector")
    assert loaded.transform(queries).count() == 5


def test_pipeline(spark, tmp_path):
    from pyspark.ml.feature import VectorAssembler

    df = items(spark).select("id", *[F.col("vector")[i].alias(f"f{i}") for i in range(16)])
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=[f"f{i}" for i in range(16)], outputCol="features"),
        KNN(k=3, indexType="flat"),
    ])
    pipeline.write().overwrite().save(str(tmp_path / "estimator"))
    assert Pipeline.load(str(tmp_path / "estimator")).getStages()[-1].getK() == 3
    fitted = pipeline.fit(df)
    expected = by_id(fitted.transform(df).toArrow())
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert isinstance(loaded.stages[-1], KNNModel)
    assert by_id(loaded.transform(df).toArrow()) == expected
    assert all(v[0][0] == k for k, v in expected.items())


# --------------------------------------------------------------------------- bad input
def _frame(spark, schema, rows):
    return spark.createDataFrame(rows, schema)


BAD_COLUMNS = [
    ("missing features", {"featuresCol": "nope"}, "id bigint, vector array<float>", [(1, [1.0])],
     r"featuresCol 'nope' is not a column of the DataFrame; available columns: 'id', 'vector'"),
    ("missing id", {"idCol": "key"}, "id bigint, vector array<float>", [(1, [1.0])],
     r"idCol 'key' is not a column"),
    ("string features", {}, "id bigint, vector string", [(1, "1,2")], r"featuresCol 'vector' has type string"),
    ("double ids", {}, "id double, vector array<float>", [(1.0, [1.0])], r"idCol 'id' has type double"),
]
BAD_DATA = [
    ("empty", {}, "id bigint, vector array<float>", [], r"empty"),
    ("null vector", {}, "id bigint, vector array<float>", [(1, [1.0, 2.0]), (2, None)],
     r"featuresCol 'vector' has 1 null vectors of 2 rows \(e.g. id 2\)"),
    ("ragged", {}, "id bigint, vector array<float>", [(1, [1.0, 2.0]), (2, [1.0]), (3, [1.0, 2.0])],
     r"featuresCol 'vector' has vectors of different lengths, 1 to 2.*id 2"),
    ("nan", {}, "id bigint, vector array<double>", [(1, [1.0, 2.0]), (7, [float("nan"), 1.0])],
     r"1 vectors with null, NaN or infinite values.*id 7"),
    ("null element", {}, "id bigint, vector array<float>", [(1, [1.0, 2.0]), (8, [None, 1.0])],
     r"null, NaN or infinite.*id 8"),
    ("null id", {}, "id string, vector array<float>", [("a", [1.0]), (None, [2.0])],
     r"idCol 'id' has 1 null values"),
    ("duplicate int ids", {}, "id bigint, vector array<float>", [(1, [1.0]), (5, [2.0]), (5, [3.0])],
     r"idCol 'id' has 1 duplicate ids \(e.g. 5 appears 2 times\)"),
    ("duplicate string ids", {}, "id string, vector array<float>", [("a", [1.0]), ("a", [2.0])],
     r"duplicate ids \(e.g. 'a' appears 2 times\)"),
]


BAD_FIT = [b + (1,) for b in BAD_COLUMNS + BAD_DATA] + [b + (2,) for b in BAD_DATA]


@pytest.mark.parametrize("name, params, schema, rows, message, num_shards", BAD_FIT,
                         ids=[f"{b[0]}-{b[-1]}" for b in BAD_FIT])
def test_bad_fit_input(spark, tmp_path, name, params, schema, rows, message, num_shards):
    params = {"featuresCol": "vector", **params}
    knn = KNN(indexType="flat", numShards=num_shards, indexPath=str(tmp_path), **params)
    with pytest.raises(Exception, match=message):
        knn.fit(_frame(spark, schema, rows))
    assert os.listdir(tmp_path) == [], "a failed fit leaves no index files"


def test_bad_params_and_queries(spark):
    with pytest.raises(ValueError, match="k must be >= 1"):
        KNN(k=0)
    with pytest.raises(ValueError, match="unknown metric 'hamming'"):
        KNN(metric="hamming")
    with pytest.raises(ValueError, match="indexType must be one of flat, hnsw, ivf, got 'annoy'"):
        KNN(indexType="annoy")
    model = KNN(k=3, indexType="flat", featuresCol="vector").fit(items(spark))
    with pytest.raises(ValueError, match="outputCol 'vector' already exists"):
        model.setOutputCol("vector").transform(queries_df(spark))
    model.setOutputCol("neighbors")
    wrong_dim = _frame(spark, "id bigint, vector array<float>", [(1, [1.0, 2.0])])
    with pytest.raises(Exception, match=r"column 'vector' has vectors of length 2 but the index has dim=16"):
        model.transform(wrong_dim).collect()
    null_query = _frame(spark, "id bigint, vector array<float>", [(1, [1.0] * 16), (2, None)])
    with pytest.raises(Exception, match=r"column 'vector' has a null vector at row \d+ \(in partition \d+"):
        model.transform(null_query).collect()
