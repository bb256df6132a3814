"""The driver build reads a plain Parquet scan with pyarrow (no Spark job), and only a plain scan:
same results as Spark's collection, every other plan collected through Spark, same errors."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import clustered, exact_knn
from test_spark import BAD_DATA

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import functions as F
from sparknn.arrow import decoding_pool
from sparknn.errors import InvalidArgumentError
from sparknn.index import Index
from sparknn.spark import KNN
from sparknn.spark import build as build_module
from sparknn.spark import direct_read
from sparknn.spark.direct_read import find_scan

pytestmark = pytest.mark.spark

BASE = clustered(1200, 12, seed=11)


def vector_column(x, value_type, fixed_size):
    n, dim = x.shape
    values = pa.array(x.reshape(-1)).cast(value_type)
    if fixed_size:
        return pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), values)


def write_files(directory, vectors, ids, parts=3, value_type="double", fixed_size=False, ids_last=False):
    """The rows as ``parts`` Parquet files written by pyarrow, with other columns: ``emb2`` holds
    each vector reversed."""
    os.makedirs(directory, exist_ok=True)
    for p, rows in enumerate(np.array_split(np.arange(len(vectors)), parts)):
        columns = {
            "key": pa.array([ids[r] for r in rows]),
            "emb": vector_column(vectors[rows], value_type, fixed_size),
            "emb2": vector_column(vectors[rows, ::-1], value_type, fixed_size),
            "note": pa.array(["x"] * len(rows)),
        }
        if ids_last:
            columns["key"] = columns.pop("key")
        pq.write_table(pa.table(columns), os.path.join(directory, f"part-{p}.parquet"))
    return str(directory)


@pytest.fixture
def no_spark_collection(monkeypatch):
    """Fails the test if the driver build collects through Spark."""
    def refuse(df):
        raise AssertionError("collected through Spark, not read from the files")
    monkeypatch.setattr(build_module, "collect_arrow", refuse)


def neighbours(model, id_col="key"):
    rows = model.similarItems().select(id_col, "neighbors").collect()
    return {r[0]: [n["id"] for n in r[1]] for r in rows}


@pytest.mark.parametrize("id_kind, fixed_size, ids_last", [("bigint", False, False), ("string", False, False),
                                                      ("bigint", True, False), ("string", False, True)])
def test_parquet_scan_read_directly_equals_exact(spark, tmp_path, no_spark_collection, id_kind, fixed_size,
                                                 ids_last):
    ids = [f"item-{i}" for i in range(len(BASE))] if id_kind == "string" else list(range(5, 5 + len(BASE)))
    df = spark.read.parquet(write_files(tmp_path / "items", BASE, ids, fixed_size=fixed_size, ids_last=ids_last))
    scan = find_scan(df, "key", "emb", id_kind)
    assert scan is not None and len(scan.paths) == 3 and scan.rows == len(BASE)
    model = KNN(k=5, metric="l2", indexType="flat", featuresCol="emb", idCol="key").fit(df)
    got = neighbours(model)
    truth, _ = exact_knn(BASE, BASE, 6, "l2")
    assert len(got) == len(BASE)
    for row, want in enumerate(truth):
        want = [ids[j] for j in want if j != row][:5]
        assert got[ids[row]] == want


@pytest.mark.parametrize("value_type", ["float", "double"])
def test_direct_read_holds_each_row_group_as_compact_float32(spark, tmp_path, value_type, monkeypatch):
    """The vectors come back as float32 fixed-size lists, one chunk per row group of every file
    (no list column Parquet's decoder over-reserves), in file order, beside their ids."""
    directory = tmp_path / "items"
    os.makedirs(directory)
    for p, rows in enumerate(np.array_split(np.arange(len(BASE)), 2)):
        pq.write_table(pa.table({"key": pa.array(rows.astype(np.int64)),
                                 "emb": vector_column(BASE[rows], value_type, False)}),
                       str(directory / f"part-{p}.parquet"), row_group_size=250)
    scan = find_scan(spark.read.parquet(str(directory)), "key", "emb", "bigint")
    pools, decode = [], direct_read._vector_chunk

    def spy(*args):  # decoded from the pool that keeps freed batches for the next (arrow.decoding_pool)
        pools.append(pa.default_memory_pool().backend_name)
        return decode(*args)

    monkeypatch.setattr(direct_read, "_vector_chunk", spy)
    before = pa.default_memory_pool().backend_name
    table, block = build_module.read_scan(scan, "bigint")
    assert set(pools) == {decoding_pool().backend_name} and pa.default_memory_pool().backend_name == before
    vectors = table.column("v")
    assert vectors.type == pa.list_(pa.float32(), BASE.shape[1]) and vectors.num_chunks == 2 * 3
    in_file_order = np.concatenate([c.flatten().to_numpy().reshape(-1, BASE.shape[1]) for c in vectors.chunks])
    np.testing.assert_array_equal(in_file_order[np.argsort(table.column("id"))],
                                  BASE.astype(value_type).astype(np.float32))
    np.testing.assert_array_equal(block.array(), in_file_order)  # the chunks are views of one block


@pytest.mark.parametrize("id_kind,kind", [("bigint", "ivf"), ("string", "ivf"), ("bigint", "flat"),
                                          ("string", "hnsw")])
def test_a_driver_build_keeps_the_read_block_as_its_vectors(spark, tmp_path, monkeypatch, id_kind, kind):
    """A plain scan's vectors are read into one block that the index adopts (ivf: as its lists),
    its rows in id order (not the files'): the same model as the rows collected through Spark."""
    rng = np.random.default_rng(4)
    keys = rng.permutation(len(BASE)) * 3 + 1  # files in another order than the ids
    ids = [f"item-{k:06d}" for k in keys] if id_kind == "string" else [int(k) for k in keys]
    df = spark.read.parquet(write_files(tmp_path / "items", BASE, ids))
    adopted = []
    adopt = Index.adopt_rows

    def spy(self, block, *args, **kwargs):
        adopted.append(block.rows)
        return adopt(self, block, *args, **kwargs)

    monkeypatch.setattr(Index, "adopt_rows", spy)
    # hnsw: a graph built on several threads differs from run to run; a search as wide as the
    # data answers exactly from either
    params = dict(nlist=16, nprobe=4) if kind == "ivf" else dict(efSearch=len(BASE)) if kind == "hnsw" else {}
    knn = KNN(k=5, metric="l2", indexType=kind, featuresCol="emb", idCol="key", **params)
    direct = neighbours(knn.fit(df))
    assert adopted == [len(BASE)]
    filtered = df.where(F.col("key").isNotNull())  # every row, but not a plain scan: collected through Spark
    assert find_scan(filtered, "key", "emb", id_kind) is None
    collected = neighbours(knn.fit(filtered))
    assert adopted == [len(BASE)]
    assert direct == collected


def test_vectors_of_another_length_in_one_file_get_the_usual_error(spark, tmp_path):
    """A file whose vectors are longer than the others' is read as it is, and the build refuses it
    as it refuses the same rows collected through Spark."""
    directory = write_files(tmp_path / "items", BASE, list(range(len(BASE))), parts=2)
    longer = np.hstack([BASE[:5], BASE[:5, :1]])
    pq.write_table(pa.table({"key": pa.array(np.arange(5000, 5005)), "emb": vector_column(longer, "double", False),
                             "emb2": vector_column(longer, "double", False), "note": pa.array(["x"] * 5)}),
                   os.path.join(directory, "part-9.parquet"))
    df = spark.read.parquet(directory)
    assert find_scan(df, "key", "emb", "bigint") is not None
    with pytest.raises(InvalidArgumentError, match="values but row 0 has|length"):
        KNN(indexType="flat", featuresCol="emb", idCol="key").fit(df)


def test_spark_written_parquet_and_projection_read_directly(spark, tmp_path, no_spark_collection):
    path = str(tmp_path / "spark-written")
    source = spark.createDataFrame(pa.table({"key": pa.array(np.arange(len(BASE), dtype=np.int64)),
                                             "emb": pa.array(list(BASE))}).to_pandas())
    source.repartition(2).write.parquet(path)
    df = spark.read.parquet(path).select("emb", "key")
    assert find_scan(df, "key", "emb", "bigint") is not None
    model = KNN(k=4, metric="cosine", indexType="ivf", nlist=8, nprobe=8, featuresCol="emb",
                idCol="key").fit(df)
    truth, _ = exact_knn(BASE, BASE, 5, "cosine")
    got = neighbours(model)
    assert all(got[i] == [j for j in truth[i] if j != i][:4] for i in range(len(BASE)))


@pytest.mark.parametrize("name, change", [
    ("filter", lambda df: df.where(F.col("key") < 700)),
    ("limit", lambda df: df.limit(700)),
    ("renamed", lambda df: df.withColumnRenamed("emb", "tmp").withColumnRenamed("emb2", "emb")),
    ("computed", lambda df: df.withColumn("emb", F.transform("emb", lambda x: x * 2))),
    ("union", lambda df: df.where(F.col("key") < 300).union(df.where(F.col("key") >= 1000))),
])
def test_other_plans_are_collected_through_spark(spark, tmp_path, name, change):
    df = change(spark.read.parquet(write_files(tmp_path / "items", BASE, list(range(len(BASE))))))
    assert find_scan(df, "key", "emb", "bigint") is None, name
    model = KNN(k=3, metric="l2", indexType="flat", featuresCol="emb", idCol="key").fit(df)
    expected = {r[0] for r in df.select("key").collect()}
    assert set(neighbours(model)) == expected  # what the plan selects, not the files' rows


def test_files_of_different_types_are_collected_through_spark(spark, tmp_path):
    directory = tmp_path / "mixed"
    write_files(directory / "a", BASE[:600], list(range(600)), parts=1, value_type="float")
    write_files(directory / "b", BASE[600:], list(range(600, 1200)), parts=1, value_type="double")
    for name in ("a", "b"):
        os.rename(directory / name / "part-0.parquet", directory / f"{name}.parquet")
        os.rmdir(directory / name)
    # Spark reads them with one file's schema (it cannot merge float and double lists): how the
    # other file converts is Spark's rule, so the files are not read directly.
    assert find_scan(spark.read.parquet(str(directory)), "key", "emb", "bigint") is None


def test_partition_column_as_id_is_collected_through_spark(spark, tmp_path):
    directory = tmp_path / "partitioned"
    for part in (1, 2):
        write_files(directory / f"shard={part}", BASE[:3] + part, [10 * part + i for i in range(3)], parts=1)
    df = spark.read.parquet(str(directory))
    assert find_scan(df, "shard", "emb", "int") is None  # the column's value is in the directory name
    assert find_scan(df, "key", "emb", "bigint") is not None


@pytest.mark.parametrize("name, params, schema, rows, message", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_in_files_gets_the_same_errors(spark, tmp_path, name, params, schema, rows, message):
    path = str(tmp_path / "bad")
    spark.createDataFrame(rows, schema).coalesce(1).write.parquet(path)
    df = spark.read.parquet(path)
    with pytest.raises(InvalidArgumentError, match=message):
        KNN(indexType="flat", featuresCol="vector", indexPath=str(tmp_path / "index"), **params).fit(df)
    assert os.listdir(tmp_path / "index") == [], "a failed fit leaves no index files"


def test_unreadable_file_falls_back_to_spark(spark, tmp_path, monkeypatch):
    df = spark.read.parquet(write_files(tmp_path / "items", BASE, list(range(len(BASE)))))
    scan = find_scan(df, "key", "emb", "bigint")

    def broken(*args, **kwargs):
        raise OSError("simulated read failure")
    monkeypatch.setattr(pq, "read_table", broken)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", broken)
    assert build_module.read_scan(scan, "bigint") == (None, None)
    model = KNN(k=3, metric="l2", indexType="flat", featuresCol="emb", idCol="key").fit(df)
    assert len(neighbours(model)) == len(BASE)
