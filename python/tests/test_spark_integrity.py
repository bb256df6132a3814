"""Side files of a Spark model are verified, and one task attempt's files are committed together
(issue 16): a damaged, missing or foreign ids/items/probes file is an IndexFileError naming it,
never a wrong answer; two attempts of one build task never pair their files."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from conftest import clustered, spark_items

pyspark = pytest.importorskip("pyspark")
import sparknn
from sparknn.errors import IndexFileError
from sparknn.index import IndexSpec
from sparknn.spark import KNN, ivf_build, sharding, worker
from sparknn.spark.storage import keep_only

pytestmark = pytest.mark.spark

BASE = clustered(600, 8, seed=31)


def flip(path: str, at: int) -> None:
    with open(path, "rb+") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


def side(model, role: str, shard: int = 0) -> str:
    layout = model.layout
    return layout.path(dict(layout.side_files(layout.shards[shard]))[role])


# --------------------------------------------------------------------------- verified side files
def test_flipped_routed_items_file_is_named(spark):
    model = KNN(k=5, metric="l2", indexType="ivf", ivfMode="routed", nlist=8, nprobe=2,
                featuresCol="vector").fit(spark_items(spark, BASE, partitions=2))
    assert all(s.digest("items") for s in model.layout.shards)
    path = side(model, "items")
    flip(path, os.path.getsize(path) // 2)  # inside the vectors: still a readable Arrow file
    with pytest.raises(Exception, match=r"items file '.*items-0-a\d+\.arrow' fails its checksum"):
        model.similarItems().collect()
    # transform with integer ids never reads the items file: its answer does not depend on it
    assert model.transform(spark_items(spark, BASE[:20])).count() == 20


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_flipped_or_foreign_string_ids_are_refused(spark, kind):
    names = [f"item-{i}" for i in range(len(BASE))]
    knn = KNN(k=4, metric="l2", indexType=kind, nlist=8, featuresCol="vector")
    model = knn.fit(spark_items(spark, BASE, ids=names, id_type="string"))
    assert model.layout.positional and model.layout.shards[0].digest("ids")
    good = model.similarItems().toArrow()
    path = side(model, "ids")
    saved = path + ".orig"
    shutil.copyfile(path, saved)
    flip(path, os.path.getsize(path) // 2)  # in the strings: item-0 -> itam-0 and the like
    with pytest.raises(Exception, match=r"ids file .* fails its checksum"):
        model.similarItems().collect()
    # A foreign ids file of the same size: another model's (other names, same length).
    other = KNN(k=4, metric="l2", indexType=kind, nlist=8, featuresCol="vector").fit(
        spark_items(spark, BASE, ids=[f"mete-{i}" for i in range(len(BASE))], id_type="string"))
    shutil.copyfile(side(other, "ids"), path)
    assert os.path.getsize(path) == os.path.getsize(saved)
    with pytest.raises(Exception, match=r"ids file .* fails its checksum.*from another build"):
        model.similarItems().collect()
    os.remove(path)
    with pytest.raises(Exception, match=r"ids file .* is missing"):
        model.similarItems().collect()
    os.replace(saved, path)
    assert model.similarItems().toArrow().sort_by("id").equals(good.sort_by("id"))
    if kind == "ivf":  # the driver-built ivf's probe lists
        probes = side(model, "probes")
        flip(probes, os.path.getsize(probes) - 200)
        with pytest.raises(Exception, match=r"probes file .* fails its checksum"):
            model.similarItems().collect()


def test_saved_model_with_a_damaged_side_file_is_refused_at_load(spark, tmp_path):
    from sparknn.spark import KNNModel

    model = KNN(k=3, metric="l2", indexType="flat", featuresCol="vector").fit(
        spark_items(spark, BASE, ids=[f"s{i}" for i in range(len(BASE))], id_type="string"))
    path = str(tmp_path / "m")
    model.write().save(path)
    ids = os.path.join(path, "index", "ids-0.arrow")
    with open(ids, "ab") as f:
        f.write(b"x")
    with pytest.raises(IndexFileError, match=r"ids file .*ids-0.arrow' has \d+ bytes"):
        KNNModel.load(path)
    os.remove(ids)
    with pytest.raises(IndexFileError, match=r"ids file .*ids-0.arrow' is missing"):
        KNNModel.load(path)


# --------------------------------------------------------------------------- task attempts
def _shard_batches(ids, vectors, shard=0):
    n = len(ids)
    v = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]).cast(
        pa.list_(pa.float32()))
    return [pa.RecordBatch.from_arrays([pa.array(ids), v, pa.array(np.full(n, shard, np.int32))],
                                       names=["id", "v", "shard"])]


def _layout(results, root, **kw):
    shards = tuple(sharding.shard_files(r, root, "shard") for r in results)
    return worker.Layout(8, "l2", "flat", "string", True, shards, root, **kw)


def test_two_attempts_of_a_sharded_build_task(tmp_path):
    """Two attempts of one shard's task, on different rows (a non-deterministic input): the layout
    from the delivered result pairs only that attempt's files, the others are removed, and an
    index of one attempt beside the other's ids file is refused."""
    root, prefix = str(tmp_path), "m-1234"
    spec = IndexSpec(kind="flat", metric="l2", ef_construction=40, ef_search=16, seed=1, threads=1)
    kw = dict(root=root, prefix=prefix, dim=8, id_type="string", id_col="id", features="v", positional=True,
              spec=spec)
    names = [f"x{i}" for i in range(len(BASE))]
    others = [f"y{i}" for i in range(len(BASE))]
    first = [b.to_pylist()[0] for b in sharding._build_task(_shard_batches(names, BASE), attempt=1, **kw)]
    second = [b.to_pylist()[0] for b in sharding._build_task(_shard_batches(others, BASE), attempt=2, **kw)]
    assert first[0]["index"] != second[0]["index"] and first[0]["ids"] != second[0]["ids"]
    # A mix of the two attempts is refused, whichever digests the model holds.
    mixed = dict(second[0], index=first[0]["index"])
    with pytest.raises(IndexFileError, match="another build or task attempt"):
        worker.open_shards(_layout([mixed], root))
    mixed = dict(first[0], ids=second[0]["ids"])
    with pytest.raises(IndexFileError, match=r"ids file .*-ids-0-a2\.arrow' fails its checksum"):
        worker.open_shards(_layout([mixed], root))
    # Spark delivered attempt 2: only its files stay, and they load and answer with its ids.
    layout = _layout(second, root)
    keep_only(root, prefix, layout.files())
    assert sorted(os.listdir(root)) == sorted(layout.files())
    shards = worker.open_shards(layout)
    ids, dist = worker.search(layout, shards, BASE[:5], 1, 16, 1)
    assert worker.user_ids(layout, shards, ids[:, 0]).to_pylist() == others[:5]


def test_two_attempts_of_a_routed_build_task(tmp_path):
    root, prefix = str(tmp_path), "m-5678"
    quantizer = sparknn.Index(8, "l2", "ivf", nlist=4, nprobe=2)
    quantizer.train(BASE)
    qpath = os.path.join(root, f"{prefix}-quantizer.snn")
    quantizer.save(qpath)
    lists = quantizer.nearest_lists(BASE, 2).astype(np.int32)

    def batches(ids):
        v = pa.FixedSizeListArray.from_arrays(pa.array(BASE.reshape(-1)), 8).cast(pa.list_(pa.float32()))
        lst = pa.FixedSizeListArray.from_arrays(pa.array(lists.reshape(-1)), 2).cast(pa.list_(pa.int32()))
        return [pa.RecordBatch.from_arrays([pa.array(np.zeros(len(ids), np.int32)), lst, pa.array(ids), v],
                                           names=["part", "lists", "id", "v"])]

    kw = dict(root=root, prefix=prefix, qpath=qpath, shipped=False, dim=8, width=2, id_type="bigint",
              positional=False, num_threads=1)
    ids = np.arange(len(BASE))
    first = [b.to_pylist()[0] for b in ivf_build._build_task(batches(ids), attempt=1, **kw)]
    second = [b.to_pylist()[0] for b in ivf_build._build_task(batches(ids[::-1].copy()), attempt=2, **kw)]
    routing = ivf_build.IvfRouting(f"{prefix}-quantizer.snn", (1,) * 4, (0, 1, 2, 3, 4), (0, 0, 0, 0),
                                   (0, 1, 2, 3, 4), (0, 0, 0, 0), (0,))

    def layout(result):
        return worker.Layout(8, "l2", "ivf", "bigint", False, (sharding.shard_files(result, root, "part"),), root,
                             ivf=routing)

    with pytest.raises(IndexFileError, match="another build or task attempt"):
        worker.shard_index(layout(dict(second[0], index=first[0]["index"])), 0)
    with pytest.raises(IndexFileError, match=r"items file .*-items-0-a2\.arrow' fails its checksum"):
        worker.side_file(layout(dict(first[0], items=second[0]["items"])), 0, "items", lambda p: None)
    good = layout(second[0])
    keep_only(root, prefix, good.files())
    assert sorted(os.listdir(root)) == sorted(good.files())
    index = worker.shard_index(good, 0)
    found, _ = index.search(BASE[:5], 1, nprobe=4)
    items = worker.side_file(good, 0, "items", _read)
    n = len(BASE)
    assert found[:, 0].tolist() == [n - 1 - j for j in range(5)]
    assert items.column("id").to_pylist() == ids[::-1].tolist()


def _read(path):
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


# --------------------------------------------------------------------------- older models
def test_model_saved_before_digests_still_loads_unverified(spark, tmp_path):
    """A model whose layout has no side-file digests, whose indexes record none and that has no
    manifest (as saved before issue 16) loads and answers as before: its side files are unverified."""
    import json

    from sparknn.spark import KNNModel, saved

    model = KNN(k=3, metric="l2", indexType="ivf", nlist=8, featuresCol="vector").fit(
        spark_items(spark, BASE, ids=[f"s{i}" for i in range(len(BASE))], id_type="string"))
    want = model.similarItems().toArrow().sort_by("id")
    path = str(tmp_path / "m")
    model.write().save(path)
    os.remove(os.path.join(path, saved.MANIFEST))
    (meta,) = saved.metadata_files(path)
    with open(os.path.join(path, meta)) as f:
        metadata = json.loads(f.read())
    for shard in metadata["sparknn"]["shards"]:
        assert shard.pop("sideFiles")
        index = os.path.join(path, "index", shard["index"])
        sparknn.load(index, mmap=False).save(index)  # without side-file records
    with open(os.path.join(path, meta), "w") as f:
        f.write(json.dumps(metadata) + "\n")
    old = KNNModel.load(path)
    assert not any(s.digests for s in old.layout.shards)
    assert not sparknn.load(os.path.join(path, "index", "shard-0.snn")).side_files
    assert old.similarItems().toArrow().sort_by("id").equals(want)


def test_layout_names_each_file_for_what_it_holds():
    """A shard's id file is "ids", a routed part's items file is "items" (in memory); the saved
    metadata keeps the key models were always saved with, so older models load unchanged."""
    from sparknn.spark.layout import IvfRouting, Layout, ShardFiles

    routing = IvfRouting("q.snn", (3,), (0, 1), (0,), (0, 1), (0,), (7,), (100,))
    routed = Layout(4, "l2", "ivf", "string", True, (ShardFiles("p.snn", None, 3, items="i.arrow"),), "/r",
                    ivf=routing)
    single = Layout(4, "l2", "flat", "string", True, (ShardFiles("s.snn", "ids.arrow", 3),), "/r")
    shards = Layout(4, "l2", "hnsw", "bigint", False, (ShardFiles("a.snn", None, 1), ShardFiles("b.snn", None, 2)),
                    "/r")
    assert (routed.mode, single.mode, shards.mode) == ("routed", "single", "shards")
    assert routed.side_files(routed.shards[0]) == [("items", "i.arrow")]
    assert single.side_files(single.shards[0]) == [("ids", "ids.arrow")]
    assert routed.to_json()["shards"][0]["ids"] == "i.arrow"  # the saved key, unchanged
    back = Layout.from_json(routed.to_json(), "/r")
    assert back == routed and back.shards[0].ids is None and back.shards[0].items == "i.arrow"
    assert Layout.from_json(single.to_json(), "/r") == single
    assert sorted(routed.files()) == ["i.arrow", "p.snn", "q.snn"]
