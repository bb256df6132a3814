"""indexType="ivf" on a real local[2] Spark: the routed build and join equal the in-process IVF
index with the same centroids; string ids; skewed clusters; memory checks; persistence."""

import os

import numpy as np
import pyarrow as pa
import pytest
from conftest import clustered, exact_knn, recall, spark_items
from test_spark import BAD_DATA

pyspark = pytest.importorskip("pyspark")
import sparknn
from sparknn.spark import KNN, KNNModel
from sparknn.spark.ivf_memory import TaskMemoryError, arrow_batch_rows, query_task_bytes
from sparknn.spark.ivf_plan import item_bytes

pytestmark = pytest.mark.spark

BASE = clustered(3000, 16, seed=21)
QUERIES = clustered(200, 16, seed=22)


def in_process(model, base: np.ndarray, ids=None) -> sparknn.Index:
    """The model's own trained quantizer with every item added in one process: the reference."""
    layout = model.layout
    index = sparknn.load(os.path.join(layout.root, layout.ivf.quantizer), mmap=False)
    index.add(base, ids)
    return index


def rows_by_id(table, id_col="id"):
    rows = table.to_pylist()
    assert len({r[id_col] for r in rows}) == len(rows), "one output row per input row"
    return {r[id_col]: r["neighbors"] for r in rows}


def assert_same_distances(got: dict, want_ids, want_dist, keys, k, exclude=None, atol=1e-4):
    """Row by row, the merged neighbours have the reference's distances (ids may differ on ties)."""
    for row, key in enumerate(keys):
        ids, dist = want_ids[row], want_dist[row]
        keep = ids >= 0
        if exclude is not None:
            keep &= ids != exclude[row]
        want = dist[keep][:k]
        np.testing.assert_allclose([n["distance"] for n in got[key]], want, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("metric, storage", [("l2", "float32"), ("cosine", "float32"), ("l2", "bf16")])
def test_routed_self_join_equals_in_process(spark, metric, storage):
    df = spark_items(spark, BASE, partitions=3)
    model = KNN(k=10, metric=metric, indexType="ivf", ivfMode="routed", nlist=24, nprobe=3, storage=storage,
                featuresCol="vector").fit(df)
    assert model.numItems == len(BASE) and len(model.layout.shards) >= 2
    reference = in_process(model, BASE, np.arange(len(BASE)))
    ids, dist = reference.search(BASE, 11, nprobe=3)
    sim = rows_by_id(model.similarItems().toArrow())
    assert len(sim) == len(BASE) and all(len(v) == 10 and i not in [n["id"] for n in v] for i, v in sim.items())
    assert_same_distances(sim, ids, dist, range(len(BASE)), 10, exclude=np.arange(len(BASE)))
    # Each item's nearest lists were found once, at fit, and stored beside it (similarItems routes
    # by them); the routing has the exact list sizes, not the sample's estimate.
    layout = model.layout
    for part in layout.shards:
        items = pa.ipc.open_file(layout.path(part.items)).read_all()
        x = items.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 16)
        stored = items.column("lists").combine_chunks().flatten().to_numpy().reshape(-1, 3)
        np.testing.assert_array_equal(stored, reference.nearest_lists(x, 3))
    assert layout.ivf.list_sizes == tuple(np.bincount(reference.nearest_lists(BASE, 1)[:, 0], minlength=24))
    # Probing every list is exact search on the stored vectors (more lists than stored: the quantizer routes).
    _, exact = exact_knn(reference.reconstruct(), BASE, 11, metric)
    full = rows_by_id(model.setNprobe(24).similarItems().toArrow())
    for i in range(len(BASE)):
        np.testing.assert_allclose([n["distance"] for n in full[i]], exact[i][1:], rtol=2e-5, atol=1e-4)
    # Queries that are not items.
    qids = np.arange(10_000, 10_000 + len(QUERIES))
    out = model.setNprobe(3).transform(spark_items(spark, QUERIES, ids=qids)).toArrow()
    assert out.column_names == ["id", "vector", "neighbors"]
    ids, dist = reference.search(QUERIES, 10, nprobe=3)
    assert_same_distances(rows_by_id(out), ids, dist, qids, 10)


def test_transform_string_ids_sq8_and_vector_columns(spark):
    names = np.array([f"item-{i:05d}" for i in range(len(BASE))], dtype=object)
    df = spark_items(spark, BASE, ids=names.tolist(), id_type="string")
    model = KNN(k=5, metric="l2", indexType="ivf", ivfMode="routed", nlist=16, nprobe=4, storage="sq8",
                featuresCol="vector").fit(df)
    assert model.layout.positional
    reference = in_process(model, BASE)
    queries = spark_items(spark, QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))], id_type="string",
                          vector_type="vector")
    out = model.transform(queries.withColumn("extra", queries["id"])).toArrow()
    assert out.column_names == ["id", "vector", "extra", "neighbors"] and out.num_rows == len(QUERIES)
    assert out.column("id").to_pylist() == out.column("extra").to_pylist()
    got = rows_by_id(out)
    ids, dist = reference.search(QUERIES, 5, nprobe=4)
    assert_same_distances(got, ids, dist, [f"q{i}" for i in range(len(QUERIES))], 5)
    # Ids map back to the user's strings (the same sets as the reference but for rare distance ties).
    same = [{n["id"] for n in got[f"q{i}"]} == set(names[ids[i]].tolist()) for i in range(len(QUERIES))]
    assert np.mean(same) >= 0.99
    sim = rows_by_id(model.similarItems().toArrow())
    assert set(sim) == set(names.tolist()) and all(len(v) == 5 and k not in [n["id"] for n in v]
                                                   for k, v in sim.items())


def test_skewed_cluster_is_split_and_parts_stay_bounded(spark):
    rng = np.random.default_rng(5)
    # One dense cluster, 2/3 of the data. Near the origin: L2 through dot products loses about
    # |x|^2 * 2^-24 to rounding, which at an offset of 5 (|x|^2 = 400) reached the 1e-4 spacing of
    # this cluster's neighbours, so tile order (CPU, BLAS kernel) decided the ranks.
    huge = rng.standard_normal((2000, 16)).astype(np.float32) * 0.01 + 0.5
    base = np.concatenate([huge, clustered(1000, 16, seed=23)])
    per_item = item_bytes(16, "l2", "float32", 0, 0)
    target = len(base) * per_item // 4  # about 4 parts
    model = KNN(k=8, metric="l2", indexType="ivf", ivfMode="routed", nlist=16, nprobe=2, targetPartBytes=target,
                featuresCol="vector").fit(spark_items(spark, base, partitions=2))
    routing = model.layout.ivf
    counts = [s.count for s in model.layout.shards]
    biggest = int(np.argmax(routing.list_sizes))
    holders = routing.list_parts[routing.list_offsets[biggest]:routing.list_offsets[biggest + 1]]
    assert len(holders) >= 2, "the list larger than a part is spread over several parts"
    assert routing.list_sizes[biggest] > len(base) / len(counts)
    assert max(counts) <= 1.34 * len(base) / len(counts) + 50, counts  # LPT bound plus hashing noise
    reference = in_process(model, base, np.arange(len(base)))
    ids, dist = reference.search(base, 9, nprobe=2)
    sim = rows_by_id(model.similarItems().toArrow())
    # float32 l2 (|q|^2 + |x|^2 - 2 q.x) is exact to a few ulps of the squared norms: measured up to 6
    # apart, depending on how queries and items are batched in the two processes. Allow 8.
    atol = max(1e-4, 8 * float(np.spacing(np.float32(np.square(base).sum(1).max()))))
    assert_same_distances(sim, ids, dist, range(len(base)), 8, exclude=np.arange(len(base)), atol=atol)


def test_few_candidates_widen_nprobe(spark):
    """nprobe=1 over lists of ~100 items with k=150: every row still gets k neighbours, the exact ones."""
    base = BASE[:1600]
    model = KNN(k=150, metric="l2", indexType="ivf", ivfMode="routed", nlist=16, nprobe=1, featuresCol="vector").fit(
        spark_items(spark, base))
    assert min(model.layout.ivf.list_sizes) < 151
    sim = rows_by_id(model.similarItems().toArrow())
    assert all(len(v) == 150 for v in sim.values())
    out = rows_by_id(model.setK(1600).transform(spark_items(spark, QUERIES[:20])).toArrow())
    _, exact = exact_knn(base, QUERIES[:20], 1600, "l2")
    for i in range(20):
        np.testing.assert_allclose([n["distance"] for n in out[i]], exact[i], rtol=1e-5, atol=1e-3)


def test_memory_is_reported_and_checked(spark, tmp_path):
    df = spark_items(spark, BASE)
    with pytest.raises(TaskMemoryError, match=r"building the IVF index .* needs about .* but a task may use "
                       r"1\.0 KiB \(taskMemoryLimit=1k\)\. Lower targetPartBytes"):
        KNN(indexType="ivf", ivfMode="routed", nlist=16, featuresCol="vector", taskMemoryLimit="1k",
            indexPath=str(tmp_path)).fit(df)
    assert os.listdir(tmp_path) == [], "a refused fit leaves no files"
    model = KNN(indexType="ivf", ivfMode="routed", nlist=16, storage="pq", pqM=4, featuresCol="vector").fit(df)
    files = model.layout.root
    parts = [os.path.getsize(os.path.join(files, s.index)) for s in model.layout.shards]
    assert model.partSizeBytes == parts
    assert model.indexSizeBytes == sum(parts) + os.path.getsize(os.path.join(files, model.layout.ivf.quantizer))
    assert max(parts) < model.taskMemoryBytes < 16 << 20  # the largest part plus query buffers
    assert model.setK(100).taskMemoryBytes > model.setK(10).taskMemoryBytes  # candidates take room too
    limit = f"{model.taskMemoryBytes - 1}"
    with pytest.raises(TaskMemoryError, match=rf"similarItems .* needs about .* \(taskMemoryLimit={limit}\)"):
        model.setTaskMemoryLimit(limit).similarItems()
    assert model.setTaskMemoryLimit(str(model.taskMemoryBytes)).similarItems().count() == len(BASE)
    with pytest.raises(ValueError, match="taskMemoryLimit: cannot read '12 parsecs'"):
        model.setTaskMemoryLimit("12 parsecs")


def test_bad_ivf_params(spark):
    with pytest.raises(ValueError, match="storage must be one of float32, fp16, bf16, sq8, pq"):
        KNN(indexType="ivf", ivfMode="routed", storage="int4")
    with pytest.raises(ValueError, match="storage 'sq8' compresses vectors per inverted list: only kind 'ivf'"):
        KNN(indexType="hnsw", storage="sq8", featuresCol="vector").fit(spark_items(spark, BASE[:10]))
    with pytest.raises(ValueError, match="numShards applies to indexType 'flat' and 'hnsw'"):
        KNN(indexType="ivf", ivfMode="routed", numShards=2, featuresCol="vector").fit(spark_items(spark, BASE[:10]))
    with pytest.raises(ValueError, match=r"nlist=64 is more than the 10 items"):
        KNN(indexType="ivf", ivfMode="routed", nlist=64, featuresCol="vector").fit(spark_items(spark, BASE[:10]))
    dup = spark_items(spark, BASE[:20], ids=[1] * 2 + list(range(2, 20)))
    with pytest.raises(ValueError, match=r"idCol 'id' has 1 duplicate ids \(e.g. 1 appears 2 times\)"):
        KNN(indexType="ivf", ivfMode="routed", nlist=4, featuresCol="vector").fit(dup)


def test_rerank_defaults_to_a_bf16_scan_for_float32_lists(spark):
    """Unset, rerank is 2 for ivf float32 lists (a bf16 scan re-ranked exactly, docs/ivf.md) and 0
    otherwise; a value given, 0 included, is kept; the model built says what it used."""
    assert KNN().getRerank() == 2 and KNN().index_spec().rerank == 2
    assert KNN(storage="sq8").getRerank() == 0 and KNN(indexType="hnsw").getRerank() == 0
    assert KNN(rerank=0).getRerank() == 0 and KNN(rerank=0).index_spec().rerank == 0
    assert KNN(storage="pq", rerank=3).index_spec().rerank == 3
    model = KNN(k=3, metric="l2", ivfMode="driver", nlist=8, featuresCol="vector").fit(spark_items(spark, BASE))
    assert model.getRerank() == 2
    assert model.similarItems().count() == len(BASE)


def test_save_load_in_a_fresh_session(spark, tmp_path, _spark_holder):
    names = [f"n{i}" for i in range(len(BASE))]
    model = KNN(k=4, metric="cosine", indexType="ivf", ivfMode="routed", nlist=16, nprobe=5, storage="sq8",
                featuresCol="vector").fit(spark_items(spark, BASE, ids=names, id_type="string"))
    expected = rows_by_id(model.similarItems().toArrow())
    path = str(tmp_path / "model")
    model.write().save(path)
    assert "quantizer.snn" in os.listdir(os.path.join(path, "index"))
    spark.stop()
    from sparknn.spark.session import local_session

    session = _spark_holder["session"] = local_session("local[2]", "sparknn-tests", **{
        "spark.default.parallelism": "2", "spark.sql.shuffle.partitions": "4"})
    loaded = KNNModel.load(path)
    assert (loaded.getNprobe(), loaded.getStorage(), loaded.numItems) == (5, "sq8", len(BASE))
    assert rows_by_id(loaded.similarItems().toArrow()) == expected
    assert loaded.transform(spark_items(session, QUERIES[:7])).count() == 7


@pytest.mark.parametrize("mode", ["routed", "driver"])
def test_first_pass_fitted_at_the_driver_is_what_the_executors_search(spark, mode):
    """firstPassDims: the basis fitted at the driver's training is saved with the index (the
    quantizer every part is built from, or the driver's index), and the executors' searches go
    through it: in 4 of 16 dimensions their answers differ from a full scan's and equal those of
    the model's index files searched in one process (routed: each part in the query's lists it
    holds, the parts' answers merged)."""
    df = spark_items(spark, BASE, partitions=3)
    knn = KNN(k=10, metric="l2", indexType="ivf", ivfMode=mode, nlist=24, nprobe=3, featuresCol="vector")
    model = knn.copy({knn.firstPassDims: 4}).fit(df)
    assert model.getFirstPassDims() == 4
    dims, share = model.firstPass
    assert dims == 4 and 0 < share < 1
    layout = model.layout
    if mode == "routed":
        lists = in_process(model, BASE).nearest_lists(QUERIES, 3)
        found = []
        for part in layout.shards:
            index = sparknn.load(layout.path(part.index))
            assert index.first_pass_dims == 4 and index.first_pass_in_use() == (dims, share)
            found.append(index.search(QUERIES, 10, lists=lists, nprobe=3, widen=False))
        ids, dist = np.concatenate([f[0] for f in found], 1), np.concatenate([f[1] for f in found], 1)
        order = np.argsort(np.where(ids >= 0, dist, np.inf), axis=1, kind="stable")[:, :10]
        want_ids, want_dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
        full = in_process(model, BASE)
    else:
        first = sparknn.load(os.path.join(layout.root, layout.shards[0].index))
        assert first.first_pass_dims == 4 and first.first_pass_in_use() == (dims, share)
        want_ids, want_dist = first.search(QUERIES, 10, nprobe=3)
        full = sparknn.load(os.path.join(layout.root, layout.shards[0].index))
    full.first_pass_dims = 0
    assert not np.allclose(full.search(QUERIES, 10, nprobe=3)[1], want_dist)  # told apart below
    out = rows_by_id(model.transform(spark_items(spark, QUERIES, partitions=2)).toArrow())
    assert_same_distances(out, want_ids, want_dist, range(len(QUERIES)), 10)
    # 'auto' (the default) declines 16 dimensions; 'off' and other index types have none
    assert knn.fit(df).firstPass is None
    assert knn.copy({knn.firstPassDims: "off"}).getFirstPassDims() == 0
    assert KNN(indexType="ivf", storage="sq8").getFirstPassDims() == 0  # auto: nothing to re-rank from
    assert KNN(indexType="hnsw").getFirstPassDims() == 0
    with pytest.raises(ValueError, match="firstPassDims"):
        KNN(firstPassDims="most")
    with pytest.raises(ValueError, match="firstPassDims"):
        KNN(firstPassDims=-1)
    assert KNN(firstPassDims=0).getOrDefault("firstPassDims") == "off"  # 0 is off, as for Index
    assert KNN(firstPassDims=" 32 ").getOrDefault("firstPassDims") == "32"


# --------------------------------------------------------------------------- ivfMode="driver"
@pytest.mark.parametrize("storage, minimum", [("float32", 0.95), ("sq8", 0.93), ("fp16", 0.95)])
def test_driver_ivf_similar_items_and_transform(spark, tmp_path, storage, minimum):
    """One IVF index built on the driver and mapped by every task (small data: what 'auto' picks)."""
    ids = np.arange(len(BASE)) * 7 + 3
    df = spark_items(spark, BASE, ids=ids, partitions=3)
    knn = KNN(k=10, metric="cosine", indexType="ivf", nlist=32, nprobe=8, storage=storage, featuresCol="vector")
    model = knn.fit(df)
    assert model.layout.ivf is None and model.layout.kind == "ivf" and len(model.layout.shards) == 1
    # The model's own index file searched in one process with all its items at once: the
    # reference for the tasks' slicing, chunking and id mapping. (Training depends on the
    # order rows reach the driver, which repartition shuffles.)
    reference = sparknn.load(os.path.join(model.layout.root, model.layout.shards[0].index))
    assert reference.params["nlist"] == 32 and reference.params["storage"] == storage
    stored = reference.ids
    originals = BASE[(stored - 3) // 7]  # the items' vectors in the index's label order
    # Each item's 8 nearest lists were found once, at fit, from its original vector, and kept beside
    # the index: similarItems searches the stored (decoded) vector in them.
    lists = reference.nearest_lists(originals, 8)
    probes = pa.ipc.open_file(model.layout.path(model.layout.shards[0].probes)).read_all().column("lists")
    np.testing.assert_array_equal(probes.combine_chunks().flatten().to_numpy().reshape(-1, 8), lists)
    want_ids, want_dist = reference.search(reference.reconstruct(), 11, lists=lists)
    # A similarItems task maps the probes file too, and holds the list order and label map (16 bytes
    # per item): they count in the task's memory.
    mapped = model.indexSizeBytes + os.path.getsize(model.layout.path(model.layout.shards[0].probes)) + 16 * len(BASE)
    assert model.taskMemoryBytes == query_task_bytes(mapped, 16, 10, arrow_batch_rows(spark))
    sim = rows_by_id(model.similarItems().toArrow())
    assert sorted(sim) == sorted(ids.tolist())
    assert all(len(v) == 10 and key not in [n["id"] for n in v] for key, v in sim.items())
    assert_same_distances(sim, want_ids, want_dist, stored, 10, exclude=stored)
    truth, _ = exact_knn(BASE, BASE, 11, "cosine")
    got = np.array([[n["id"] for n in sim[i]] for i in ids])
    truth_ids = np.array([[ids[j] for j in row if j != r][:10] for r, row in enumerate(truth)])
    assert recall(got, truth_ids) >= minimum
    # transform: new queries, every input column kept
    out = rows_by_id(model.transform(spark_items(spark, QUERIES, partitions=2)).toArrow())
    q_ids, q_dist = reference.search(QUERIES, 10)
    assert_same_distances(out, q_ids, q_dist, range(len(QUERIES)), 10)
    # save / load keeps the mode and the answers
    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.getIvfMode() == "auto" and loaded.layout.ivf is None and loaded.layout.shards[0].probes
    again = rows_by_id(loaded.similarItems().toArrow())
    assert again == sim


def test_parts_are_compact_regions():
    """With centroids, a query's nprobe nearest lists fall in few parts (not one part per list, as
    packing by size alone gives), parts stay balanced, and a huge list spreads over parts."""
    from sparknn.spark.ivf_plan import dedupe_parts, plan_parts

    x = clustered(40_000, 16, clusters=200, seed=5)
    index = sparknn.Index(16, "l2", "ivf", nlist=400)
    index.train(x)
    sizes = np.bincount(index.nearest_lists(x, 1)[:, 0], minlength=400)
    sizes[7] += 30_000  # one skewed list
    total = int(sizes.sum())
    probes = index.nearest_lists(x[:2000], 8)

    def parts_per_query(offsets, parts):
        return np.mean([len({p for lst in row for p in parts[offsets[lst]:offsets[lst + 1]]}) for row in probes])

    compact = plan_parts(sizes, 80, total * 80 // 16, 2, index.centroids)
    by_size = plan_parts(sizes, 80, total * 80 // 16, 2)
    for _offsets, _pieces, items in (compact, by_size):
        assert items.sum() == total and len(items) == 16
        assert items.max() <= 1.2 * total / 16  # balanced, the skewed list included
    spatial = parts_per_query(*dedupe_parts(*compact[:2]))
    scattered = parts_per_query(*dedupe_parts(*by_size[:2]))
    assert spatial <= 0.7 * scattered, (spatial, scattered)  # measured: 3.5 vs 5.8 parts per query
    offsets, parts = dedupe_parts(*compact[:2])
    assert offsets[8] - offsets[7] >= 2  # the skewed list spans consecutive parts


def test_driver_build_that_cannot_fit_is_routed_or_refused(spark, tmp_path):
    """'auto' builds on executors what the driver cannot hold; an explicit driver build that cannot
    fit is refused with the numbers before any data moves (it would die in an OutOfMemoryError)."""
    from sparknn.index import IndexSpec
    from sparknn.spark.estimator import driver_or_routed
    from sparknn.spark.params import FitOptions
    from sparknn.spark.ivf_memory import driver_collect_budget

    heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    budget, source = driver_collect_budget(spark)
    assert 0 < budget <= heap // 2 and "driver" in source
    df = spark_items(spark, BASE[:500], partitions=2)  # 500 x (16 x 4 + 8) = 36,000 bytes to collect
    options = FitOptions(IndexSpec(kind="ivf"), ivf_mode="auto")
    assert driver_or_routed(df, "vector", options) == "driver"
    assert driver_or_routed(df, "vector", FitOptions(IndexSpec(kind="ivf"), ivf_mode="routed")) == "routed"
    with pytest.raises(Exception, match="ivfMode"):
        KNN(indexType="ivf", ivfMode="everywhere")
    conf = spark.sparkContext._conf  # the driver-side copy of the conf, read at each fit
    old = conf.get("spark.driver.maxResultSize", "1g")
    conf.set("spark.driver.maxResultSize", "60k")  # half: 30 KiB < 35.2 KiB
    try:
        auto = KNN(k=5, indexType="ivf", nlist=8, nprobe=8, featuresCol="vector").fit(df)
        assert auto.layout.ivf is not None, "too large for the driver: built in parts on executors"
        assert all(len(r["neighbors"]) == 5 for r in auto.similarItems().toArrow().to_pylist())
        path = tmp_path / "index"
        with pytest.raises(sparknn.InvalidArgumentError,
                           match=r"collects 500 vectors of dim 16, about 35\.2 KiB, but the driver can take "
                                 r"30\.0 KiB \(half of spark\.driver\.maxResultSize=60k\): use ivfMode='routed'"):
            KNN(indexType="ivf", ivfMode="driver", featuresCol="vector", indexPath=str(path)).fit(df)
        assert not os.listdir(path), "a refused fit leaves no files"
        with pytest.raises(sparknn.InvalidArgumentError, match=r"use indexType='ivf' .* or numShards=N"):
            KNN(indexType="hnsw", featuresCol="vector").fit(df)
        conf.set("spark.driver.maxResultSize", "80k")
        assert KNN(indexType="flat", featuresCol="vector").fit(df).layout.count == 500
    finally:
        conf.set("spark.driver.maxResultSize", old)


def test_driver_build_reads_collected_chunks_in_batches():
    """The driver build reads the collected column in batches (in place within a chunk, joined
    across chunks), never as one copy: the batches are the rows in order, and a row of
    another length is still rejected."""
    from sparknn.spark.build import vector_batches

    x = clustered(1000, 8, seed=5)
    cuts = [0, 1, 3, 300, 301, 999, 1000]  # chunks of 1, 2, 297, 1, 698, 1 rows
    chunks = [pa.array(x[a:b].tolist(), type=pa.list_(pa.float32())) for a, b in zip(cuts, cuts[1:])]
    column = pa.chunked_array(chunks)
    batches = list(vector_batches(column, "vector", rows=256))
    assert np.shares_memory(batches[2][1], column.chunk(4).values.to_numpy())  # rows 512-767: one chunk
    assert [first for first, _ in batches] == [0, 256, 512, 768]
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), x)
    ragged = pa.chunked_array(chunks[:3] + [pa.array([[1.0] * 7], type=pa.list_(pa.float32()))])
    with pytest.raises(sparknn.InvalidArgumentError, match="row 44 has 7 values but row 0 has 8"):
        list(vector_batches(ragged, "vector", rows=256))
    # In another order (the ids' order): each batch gathers its rows chunk by chunk, whatever the
    # chunks' value type, and a row of another length is still rejected.
    order = np.random.default_rng(3).permutation(len(x)).astype(np.uint64)  # as pc.sort_indices gives it
    doubles = pa.chunked_array([c.cast(pa.list_(pa.float64())) for c in chunks])
    for col in (column, doubles, pa.chunked_array([pa.array([], type=pa.list_(pa.float32()))] + chunks)):
        got = list(vector_batches(col, "vector", rows=256, order=order))
        assert [first for first, _ in got] == [0, 256, 512, 768]
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), x[order])
    with pytest.raises(sparknn.InvalidArgumentError, match="has vectors of length 7 but the index has dim=8"):
        list(vector_batches(ragged, "vector", rows=256, order=np.arange(len(ragged))[::-1]))


def test_a_connect_client_builds_only_what_fits_its_own_memory(spark, monkeypatch):
    """On Spark Connect the driver build runs on the client: its available memory bounds the budget."""
    from sparknn.spark import ivf_memory, runtime

    assert 0 < ivf_memory.available_memory() < 1 << 50
    monkeypatch.setattr(runtime, "driver_heap", lambda s: None)  # what a Connect session reports
    monkeypatch.setattr(ivf_memory, "available_memory", lambda: 10 << 20)
    budget, source = ivf_memory.driver_collect_budget(spark)
    assert budget == 5 << 20 and "Spark Connect client" in source
    monkeypatch.setattr(ivf_memory, "available_memory", lambda: 1 << 40)
    budget, source = ivf_memory.driver_collect_budget(spark)
    assert budget < 1 << 39 and "spark.driver" in source


# Bad vectors are found where the routed build reads them (no pass of their own): the sample for
# k-means, or a build task when the sample missed them (a file of many rows, one bad); either way
# the error names the column, the count and an example id, as the other builds' do.
_ROUTED_BAD = [b for b in BAD_DATA]


@pytest.mark.parametrize("name, params, schema, rows, message", _ROUTED_BAD, ids=[b[0] for b in _ROUTED_BAD])
@pytest.mark.parametrize("padding", [0, 3000])
def test_routed_build_refuses_bad_data_with_the_usual_errors(spark, tmp_path, monkeypatch, name, params, schema, rows,
                                                             message, padding):
    """``padding`` good rows around the bad ones, and a k-means sample of about 200 of them: the
    sample then misses the bad rows (a fixed hash of the ids draws it) and a build task finds them."""
    rows = list(rows)
    if padding and rows:
        from sparknn.spark import ivf_build
        monkeypatch.setattr(ivf_build, "sample_size", lambda nlist, n: 200)
        message = message.replace("of 2 rows", r"of \d+ rows")
        integer = schema.startswith("id bigint")
        width = len(next(v for _, v in rows if v is not None))
        filler = [(10_000 + i if integer else f"pad-{i}", [float(i % 7 + 1)] * width) for i in range(padding)]
        rows = filler[:padding // 2] + rows + filler[padding // 2:]
    df = spark.createDataFrame(rows, schema)
    knn = KNN(indexType="ivf", ivfMode="routed", nlist=1, featuresCol="vector", indexPath=str(tmp_path / "idx"),
              **params)
    with pytest.raises(Exception, match=message):
        knn.fit(df)


def test_only_refused_data_costs_the_explaining_pass(monkeypatch):
    """A refusal of data (a ValueError, or a task's error naming one) runs the JVM pass that
    explains it; any other failure (an executor lost, out of memory) is reported at once."""
    from sparknn.spark import ivf_build

    passes = []
    monkeypatch.setattr(ivf_build, "validate", lambda *args: passes.append(args))
    explained = ivf_build._explained("df", "vector", "id", "bigint")
    with pytest.raises(ValueError):
        with explained:
            raise ValueError("row 3 has 2 values")
    assert len(passes) == 1
    with pytest.raises(RuntimeError, match="Lost executor"):
        with ivf_build._explained("df", "vector", "id", "bigint"):
            raise RuntimeError("Lost executor 1 on 127.0.0.1")
    assert len(passes) == 1
    with pytest.raises(RuntimeError):
        with ivf_build._explained("df", "vector", "id", "bigint"):
            raise RuntimeError("PythonException: sparknn._core.InvalidArgumentError: vector row 7 has a NaN")
    assert len(passes) == 2
