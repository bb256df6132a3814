"""HNSW through the Python API: recall against numpy brute force, the ef knob,
file round trips, threads, and degenerate inputs."""

import numpy as np
import pytest
import sparknn
from conftest import clustered, exact_knn, recall


@pytest.fixture(scope="module")
def data():
    return clustered(5000, 32, seed=1), clustered(200, 32, seed=2)


def build(base, metric, **kw):
    params = {"M": 16, "ef_construction": 100, "seed": 7}
    params.update(kw)
    index = sparknn.Index(base.shape[1], metric=metric, kind="hnsw", **params)
    index.add(base)
    return index


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_recall_at_10_against_numpy(data, metric):
    base, queries = data
    # inner product is no metric: its graph needs more links for the same recall
    index = build(base, metric, M=32 if metric == "ip" else 16)
    ids, dist = index.search(queries, k=10, ef=200 if metric == "ip" else 100)
    truth, truth_dist = exact_knn(base, queries, 10, metric)
    assert recall(ids, truth) >= 0.95
    assert ids.dtype == np.int64 and dist.dtype == np.float32
    assert np.all(np.diff(dist, axis=1) >= 0)
    # the first hit is almost always the true nearest: its distance matches numpy's
    close = np.isclose(dist[:, 0], truth_dist[:, 0], rtol=1e-4, atol=1e-3)
    assert close.mean() >= 0.95


def test_ef_widens_the_search(data):
    base, queries = data
    index = build(base, "l2", M=8, ef_construction=40)
    truth, _ = exact_knn(base, queries, 10, "l2")
    narrow = recall(index.search(queries, k=10, ef=10)[0], truth)
    wide = recall(index.search(queries, k=10, ef=300)[0], truth)
    assert wide > narrow
    assert wide >= 0.97
    # ef as long as the index is exact
    assert recall(index.search(queries, k=10, ef=len(index))[0], truth) == 1.0
    # the default comes from ef_search, which is settable
    index.ef_search = 10
    assert index.params["ef_search"] == 10
    np.testing.assert_array_equal(index.search(queries, k=10)[0], index.search(queries, k=10, ef=10)[0])


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, data, mmap):
    base, queries = data
    ids = np.arange(2000, dtype=np.int64) * 3 + 5
    index = sparknn.Index(32, metric="cosine", kind="hnsw", M=12, ef_construction=100, ef_search=50, seed=7)
    index.add(base[:2000], ids=ids)
    expected = index.search(queries, k=10)
    path = tmp_path / "items.snn"
    index.save(path)
    loaded = sparknn.load(path, mmap=mmap)
    assert (len(loaded), loaded.dim, loaded.metric, loaded.kind) == (2000, 32, "cosine", "hnsw")
    assert loaded.params == {"M": 12, "ef_construction": 100, "ef_search": 50, "seed": 7, "storage": "float32"}
    np.testing.assert_array_equal(loaded.ids, ids)
    got = loaded.search(queries, k=10)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # a loaded (mapped) index grows: the arrays are copied on first write
    loaded.add(base[2000:2500])
    assert len(loaded) == 2500
    found, _ = loaded.search(base[2000:2010], k=1, ef=64)
    assert (found[:, 0] == np.arange(6003, 6013)).mean() >= 0.9  # ids continue after the largest


def test_threads_attribute_and_parallel_build(data):
    base, queries = data
    index = sparknn.Index(32, metric="l2", kind="hnsw", M=16, ef_construction=100, threads=2)
    assert index.threads == 2
    index.add(base)
    truth, _ = exact_knn(base, queries, 10, "l2")
    parallel = index.search(queries, k=10, ef=128)
    assert recall(parallel[0], truth) >= 0.95
    index.threads = 1
    assert index.threads == 1
    np.testing.assert_array_equal(index.search(queries, k=10, ef=128)[0], parallel[0])
    with pytest.raises(ValueError, match="threads"):
        index.threads = -1


def test_single_thread_build_is_deterministic(data):
    base, queries = data
    a = build(base[:1500], "l2", threads=1)
    b = build(base[:1500], "l2", threads=1)
    np.testing.assert_array_equal(a.search(queries, k=10)[0], b.search(queries, k=10)[0])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_index_returns_everything_padded(n):
    base = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
    index = build(base, "l2", M=2)
    ids, dist = index.search(base, k=5)
    assert ids[:, 0].tolist() == list(range(n))
    assert (ids[:, n:] == -1).all() and np.isinf(dist[:, n:]).all()
    assert sorted(ids[0, :n].tolist()) == list(range(n))


def test_identical_vectors_and_empty_index():
    index = sparknn.Index(8, metric="l2", kind="hnsw", M=4, ef_construction=32)
    ids, dist = index.search(np.ones((2, 8), dtype=np.float32), k=3)
    assert (ids == -1).all() and np.isinf(dist).all()
    index.add(np.full((500, 8), 0.25, dtype=np.float32))
    ids, dist = index.search(np.full((1, 8), 0.25, dtype=np.float32), k=10, ef=20)
    assert len(set(ids[0].tolist())) == 10 and (dist == 0).all()


@pytest.mark.parametrize(
    "kw, match",
    [({"M": 1}, "M must be"), ({"ef_construction": 0}, "ef_construction"), ({"ef_search": 0}, "ef_search")],
)
def test_bad_parameters_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        sparknn.Index(8, kind="hnsw", **kw)
