"""KNN(groupCol=...) on a real local Spark session: similarItems and transform against per-group
brute force, groups of every shape, int and string groups and ids, save/load, bad input."""

import numpy as np
import pytest
from conftest import clustered, exact_knn, mixed_groups, spark_items

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import functions as F
from sparknn.errors import InvalidArgumentError
from sparknn.spark import KNN, KNNModel, group_plan

pytestmark = pytest.mark.spark

K = 5


def _frame(spark, x, codes, string_groups, string_ids):
    ids = [f"i{j}" for j in range(len(x))] if string_ids else np.arange(len(x)) * 2 + 7
    df = spark_items(spark, x, ids=ids, id_type="string" if string_ids else "bigint", partitions=3)
    values = spark.createDataFrame([(ids[j] if string_ids else int(ids[j]),
                                     f"g{codes[j]}" if string_groups else int(codes[j])) for j in range(len(x))],
                                   ["id", "category"])
    return df.join(values, "id"), ids


def _truth(x, codes, queries, qcodes, k, metric, exclude_self):
    out = []
    for i, q in enumerate(queries):
        members = np.flatnonzero(codes == qcodes[i])
        if exclude_self:
            members = members[members != i]
        if not len(members):
            out.append(set())
            continue
        idx, _ = exact_knn(x[members], q[None, :], min(k, len(members)), metric)
        out.append(set(members[idx[0]].tolist()))
    return out


@pytest.mark.parametrize("string_groups,string_ids", [(False, False), (True, True), (True, False)])
def test_grouped_similar_items_and_transform_equal_per_group_brute_force(spark, tmp_path, string_groups,
                                                                          string_ids):
    x = clustered(3000, 8, 20, seed=3)
    codes = mixed_groups(len(x), large=(500, 700))
    df, ids = _frame(spark, x, codes, string_groups, string_ids)
    model = KNN(k=K, metric="l2", indexType="flat", featuresCol="vector", groupCol="category").fit(df)
    assert model.layout.group_type == ("string" if string_groups else "bigint")
    position = {v: j for j, v in enumerate(ids)}
    got = {position[r["id"]]: {position[n["id"]] for n in r["neighbors"]} for r in model.similarItems().collect()}
    assert len(got) == len(x)
    truth = _truth(x, codes, x, codes, K, "l2", exclude_self=True)
    assert all(got[j] == truth[j] for j in range(len(x)))
    # Queries name their group; a group without items gets an empty list, and every row is kept.
    q = clustered(60, 8, 20, seed=4)
    qcodes = np.concatenate([codes[:50], [10_000] * 10])
    qids = list(range(60))
    qdf = spark_items(spark, q, ids=qids).withColumn(
        "category", F.lit(None).cast("string" if string_groups else "bigint"))
    mapping = spark.createDataFrame([(j, f"g{qcodes[j]}" if string_groups else int(qcodes[j])) for j in range(60)],
                                    ["id", "category"])
    qdf = qdf.drop("category").join(mapping, "id")
    rows = {r["id"]: {position[n["id"]] for n in r["neighbors"]} for r in model.transform(qdf).collect()}
    assert sorted(rows) == qids
    want = _truth(x, codes, q, qcodes, K, "l2", exclude_self=False)
    assert all(rows[j] == want[j] for j in range(60))
    # Saved and loaded with the model.
    model.write().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.getGroupCol() == "category" and loaded.layout.group_type == model.layout.group_type
    again = {position[r["id"]]: {position[n["id"]] for n in r["neighbors"]} for r in loaded.similarItems().collect()}
    assert again == got


@pytest.mark.parametrize("string_groups", [False, True])
def test_large_groups_own_shards_and_pieces_equal_per_group_brute_force(spark, tmp_path, monkeypatch,
                                                                        string_groups):
    # Thresholds scaled down so small data has every shape: hashed small groups, large groups on a
    # shard of their own, and groups split into pieces (each searched in every piece, merged).
    monkeypatch.setattr(group_plan, "SMALL", 200)
    x = clustered(3000, 8, 20, seed=11)
    codes = mixed_groups(len(x), seed=4, large=(450, 1200))
    df, ids = _frame(spark, x, codes, string_groups, True)
    model = KNN(k=K, metric="cosine", indexType="flat", featuresCol="vector", groupCol="category",
                numShards=8).fit(df)
    pieces = model.layout.group_pieces
    assert any(count == 1 for _, _, count in pieces) and any(count >= 3 for _, _, count in pieces), pieces
    position = {v: j for j, v in enumerate(ids)}
    rows = model.similarItems().collect()
    assert len(rows) == len(x)
    got = {position[r["id"]]: {position[n["id"]] for n in r["neighbors"]} for r in rows}
    truth = _truth(x, codes, x, codes, K, "cosine", exclude_self=True)
    assert [j for j in range(len(x)) if got[j] != truth[j]] == []
    # Queries of every kind of group, one of none, each row kept once.
    q = clustered(80, 8, 20, seed=12)
    sizes = np.bincount(codes)
    qcodes = np.concatenate([[np.argmax(sizes)] * 30, [np.flatnonzero(sizes == 450)[0]] * 20, codes[:20],
                             [10_000] * 10])
    mapping = spark.createDataFrame([(j, f"g{qcodes[j]}" if string_groups else int(qcodes[j]))
                                     for j in range(len(q))], ["id", "category"])
    qdf = spark_items(spark, q, ids=list(range(len(q)))).join(mapping, "id")
    out = {r["id"]: [position[n["id"]] for n in r["neighbors"]] for r in model.transform(qdf).collect()}
    assert sorted(out) == list(range(len(q)))
    want = _truth(x, codes, q, qcodes, K, "cosine", exclude_self=False)
    assert all(set(out[j]) == want[j] and len(out[j]) == len(want[j]) for j in range(len(q)))
    # Saved and loaded with its pieces; a null query group is named.
    model.write().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.layout.group_pieces == pieces
    again = {position[r["id"]]: {position[n["id"]] for n in r["neighbors"]} for r in loaded.similarItems().collect()}
    assert again == got
    with pytest.raises(Exception, match="groupCol 'category' is null in a query row"):
        loaded.transform(qdf.withColumn("category", F.when(F.col("id") == 3, None).otherwise(F.col("category"))))\
            .collect()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_large_groups_use_the_models_index_with_high_recall(spark, kind):
    # A 6000-item group is larger than a hashed shard's share (9000 / 4): split into two pieces of
    # the model's kind; the others (up to 1000 items) are exact in their hashed shards.
    x = clustered(9000, 16, 40, seed=5)
    rest = mixed_groups(3000, seed=6, large=(1000,)) + 1
    codes = np.concatenate([np.zeros(6000, dtype=np.int64), rest])
    df, ids = _frame(spark, x, codes, False, False)
    model = KNN(k=10, metric="l2", featuresCol="vector", groupCol="category", indexType=kind, nprobe=16,
                efSearch=64, numShards=4).fit(df)
    assert [(v, c) for v, _, c in model.layout.group_pieces] == [(0, 2)]
    position = {v: j for j, v in enumerate(ids)}
    got = {position[r["id"]]: [position[n["id"]] for n in r["neighbors"]] for r in model.similarItems().collect()}
    truth = _truth(x, codes, x, codes, 10, "l2", exclude_self=True)
    big = np.flatnonzero(codes == 0)
    assert np.mean([len(set(got[j]) & truth[j]) / 10 for j in big]) >= 0.95
    assert all(set(got[j]) == truth[j] for j in np.flatnonzero(codes != 0)), "groups up to grouped.SMALL are exact"
    q = clustered(200, 16, 40, seed=7)
    qdf = spark_items(spark, q, ids=list(range(200))).withColumn("category", F.lit(0).cast("bigint"))
    out = {r["id"]: [position[n["id"]] for n in r["neighbors"]] for r in model.transform(qdf).collect()}
    want = _truth(x, codes, q, np.zeros(200, dtype=np.int64), 10, "l2", exclude_self=False)
    assert np.mean([len(set(out[j]) & want[j]) / 10 for j in range(200)]) >= 0.95


def test_grouped_bad_input_is_named_before_any_job(spark):
    x = clustered(100, 4, 3, seed=1)
    df, _ = _frame(spark, x, np.arange(100) % 4, False, False)
    with pytest.raises(InvalidArgumentError, match="groupCol 'nope' is not a column of the items"):
        KNN(featuresCol="vector", groupCol="nope").fit(df)
    with pytest.raises(InvalidArgumentError, match="groups are integers or strings"):
        KNN(featuresCol="vector", groupCol="category").fit(df.withColumn("category", F.col("category") * 0.5))
    model = KNN(k=3, featuresCol="vector", indexType="flat", groupCol="category").fit(df)
    q = spark_items(spark, x[:5])
    with pytest.raises(InvalidArgumentError, match="not a column of the queries"):
        model.transform(q)
    with pytest.raises(InvalidArgumentError, match="is string but the items' groups are bigint"):
        model.transform(q.withColumn("category", F.lit("a")))
    with pytest.raises(InvalidArgumentError, match="includeSelf is not supported with groupCol"):
        model.setIncludeSelf(True).similarItems()
    with pytest.raises(Exception, match="groupCol 'category' is null for the item of id 7"):
        KNN(featuresCol="vector", indexType="flat", groupCol="category").fit(
            df.withColumn("category", F.when(F.col("id") == 7, None).otherwise(F.col("category"))))


def test_cli_group_col_on_spark_equals_in_process(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sparknn.cli import main

    x = clustered(800, 8, 10, seed=8)
    codes = mixed_groups(len(x), seed=2, large=(500, 700))
    table = pa.table({"id": np.arange(len(x)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 8),
                      "category": [f"c{c}" for c in codes]})
    path = str(tmp_path / "items.parquet")
    pq.write_table(table, path)
    args = ["similar", path, "-k", str(K), "--index", "flat", "--metric", "l2", "--group-col", "category", "-q"]
    assert main(args + ["-o", str(tmp_path / "local.parquet")]) == 0
    assert main(args + ["-o", str(tmp_path / "spark.parquet"), "--spark", "local[2]"]) == 0

    def neighbours(name):
        t = pq.read_table(tmp_path / name)
        return {i: sorted(n["id"] for n in ns) for i, ns in zip(t.column("id").to_pylist(),
                                                                 t.column("neighbors").to_pylist())}

    assert neighbours("spark.parquet") == neighbours("local.parquet")


def test_cli_group_col_on_spark_takes_a_recall_target(spark, tmp_path, capsys):
    """`similar --group-col --spark`: the default recall target tunes the large group's index (two
    pieces of a 6000-item group here) at fit, and the summary says what was chosen."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sparknn.cli import main

    rng = np.random.default_rng(4)
    x = (clustered(9500, 24, 300, seed=3) * 0.4 + rng.standard_normal((9500, 24))).astype(np.float32)
    codes = np.repeat([0, 1, 2], [6000, 3000, 500])
    table = pa.table({"id": np.arange(len(x)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 24),
                      "category": codes})
    pq.write_table(table, tmp_path / "items.parquet")
    assert main(["similar", str(tmp_path / "items.parquet"), "-o", str(tmp_path / "out.parquet"), "--metric", "l2",
                 "--group-col", "category", "--spark", "local[2]"]) == 0
    said = capsys.readouterr().out
    assert "recall target: 2 large group index(es)" in said and "target 0.95" in said, said
    assert pq.read_table(tmp_path / "out.parquet").num_rows == len(x)
