"""IndexSpec (one checked description of an index) and the one streaming builder and id policy."""

import pickle

import numpy as np
import pyarrow as pa
import pytest
from conftest import exact_knn

import sparknn
from sparknn.builder import build_streaming, engine_ids, stores_own_ids
from sparknn.index import IndexSpec

RNG = np.random.default_rng(7)
DATA = RNG.standard_normal((3000, 24)).astype(np.float32)


def test_spec_normalises_and_checks_once():
    spec = IndexSpec(kind="IVF", metric="euclidean", storage="SQ8", nlist=4)
    assert (spec.kind, spec.metric, spec.storage) == ("ivf", "l2", "sq8")
    assert pickle.loads(pickle.dumps(spec)) == spec  # travels to executors in task closures
    for bad, match in [(dict(kind="annoy"), "unknown index kind"), (dict(metric="hamming"), "unknown metric"),
                       (dict(storage="fp8"), "unknown storage"), (dict(M=1), "M must be an integer >= 2"),
                       (dict(nprobe=0), "nprobe"), (dict(threads=-1), "threads"), (dict(seed=True), "seed")]:
        with pytest.raises(sparknn.InvalidArgumentError, match=match):
            IndexSpec(**bad)
    with pytest.raises(sparknn.InvalidArgumentError, match="nprobe"):
        spec.replace(nprobe=0)  # a changed copy is checked like a new one


def test_spec_for_items_is_the_engines_nlist_rule():
    spec = IndexSpec(kind="ivf")
    assert spec.for_items(10_000).nlist == 400 == sparknn._core.ivf_default_nlist(10_000)
    assert spec.for_items(3).nlist == sparknn._core.ivf_default_nlist(3) <= 3
    assert IndexSpec(kind="ivf", nlist=7).for_items(10_000).nlist == 7  # given: kept
    assert IndexSpec(kind="hnsw").for_items(10_000) == IndexSpec(kind="hnsw")


def test_spec_for_batches_takes_sqrt_n_lists():
    spec = IndexSpec(kind="ivf")
    assert spec.for_items(70_000, batch=True).nlist == 265  # sqrt(70000) = 264.6
    assert spec.for_items(10_000, batch=True).nlist == 100 < spec.for_items(10_000).nlist
    assert spec.for_items(2, batch=True).nlist == 1
    assert IndexSpec(kind="ivf", nlist=7).for_items(10_000, batch=True).nlist == 7  # given: kept
    assert IndexSpec(kind="flat").for_items(10_000, batch=True) == IndexSpec(kind="flat")


def test_index_made_from_a_spec_equals_one_made_from_keywords():
    spec = IndexSpec(kind="hnsw", metric="l2", M=8, ef_construction=40, ef_search=20, seed=3, threads=1)
    a, b = spec.create(24), sparknn.Index(24, "l2", "hnsw", M=8, ef_construction=40, ef_search=20, seed=3,
                                          threads=1)
    assert a.params == b.params and a.threads == b.threads == 1
    for index in (a, b):
        index.add(DATA)
    np.testing.assert_array_equal(a.search(DATA[:50], 5)[0], b.search(DATA[:50], 5)[0])
    with pytest.raises(sparknn.InvalidArgumentError, match="spec must be"):
        sparknn.Index(24, spec={"kind": "flat"})


def test_id_policy():
    assert stores_own_ids(pa.int64(), 0, 5) and stores_own_ids(pa.int32()) and stores_own_ids(pa.int8(), None)
    assert not stores_own_ids(pa.string()) and not stores_own_ids(pa.int64(), -1, 5)
    assert not stores_own_ids(pa.uint64(), 0, 2**63)  # beyond int64: positions
    np.testing.assert_array_equal(engine_ids(pa.array([3, 1, 2], pa.int16())), [3, 1, 2])
    assert engine_ids(pa.array([3, 1, 2], pa.int16())).dtype == np.int64
    assert engine_ids(pa.array(["a", "b"])) is None
    assert engine_ids(pa.array([-1, 4])) is None
    assert engine_ids(pa.array([0, 2**64 - 1], pa.uint64())) is None


def _batches(x, rows):
    for first in range(0, len(x), rows):
        yield first, x[first:first + rows]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_streaming_build_equals_one_add(kind):
    spec = IndexSpec(kind=kind, metric="l2", nprobe=4, seed=5, threads=1)
    ids = np.arange(len(DATA), dtype=np.int64) * 3 + 1
    sample = DATA[::2]
    streamed, lists = build_streaming(_batches(DATA, 700), len(DATA), spec, ids=ids,
                                      train_sample=lambda nlist: sample, keep_lists=8)
    whole = spec.for_items(len(DATA)).create(24)
    if kind == "ivf":
        whole.train(sample)
        assert streamed.params["nlist"] == sparknn._core.ivf_default_nlist(len(DATA))
        assert lists.shape == (len(DATA), 4) and lists.dtype == np.int32
        np.testing.assert_array_equal(lists, whole.nearest_lists(DATA, 4))
    else:
        assert lists is None
    whole.add(DATA, ids)
    assert len(streamed) == len(DATA)
    found, _ = streamed.search(DATA[:100], 10)
    expected, _ = whole.search(DATA[:100], 10)
    np.testing.assert_array_equal(found, expected)
    if kind == "flat":
        np.testing.assert_array_equal(found, ids[exact_knn(DATA, DATA[:100], 10, "l2")[0]])


@pytest.mark.parametrize("keep", [0, 8])
def test_assigning_first_sizes_the_lists_and_builds_the_same_index(keep):
    """With the batches known to be passed over twice (assign_first), every vector is assigned
    before the adds and each list reserved at its size: the same lists, kept lists and answers as
    one pass, and the index trained before a batch is asked for (dim given)."""
    spec = IndexSpec(kind="ivf", metric="l2", nprobe=4, seed=5, threads=1)
    sample = DATA[::2]
    one, one_lists = build_streaming(_batches(DATA, 700), len(DATA), spec, train_sample=lambda nlist: sample,
                                     keep_lists=keep)
    asked = []

    def batches():
        asked.append("batches")
        yield from _batches(DATA, 700)

    two, two_lists = build_streaming(batches(), len(DATA), spec, train_sample=lambda nlist: asked.append("trained")
                                     or sample, keep_lists=keep, dim=24, assign_first=lambda: _batches(DATA, 300))
    assert asked == ["trained", "batches"]  # trained before the batches were asked for, and they once
    np.testing.assert_array_equal(one.list_sizes, two.list_sizes)
    if keep:
        np.testing.assert_array_equal(one_lists, two_lists)
    else:
        assert one_lists is None and two_lists is None
    np.testing.assert_array_equal(one.search(DATA[:100], 10)[0], two.search(DATA[:100], 10)[0])
    # an assignment pass that misses rows is an error, not lists sized from garbage
    with pytest.raises(sparknn.InvalidArgumentError, match="not the 3000 counted"):
        build_streaming(_batches(DATA, 700), len(DATA), spec, train_sample=lambda nlist: sample, dim=24,
                        assign_first=lambda: _batches(DATA[:2000], 300))
    with pytest.raises(sparknn.InvalidArgumentError, match="in order"):
        build_streaming(_batches(DATA, 700), len(DATA), spec, train_sample=lambda nlist: sample, dim=24,
                        assign_first=lambda: iter([(100, DATA[:50])]))


def test_reserve_lists_checks_its_counts():
    index = IndexSpec(kind="ivf", metric="l2", nlist=8, seed=5).create(24)
    with pytest.raises(sparknn.InvalidArgumentError, match="trained"):
        index.reserve_lists(np.zeros(8, dtype=np.int64))
    index.train(DATA)
    with pytest.raises(sparknn.InvalidArgumentError, match="one count per list: 3 given"):
        index.reserve_lists([1, 2, 3])
    with pytest.raises(sparknn.InvalidArgumentError, match="< 0"):
        index.reserve_lists([1, 2, 3, -4, 0, 0, 0, 0])
    index.reserve_lists(np.full(8, 500))
    assert len(index) == 0
    index.add(DATA)
    assert len(index) == len(DATA)
    with pytest.raises(sparknn.InvalidArgumentError, match="ivf indexes only"):
        IndexSpec(kind="flat").create(24).reserve_lists([1])


def test_streaming_build_positions_rows_and_refuses_extra_rows():
    index, _ = build_streaming(_batches(DATA[:100], 30), 100, IndexSpec(kind="flat", metric="l2"))
    np.testing.assert_array_equal(index.ids, np.arange(100))
    assert build_streaming(iter(()), 0, IndexSpec(kind="flat")) == (None, None)
    with pytest.raises(sparknn.InvalidArgumentError, match="more than the 90 rows counted"):
        build_streaming(_batches(DATA[:100], 30), 90, IndexSpec(kind="flat", metric="l2"))
