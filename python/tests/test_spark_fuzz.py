"""The saved model's loader fuzzed (issue 16): bytes flipped, files truncated and extended at many
positions of the side files (ids, routed items, probes), the metadata JSON and its manifest. Every
load and search either raises an IndexFileError naming the file or gives exactly the answer of the
intact model: never a wrong answer, never a crash.

The searches run in-process through the same functions Spark's tasks run (no job per case), so
hundreds of cases take seconds."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from conftest import clustered, spark_items

pyspark = pytest.importorskip("pyspark")
from sparknn.errors import IndexFileError
from sparknn.spark import KNN, KNNModel, candidate_merge, ivf_route, saved, worker

pytestmark = pytest.mark.spark

BASE = clustered(300, 8, seed=41)
IDS = [f"item-{i}" for i in range(len(BASE))]
K = 4

KINDS = {
    "driver-ivf": dict(indexType="ivf", ivfMode="driver", nlist=6, nprobe=2),  # ids + probes files
    "routed-ivf": dict(indexType="ivf", ivfMode="routed", nlist=6, nprobe=2, targetPartBytes=4096),  # items files
    "sharded-flat": dict(indexType="flat", numShards=2),  # ids file per shard
}
_SAVED = {}


@pytest.fixture
def saved_models(spark, tmp_path_factory):
    if not _SAVED:
        root = tmp_path_factory.mktemp("fuzz")
        df = spark_items(spark, BASE, ids=IDS, id_type="string", partitions=2)
        for name, params in KINDS.items():
            path = str(root / name)
            KNN(k=K, metric="l2", featuresCol="vector", **params).fit(df).write().save(path)
            _SAVED[name] = path
    return _SAVED


def answer(path: str) -> list:
    """Every item's K nearest others, as a Spark task computes them, from the model saved at ``path``."""
    model = KNNModel.load(path)
    layout, slices = model.layout, model._slices(1)
    tasks = pa.RecordBatch.from_arrays([pa.array(np.arange(len(slices)))], names=["task"])
    if layout.ivf:
        routed = ivf_route.route_items([tasks], layout=layout, slices=slices, id_col="id", nprobe=2,
                                       need=min(K + 1, layout.count), num_threads=1)
        searched = ivf_route.search_parts(list(routed), layout=layout, k=K, exclude_self=True, num_threads=1)
        table = pa.Table.from_batches(list(searched)).sort_by("qkey")
        out = candidate_merge.merge_batches(table.to_batches(), k=K, output="neighbors")
    else:
        out = worker.similar_batches([tasks], layout=layout, slices=slices, id_col="id", output="neighbors", k=K,
                                     ef=32, include_self=False, num_threads=1, nprobe=2)
    return pa.Table.from_batches(list(out)).sort_by("id").to_pylist()


def files_to_fuzz(path: str) -> list:
    index = os.path.join(path, "index")
    side = sorted(os.path.join("index", n) for n in os.listdir(index) if n.endswith(".arrow"))
    return side + saved.metadata_files(path) + [saved.MANIFEST]


def mutations(size: int):
    """(label, function bytes -> bytes): single-bit flips spread over the file (its ends included),
    truncations and appends."""
    at = sorted({0, 1, size // 2, size - 2, size - 1} | set(np.linspace(0, size - 1, 16).astype(int).tolist()))
    for i in at:
        for bit in (0x01, 0x80):
            yield f"flip {bit:#x} at {i}", lambda b, i=i, bit=bit: b[:i] + bytes([b[i] ^ bit]) + b[i + 1:]
    for keep in sorted({0, 1, size // 3, size - 1}):
        yield f"truncate to {keep}", lambda b, keep=keep: b[:keep]
    for extra in (b"\0", b"x" * 100):
        yield f"append {len(extra)}", lambda b, extra=extra: b + extra


def write(path: str, data: bytes) -> None:
    """A new file (a new inode) under ``path``, as another writer would leave it."""
    tmp = path + ".fuzz-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@pytest.mark.parametrize("kind", list(KINDS))
def test_damaged_side_and_metadata_files_are_refused_or_harmless(saved_models, tmp_path, kind):
    path = str(tmp_path / "m")
    shutil.copytree(saved_models[kind], path)
    want = answer(path)
    assert len(want) == len(BASE) and all(len(r["neighbors"]) == K for r in want)
    names = files_to_fuzz(path)
    assert any("metadata" in n for n in names) and any(n.endswith(".arrow") for n in names)
    refused = cases = 0
    for name in names:
        target = os.path.join(path, name)
        with open(target, "rb") as f:
            original = f.read()
        for label, mutate in mutations(len(original)):
            cases += 1
            write(target, mutate(original))
            try:
                got = answer(path)
            except IndexFileError as err:
                assert os.path.basename(name) in str(err), f"{name}, {label}: {err}"
                refused += name != saved.MANIFEST
            else:
                assert got == want, f"{name}, {label}: a wrong answer"
            finally:
                write(target, original)
        cases += 0 if name != saved.MANIFEST else -sum(1 for _ in mutations(len(original)))
    # A side or metadata file's every change is caught by the digest the layout or the manifest
    # holds (a manifest may still read the same, e.g. without its final newline).
    assert refused == cases, f"{cases - refused} of {cases} mutations of side or metadata files loaded"
