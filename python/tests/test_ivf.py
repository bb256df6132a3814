import numpy as np
import pytest

import sparknn
from conftest import clustered, exact_knn, recall


@pytest.fixture(scope="module")
def data():
    return clustered(6000, 32, clusters=40, seed=11), clustered(300, 32, clusters=40, seed=12)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_probing_every_list_is_exact(data, metric):
    base, queries = data
    index = sparknn.Index(32, metric=metric, kind="ivf", nlist=24)
    index.add(base)
    _, dist = index.search(queries, k=10, nprobe=24)
    _, ref = exact_knn(base, queries, 10, metric)
    np.testing.assert_allclose(dist, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "storage, metric, minimum",
    [("float32", "l2", 0.95), ("float32", "cosine", 0.95), ("sq8", "l2", 0.93), ("sq8", "cosine", 0.93)],
)
def test_recall_per_codec(data, storage, metric, minimum):
    base, queries = data
    index = sparknn.Index(32, metric=metric, kind="ivf", nlist=64, nprobe=8, storage=storage)
    index.add(base)
    ids, _ = index.search(queries, k=10)
    truth, _ = exact_knn(base, queries, 10, metric)
    assert recall(ids, truth) >= minimum


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_pq_with_reranking(data, metric, tmp_path):
    base, queries = data
    index = sparknn.Index(32, metric=metric, kind="ivf", nlist=64, nprobe=8, storage="pq", pq_m=8, rerank=10)
    index.add(base)
    truth, _ = exact_knn(base, queries, 10, metric)
    ids, dist = index.search(queries)
    assert recall(ids, truth) >= 0.9
    # re-ranked distances are exact distances
    _, ref = exact_knn(base, queries, 6000, metric)
    full = np.empty((len(queries), 6000))
    order, _ = exact_knn(base, queries, 6000, metric)
    np.put_along_axis(full, order, ref, axis=1)
    np.testing.assert_allclose(dist, np.take_along_axis(full, ids, axis=1), rtol=1e-4, atol=1e-4)
    path = tmp_path / "pq.snn"
    index.save(path)
    loaded = sparknn.load(path)
    np.testing.assert_array_equal(loaded.search(queries)[0], ids)
    assert loaded.params["pq_m"] == 8 and loaded.params["rerank"] == 10
    # 8 bytes of codes per vector instead of 128: the file is dominated by the re-rank copies
    plain = sparknn.Index(32, metric=metric, kind="ivf", nlist=64, storage="pq", pq_m=8)
    plain.add(base)
    plain.save(tmp_path / "plain.snn")
    assert (tmp_path / "plain.snn").stat().st_size < 0.3 * path.stat().st_size


def test_more_lists_probed_is_never_worse(data):
    base, queries = data
    index = sparknn.Index(32, metric="l2", kind="ivf", nlist=64)
    index.add(base)
    truth, _ = exact_knn(base, queries, 10, "l2")
    recalls = [recall(index.search(queries, 10, nprobe=p)[0], truth) for p in (1, 4, 16, 64)]
    assert recalls == sorted(recalls) and recalls[-1] == pytest.approx(1.0, abs=1e-3)


def test_explicit_training_then_add_and_round_trip(tmp_path, data):
    base, queries = data
    index = sparknn.Index(32, metric="l2", kind="ivf", nlist=32, storage="sq8")
    assert not index.is_trained
    index.train(base[:2000])
    assert index.is_trained and len(index) == 0
    index.add(base[:3000], ids=np.arange(3000) * 10)
    index.add(base[3000:], ids=np.arange(3000, 6000) * 10)
    path = tmp_path / "ivf.snn"
    index.save(path)
    for mmap in (True, False):
        loaded = sparknn.load(path, mmap=mmap)
        assert loaded.kind == "ivf" and len(loaded) == 6000
        assert loaded.params["storage"] == "sq8" and loaded.params["nlist"] == 32
        a, da = index.search(queries, 5)
        b, db = loaded.search(queries, 5)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(da, db)
    assert (a % 10 == 0).all()


def test_ivf_errors(data):
    base, _ = data
    index = sparknn.Index(32, metric="l2", kind="ivf", nlist=100)
    with pytest.raises(ValueError, match="nlist"):
        index.add(base[:50])
    assert len(index) == 0 and not index.is_trained
    with pytest.raises(ValueError, match="storage"):
        sparknn.Index(32, kind="ivf", storage="zstd")
    with pytest.raises(ValueError, match="pq_m"):
        sparknn.Index(32, kind="ivf", storage="pq", pq_m=5)
    with pytest.raises(ValueError, match="rerank"):
        sparknn.Index(32, kind="ivf", storage="bf16", rerank=4)
    flat = sparknn.Index(32, kind="flat")
    with pytest.raises(ValueError, match="ivf"):
        flat.train(base)
    trained = sparknn.Index(32, metric="l2", kind="ivf", nlist=8)
    trained.add(base[:100])
    with pytest.raises(ValueError, match="before the first add"):
        trained.train(base)
    with pytest.raises(ValueError, match="nprobe"):
        trained.search(base[:1], 3, nprobe=0)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_self_join_with_lists_computed_once(data, metric):
    """nearest_lists once, then add and search with those lists: the same answers as plain add + search."""
    base, _ = data
    plain = sparknn.Index(32, metric=metric, kind="ivf", nlist=48, nprobe=6)
    plain.add(base)
    shared = sparknn.Index(32, metric=metric, kind="ivf", nlist=48, nprobe=6)
    shared.train(base)
    lists = shared.nearest_lists(base, 6)
    shared.add(base, lists=lists)  # column 0: each item's own list
    np.testing.assert_array_equal(shared.list_sizes, plain.list_sizes)
    ids_a, dist_a = plain.search(base, k=11)
    ids_b, dist_b = shared.search(base, k=11, lists=lists)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(dist_a, dist_b)


def test_given_lists_are_checked(data):
    base, queries = data
    index = sparknn.Index(32, "l2", kind="ivf", nlist=16, nprobe=2)
    with pytest.raises(ValueError, match="trained"):
        index.add(base, lists=np.zeros(len(base), dtype=np.int64))
    index.train(base)
    bad = np.zeros(len(base), dtype=np.int64)
    bad[5] = 16
    with pytest.raises(ValueError, match="row 5 names list 16"):
        index.add(base, lists=bad)
    assert len(index) == 0
    with pytest.raises(ValueError, match="shape"):
        index.add(base, lists=bad[:10])
    index.add(base)
    lists = index.nearest_lists(queries, 2)
    with pytest.raises(ValueError, match="shape"):
        index.search(queries, k=5, nprobe=3, lists=lists)
    with pytest.raises(ValueError, match="twice"):
        index.search(queries, k=5, lists=np.repeat(lists[:, :1], 2, axis=1))
    with pytest.raises(ValueError, match="integers"):
        index.search(queries, k=5, lists=lists.astype(np.float32))
    flat = sparknn.Index(32, "l2", kind="flat")
    flat.add(base)
    with pytest.raises(ValueError, match="ivf"):
        flat.search(queries, k=5, lists=lists)


@pytest.mark.parametrize("storage, kw, tolerance", [("float32", {}, 0.0), ("sq8", {}, 0.05),
                                                     ("pq", {"pq_m": 8}, 2.0), ("pq", {"pq_m": 8, "rerank": 2}, 0.0)])
def test_reconstruct(data, storage, kw, tolerance):
    base, _ = data
    index = sparknn.Index(32, "l2", kind="ivf", nlist=32, storage=storage, **kw)
    index.add(base)
    got = index.reconstruct(100, 600)
    assert got.shape == (500, 32) and got.dtype == np.float32
    assert np.abs(got - base[100:600]).max() <= tolerance
    assert index.reconstruct().shape == base.shape
    with pytest.raises(ValueError, match="outside"):
        index.reconstruct(0, len(base) + 1)
    flat = sparknn.Index(32, "cosine", kind="flat")
    flat.add(base[:10])
    np.testing.assert_allclose(flat.reconstruct(), base[:10] / np.linalg.norm(base[:10], axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-6)
    # any rows, and the ivf rows list after list (the self-join's query order)
    rows = np.array([7, 3, 3, len(base) - 1])
    np.testing.assert_array_equal(index.reconstruct_rows(rows), index.reconstruct()[rows])
    np.testing.assert_array_equal(flat.reconstruct_rows([9, 0]), flat.reconstruct()[[9, 0]])
    with pytest.raises(ValueError, match="outside"):
        index.reconstruct_rows([0, -1])
    order = index.list_order()
    assert sorted(order.tolist()) == list(range(len(base)))
    home = index.nearest_lists(base, 1)[:, 0]  # each vector is stored in its nearest list
    bounds = np.cumsum(index.list_sizes)
    assert (home[order] == np.searchsorted(bounds, np.arange(len(base)), side="right")).all()
    with pytest.raises(ValueError, match="ivf"):
        flat.list_order()


def test_lists_too_small_for_k_are_widened():
    """min(k, n) neighbours even when the probed lists hold fewer: never a silently short row."""
    x = clustered(200, 8, clusters=20, seed=3)
    index = sparknn.Index(8, "l2", kind="ivf", nlist=40, nprobe=1)
    index.add(x)
    ids, dist = index.search(x[:20], k=50)
    assert (ids >= 0).all() and np.isfinite(dist).all()
    assert all(len(set(row)) == 50 for row in ids)
    ids, _ = index.search(x[:5], k=250)
    assert (ids[:, :200] >= 0).all() and (ids[:, 200:] == -1).all()


def _widened_reference(index, x, sizes, nprobe, need, nearest=None):
    """The probing policy written out in numpy (as the routed query had it before the engine
    exposed it): nprobe nearest lists; a row holding fewer than need items doubles the width until
    its lists do, then keeps the shortest prefix that does."""
    nlist = len(sizes)
    nprobe = min(nprobe, nlist)
    first = index.nearest_lists(x, nprobe) if nearest is None else nearest[:, :nprobe]
    out = []
    for i in range(len(x)):
        lists, width = first[i], nprobe
        while sizes[lists].sum() < need and width < nlist:
            width = min(nlist, 2 * width)
            lists = index.nearest_lists(x[i:i + 1], width)[0]
            held = np.cumsum(sizes[lists])
            if held[-1] >= need:
                lists = lists[:int(np.argmax(held >= need)) + 1]
        out.append(np.asarray(lists, dtype=np.int64))
    return out


@pytest.mark.parametrize("nprobe,need", [(1, 0), (1, 40), (2, 400), (4, 5000), (64, 10)])
@pytest.mark.parametrize("given_sizes", [False, True])
@pytest.mark.parametrize("given_nearest", [False, True])
def test_probe_lists_is_the_widening_policy(nprobe, need, given_sizes, given_nearest):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((1500, 8)), 6 + rng.standard_normal((30, 8))]).astype(np.float32)
    index = sparknn.Index(8, "l2", "ivf", nlist=24, seed=1)
    index.add(x)
    sizes = rng.integers(0, 300, 24) if given_sizes else index.list_sizes
    queries = x[::37]
    nearest = index.nearest_lists(queries, min(nprobe, 24)).astype(np.int32) if given_nearest else None
    offsets, lists = index.probe_lists(queries, nprobe, need, sizes if given_sizes else None, nearest)
    expected = _widened_reference(index, queries, np.asarray(sizes), nprobe, need, nearest)
    assert offsets[0] == 0 and len(offsets) == len(queries) + 1
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(lists[offsets[i]:offsets[i + 1]], want)
    with pytest.raises(sparknn.InvalidArgumentError, match="ivf indexes only"):
        sparknn.Index(8, "l2", "flat").probe_lists(queries, 1, 1)
    with pytest.raises(sparknn.InvalidArgumentError, match="list_sizes has 23 entries but the index has nlist=24"):
        index.probe_lists(queries, 1, 1, list_sizes=np.ones(23, dtype=np.int64))


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_float32_rerank_is_a_bf16_scan_with_exact_distances(metric, tmp_path):
    """float32 with rerank scans in bf16 where the CPU can (AVX512_BF16) and re-ranks from its
    lists: the plain scan's neighbours on real-valued data, distances exact, no bigger file."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 200)).astype(np.float32) * 2
    base = centres[rng.integers(0, 30, 8000)] + rng.normal(size=(8000, 200)).astype(np.float32)
    queries = base[::40] + 0.1 * rng.normal(size=(200, 200)).astype(np.float32)
    plain = sparknn.Index(200, metric=metric, kind="ivf", nlist=40, nprobe=40)
    fast = sparknn.Index(200, metric=metric, kind="ivf", nlist=40, nprobe=40, rerank=2)
    plain.add(base)
    fast.add(base)
    want, _ = plain.search(queries, 10)
    got, dist = fast.search(queries, 10)
    hits = np.mean([len(set(a) & set(b)) for a, b in zip(got, want)]) / 10
    assert hits >= 0.995
    # every distance is the float32 distance of the id returned (float64 reference)
    q, x = queries.astype(np.float64), base.astype(np.float64)
    if metric == "cosine":
        q, x = q / np.linalg.norm(q, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = x[got]
    if metric == "l2":
        want_dist = ((rows - q[:, None, :]) ** 2).sum(-1)
    else:
        want_dist = (1.0 if metric == "cosine" else 0.0) - (rows * q[:, None, :]).sum(-1)
    scale = (q ** 2).sum(-1)[:, None] + (rows ** 2).sum(-1)
    assert np.all(np.abs(dist - want_dist) <= 1e-5 * scale)
    fast.save(tmp_path / "fast.snn")
    plain.save(tmp_path / "plain.snn")
    assert (tmp_path / "fast.snn").stat().st_size == (tmp_path / "plain.snn").stat().st_size
    again, again_dist = sparknn.load(tmp_path / "fast.snn").search(queries, 10)
    np.testing.assert_array_equal(again, got)
    np.testing.assert_array_equal(again_dist, dist)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_adopted_rows_answer_as_added_rows(data, metric):
    """A RowBlock's rows kept in place as the lists (Index.adopt_rows): the same answers and
    stored rows as add, the rows in list order in place, the block the index's from then on."""
    base, queries = data
    spec = dict(metric=metric, kind="ivf", nlist=24, nprobe=6)
    added, adopted = sparknn.Index(32, **spec), sparknn.Index(32, **spec)
    added.train(base)
    adopted.train(base)
    ids = np.arange(len(base), dtype=np.int64) * 7 + 1
    added.add(base, ids)
    block = sparknn.index.RowBlock(len(base), 32)
    block.array()[:] = base
    adopted.adopt_rows(block, ids)
    assert block.taken
    with pytest.raises(ValueError, match="belong to an index"):
        block.array()
    for got, want in zip(adopted.search(queries, k=10), added.search(queries, k=10)):
        np.testing.assert_array_equal(got, want)
    in_place = adopted.rows_in_list_order()
    np.testing.assert_array_equal(in_place, adopted.reconstruct_rows(adopted.list_order()))
    assert not in_place.flags.writeable
    with pytest.raises(ValueError, match="zero-copy view"):
        adopted.add(base[:1], [10**9])  # pinned by the view
    del in_place
    adopted.add(base[:1], [10**9])
    assert adopted.rows_in_list_order() is None  # the lists were copied to take the new row
    assert added.rows_in_list_order() is None  # lists grown by add are arrays of their own


@pytest.mark.parametrize("first_pass", [0, "auto"])
def test_adopt_rows_finds_the_nearest_lists(first_pass):
    """Index.adopt_rows(nearest=w): the rows adopted as with the lists given, and each row's
    nearest w lists returned as nearest_lists finds them (in the order given); with a first
    pass trained in its subspace (long vectors), the rows projected once for both answer as an
    index adopted with its lists given (the products blocked otherwise: near ties may differ)."""
    x = clustered(6_000, 256, 24, seed=3)
    queries = clustered(200, 256, 24, seed=4)
    order = np.random.default_rng(1).permutation(len(x))
    spec = dict(kind="ivf", metric="l2", nlist=32, nprobe=4, rerank=2, first_pass_dims=first_pass)
    given, found = sparknn.Index(256, **spec), sparknn.Index(256, **spec)
    given.train(x)
    found.train(x)
    want = given.nearest_lists(x, 5)
    blocks = []
    for _ in range(2):
        block = sparknn.index.RowBlock(len(x), 256)
        block.array()[order] = x  # row order[r] holds vector r
        blocks.append(block)
    given.adopt_rows(blocks[0], lists=want[:, :1], order=order)
    got = found.adopt_rows(blocks[1], order=order, nearest=5)
    assert got.shape == (len(x), 5) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(found.list_order(), given.list_order())
    if first_pass:
        assert found.first_pass_in_use()[0] > 0
    (a, a_dist), (b, b_dist) = given.search(queries, 10), found.search(queries, 10)
    same = a == b
    assert same.mean() >= 0.995
    np.testing.assert_array_equal(a_dist[same], b_dist[same])


def test_adopt_rows_nearest_refusals(data):
    base, _ = data
    block = sparknn.index.RowBlock(len(base), 32)
    block.array()[:] = base
    with pytest.raises(sparknn.InvalidArgumentError, match="nearest= are for ivf indexes"):
        sparknn.Index(32, kind="flat").adopt_rows(block, nearest=2)
    index = sparknn.Index(32, kind="ivf", nlist=8)
    index.train(base)
    with pytest.raises(sparknn.InvalidArgumentError, match="not both"):
        index.adopt_rows(block, lists=np.zeros(len(base), dtype=np.int64), nearest=2)
    with pytest.raises(sparknn.InvalidArgumentError, match="nearest must be an integer >= 0"):
        index.adopt_rows(block, nearest=-1)
    with pytest.raises(ValueError, match=r"width must be in \[1, nlist=8\]"):
        index.adopt_rows(block, nearest=9)
    assert len(index) == 0 and not block.taken
    assert index.adopt_rows(block, nearest=8).shape == (len(base), 8)
    assert block.taken and len(index) == len(base)


def test_adopt_rows_refusals(data):
    base, _ = data
    block = sparknn.index.RowBlock(len(base), 32)
    block.array()[:] = base
    with pytest.raises(sparknn.InvalidArgumentError, match="lists= and nearest= are for ivf indexes"):
        sparknn.Index(32, kind="flat").adopt_rows(block, lists=np.zeros(len(base), dtype=np.int64))
    sq8 = sparknn.Index(32, kind="ivf", nlist=8, storage="sq8")
    sq8.train(base)
    with pytest.raises(ValueError, match="float32 lists"):
        sq8.adopt_rows(block)
    assert sq8.rows_in_list_order() is None
    index = sparknn.Index(32, kind="ivf", nlist=8)
    index.train(base)
    with pytest.raises(ValueError, match="ids has 3 entries"):
        index.adopt_rows(block, ids=np.arange(3))
    before = block.array().copy()
    bad = np.arange(len(base))
    bad[5] = 0  # a duplicate id
    with pytest.raises(ValueError, match="duplicate id"):
        index.adopt_rows(block, ids=bad)
    np.testing.assert_array_equal(block.array(), before)
    assert len(index) == 0 and not block.taken


def test_float32_scan_answers_do_not_depend_on_the_batch():
    """Without bf16 tiles the lists are scanned by float32 sgemm, which rounds a product by the
    row's place in the matrix: a self-join searched in one batch and in shuffled batches answered
    2 of these 60k rows otherwise (a near tie for the 11th), as a retried Spark task could. With
    ``rerank`` the candidates are re-ranked by the distance kernels, whatever the batch."""
    x = clustered(60_000, 32, 64, seed=5)
    index = sparknn.Index(32, metric="l2", kind="ivf", nlist=64, nprobe=6, rerank=2, threads=2)
    index.train(x)
    index.add(x)
    lists = index.nearest_lists(x, 6)
    whole_ids, whole_dist = index.search(x, 11, lists=lists)
    order = np.random.default_rng(0).permutation(len(x))
    ids, dist = np.empty_like(whole_ids), np.empty_like(whole_dist)
    for lo in range(0, len(x), 7000):
        sel = order[lo:lo + 7000]
        ids[sel], dist[sel] = index.search(x[sel], 11, lists=lists[sel])
    np.testing.assert_array_equal(ids, whole_ids)
    np.testing.assert_array_equal(dist, whole_dist)
