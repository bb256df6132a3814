"""Every kind of bad input gets a clear error (or a documented behaviour),
never a crash, and a rejected call leaves the index as it was.

Runs on kind="flat"; hnsw cases join the parametrization once HNSW lands.
"""

import numpy as np
import pytest
import sparknn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sparknn import InvalidArgumentError

DIM = 6


def make(metric="l2", n=20, seed=0, **kwargs):
    index = sparknn.Index(DIM, metric=metric, kind="flat", threads=1, **kwargs)
    if n:
        index.add(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))
    return index


def snapshot(index):
    q = np.random.default_rng(99).standard_normal((3, DIM)).astype(np.float32)
    return len(index), index.ids.copy(), index.search(q, k=5)


def assert_unchanged(index, before):
    after = snapshot(index)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2][0], before[2][0])
    np.testing.assert_array_equal(after[2][1], before[2][1])


# ------------------------------------------------------------------- shapes and dimensions


def test_errors_are_value_errors():
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(sparknn.IndexFileError, ValueError)
    assert issubclass(sparknn.IndexIOError, OSError)


@pytest.mark.parametrize("shape", [(5, DIM - 1), (5, DIM + 1), (DIM + 1,), (1, 1)])
def test_wrong_dimension(shape):
    index = make()
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match=f"dimension {shape[-1]} but the index has dim={DIM}"):
        index.add(np.ones(shape, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=f"dimension {shape[-1]} but the index has dim={DIM}"):
        index.search(np.ones(shape, dtype=np.float32), k=3)
    assert_unchanged(index, before)


@pytest.mark.parametrize("shape", [(2, 3, DIM), (1, 1, 1, DIM)])
def test_more_than_two_dimensions(shape):
    index = make()
    with pytest.raises(InvalidArgumentError, match="must be a 2-D array"):
        index.add(np.ones(shape, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="must be a 2-D array"):
        index.search(np.ones(shape, dtype=np.float32))


def test_scalar_input():
    with pytest.raises(InvalidArgumentError, match="must be a 2-D array"):
        make().search(np.float32(1.0))


def test_one_dimensional_input_is_one_row():
    index = make()
    row = np.arange(DIM, dtype=np.float32)
    ids, dist = index.search(row, k=4)
    assert ids.shape == dist.shape == (1, 4)
    np.testing.assert_array_equal(ids, index.search(row[None, :], k=4)[0])
    index.add(row)
    assert len(index) == 21


# ------------------------------------------------------------------- values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_non_finite_vectors_are_rejected_and_nothing_is_added(bad, metric):
    index = make(metric)
    before = snapshot(index)
    x = np.ones((10, DIM), dtype=np.float32)
    x[7, 2] = bad
    with pytest.raises(InvalidArgumentError, match="vector row 7 has a non-finite value .* at position 2"):
        index.add(x)
    assert_unchanged(index, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_queries_are_rejected(bad):
    q = np.ones((4, DIM), dtype=np.float32)
    q[3, 0] = bad
    with pytest.raises(InvalidArgumentError, match="query row 3 has a non-finite value"):
        make().search(q, k=2)


def test_values_whose_norm_overflows_float32_are_rejected():
    x = np.full((1, DIM), 1e30, dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="too large"):
        make().add(x)


def test_float64_values_beyond_float32_range_are_named():
    x = np.ones((3, DIM))
    x[2, 4] = 1e300
    with pytest.raises(
        InvalidArgumentError, match="row 2 has 1e[+]?300 at position 4, beyond the float32 range"
    ):
        make().add(x)


def test_zero_vectors_under_cosine():
    index = make("cosine")
    before = snapshot(index)
    x = np.ones((3, DIM), dtype=np.float32)
    x[1] = 0
    with pytest.raises(InvalidArgumentError, match="row 1 is all zeros"):
        index.add(x)
    with pytest.raises(InvalidArgumentError, match="row 1 is all zeros"):
        index.search(x, k=2)
    assert_unchanged(index, before)
    # Under l2 and ip a zero vector is an ordinary point.
    for metric in ("l2", "ip"):
        other = make(metric)
        other.add(np.zeros((1, DIM)))
        assert len(other) == 21


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("scale", [1e-30, 1e-42, 1e25])
def test_cosine_rows_whose_float32_squared_norm_underflows_or_overflows(kind, scale):
    # Their squared norm is 0 or inf in float32, yet each has a direction: they were refused as
    # "all zeros" (1e-30, 1e-42: nothing was zero) or "too large"; now they answer as x does.
    x = np.random.default_rng(3).standard_normal((300, DIM)).astype(np.float32)
    reference = sparknn.Index(DIM, "cosine", kind, threads=1)
    reference.add(x)
    index = sparknn.Index(DIM, "cosine", kind, threads=1)
    index.add(x * np.float32(scale))
    want, want_dist = reference.search(x[:20], k=5)
    got, got_dist = index.search(x[:20] * np.float32(scale), k=5)
    assert np.mean(got == want) > 0.95  # 1e-42 keeps few significant bits (float32 denormals)
    np.testing.assert_allclose(got_dist[:, 0], 0, atol=1e-3 if scale > 1e-40 else 0.1)


def test_ivf_training_errors_name_training_rows_not_queries():
    x = np.random.default_rng(3).standard_normal((300, DIM)).astype(np.float32)
    x[5, 2] = np.nan
    index = sparknn.Index(DIM, "l2", "ivf", nlist=4)
    with pytest.raises(InvalidArgumentError, match="^training vector row 5 has a non-finite value"):
        index.train(x)
    with pytest.raises(InvalidArgumentError, match="^vector row 5 has a non-finite value"):
        index.add(x)  # checks every row before it trains


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_more_threads_than_cores_use_the_cores(kind):
    # ivf sized per-thread heaps by the count asked for: threads=10**6 raised std::bad_alloc
    # (a larger machine would have tried to allocate it)
    x = np.random.default_rng(3).standard_normal((3000, DIM)).astype(np.float32)
    index = sparknn.Index(DIM, "l2", kind, threads=10**6)
    index.add(x)
    ids, _ = index.search(x[:500], k=5, threads=2**31 - 1)
    assert (ids[:, 0] == np.arange(500)).all()


def test_row_positions_must_be_integers():
    index = make()
    np.testing.assert_array_equal(index.reconstruct_rows(np.array([1], np.uint8)), index.reconstruct(1, 2))
    for rows in ([1.7], ["a"]):  # 1.7 returned row 1; "a" raised int()'s "invalid literal"
        with pytest.raises(InvalidArgumentError, match="rows must be integers"):
            index.reconstruct_rows(rows)
    ivf = sparknn.Index(DIM, "l2", "ivf", nlist=2)
    ivf.train(np.random.default_rng(0).standard_normal((50, DIM)))
    with pytest.raises(InvalidArgumentError, match="extra must be integers"):
        ivf.reserve_lists([0.5, 1.5])


def test_reserving_more_room_than_can_exist_is_refused_clearly():
    # reserve_lists([2**62, ...]) raised "ValueError: vector::reserve" (std::length_error)
    rng = np.random.default_rng(0)
    for options in ({}, {"storage": "fp16"}, {"storage": "sq8", "rerank": 2}):
        ivf = sparknn.Index(DIM, "l2", "ivf", nlist=2, **options)
        ivf.train(rng.standard_normal((50, DIM)))
        ivf.add(rng.standard_normal((20, DIM)))
        before = snapshot(ivf)
        for extra in ([2**62, 0], [2**63 - 1, 2**63 - 1], [2**44, 1]):  # too large to address; to allocate
            with pytest.raises(InvalidArgumentError, match=r"reserve_lists: room for .*the next adds need"):
                ivf.reserve_lists(extra)
            assert_unchanged(ivf, before)
        ivf.reserve_lists([10, 10])
        ivf.add(rng.standard_normal((20, DIM)))
        assert len(ivf) == 40


# ------------------------------------------------------------------- empty input


def test_adding_zero_rows_is_a_no_op():
    index = make()
    before = snapshot(index)
    index.add(np.empty((0, DIM), dtype=np.float32))
    index.add(np.empty((0, DIM), dtype=np.float64), ids=np.empty(0, dtype=np.int64))
    index.add(np.empty((0, DIM)), ids=[])
    assert_unchanged(index, before)


@pytest.mark.parametrize("n", [0, 20])
def test_searching_zero_queries_returns_empty_arrays(n):
    ids, dist = make(n=n).search(np.empty((0, DIM), dtype=np.float32), k=7)
    assert ids.shape == dist.shape == (0, 7)
    assert (ids.dtype, dist.dtype) == (np.int64, np.float32)


def test_search_on_an_empty_index_pads_everything():
    ids, dist = make(n=0).search(np.ones((3, DIM)), k=4)
    assert (ids == -1).all()
    assert np.isposinf(dist).all()


# ------------------------------------------------------------------- k


@pytest.mark.parametrize("k", [0, -1, -(2**40)])
def test_k_must_be_positive(k):
    with pytest.raises(InvalidArgumentError, match="k must be an integer >= 1"):
        make().search(np.ones((1, DIM)), k=k)


@pytest.mark.parametrize("k", [2.0, 2.5, "3", None, True, [3]])
def test_k_must_be_an_integer(k):
    with pytest.raises(InvalidArgumentError, match="k must be an integer"):
        make().search(np.ones((1, DIM)), k=k)


def test_numpy_integer_k_is_accepted():
    index = make()
    q = np.ones((2, DIM))
    np.testing.assert_array_equal(index.search(q, k=np.int32(3))[0], index.search(q, k=3)[0])


def test_k_too_large_for_memory_says_what_to_ask_for():
    index = sparknn.Index(dim=4, metric="l2", kind="flat")
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(MemoryError, match=r"k=1099511627776 need .* GiB; the index holds 4 vectors, so k <= 4"):
        index.search(np.ones((100, 4), dtype=np.float32), k=2**40)


def test_nprobe_beyond_nlist_is_refused_before_allocating():
    index = sparknn.Index(dim=4, metric="l2", kind="ivf", nlist=2)
    index.add(np.random.default_rng(0).standard_normal((50, 4), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=r"nprobe must be in \[1, nlist=2\], got 1099511627776"):
        index.nearest_lists(np.ones((100, 4), dtype=np.float32), 2**40)


def test_k_larger_than_the_index_pads():
    index = make(n=5)
    ids, dist = index.search(np.ones((2, DIM)), k=8)
    assert ids.shape == (2, 8)
    assert (ids[:, :5] >= 0).all() and (ids[:, 5:] == -1).all()
    assert np.isfinite(dist[:, :5]).all() and np.isposinf(dist[:, 5:]).all()
    assert sorted(ids[0, :5]) == list(range(5))


@pytest.mark.parametrize("ef", [0, -3, 1.5])
def test_ef_must_be_a_positive_integer(ef):
    with pytest.raises(InvalidArgumentError, match="ef must be an integer >= 1"):
        make().search(np.ones((1, DIM)), k=2, ef=ef)


# ------------------------------------------------------------------- dtypes and layouts


def test_non_contiguous_and_other_dtypes_give_the_same_results():
    rng = np.random.default_rng(5)
    # Integers and halves are exact in float32, so every variant holds the same values.
    base = rng.integers(-50, 50, (40, DIM)).astype(np.float32) / 4
    q = rng.integers(-50, 50, (7, DIM)).astype(np.float32) / 4
    reference = make(n=0)
    reference.add(base)
    expected = reference.search(q, k=6)

    wide_base = np.zeros((40, 2 * DIM), dtype=np.float32)
    wide_base[:, ::2] = base
    wide_q = np.zeros((7, 2 * DIM), dtype=np.float32)
    wide_q[:, ::2] = q
    variants = {
        "strided": (wide_base[:, ::2], wide_q[:, ::2]),
        "fortran": (np.asfortranarray(base), np.asfortranarray(q)),
        "float64": (base.astype(np.float64), q.astype(np.float64)),
        "float16": (base.astype(np.float16), q.astype(np.float16)),
        "big-endian": (base.astype(">f4"), q.astype(">f8")),
        "list": (base.tolist(), q.tolist()),
    }
    for name, (b, qq) in variants.items():
        index = make(n=0)
        index.add(b)
        ids, dist = index.search(qq, k=6)
        np.testing.assert_array_equal(ids, expected[0], err_msg=name)
        np.testing.assert_array_equal(dist, expected[1], err_msg=name)

    ints = make(n=0)
    ints.add((base * 4).astype(np.int32))
    np.testing.assert_array_equal(ints.search((q * 4).astype(np.int64), k=6)[0], expected[0])


@pytest.mark.parametrize(
    "x",
    [
        np.array([["a"] * DIM]),
        np.array([[b"a"] * DIM]),
        np.ones((2, DIM), dtype=np.complex64),
        np.ones((2, DIM), dtype=object),
        np.ones((2, DIM), dtype=bool),
        np.array([np.datetime64("2024-01-01")] * DIM).reshape(1, DIM),
    ],
    ids=["str", "bytes", "complex", "object", "bool", "datetime"],
)
def test_non_numeric_dtypes_are_rejected(x):
    index = make()
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match="must be numeric"):
        index.add(x)
    with pytest.raises(InvalidArgumentError, match="must be numeric"):
        index.search(x)
    assert_unchanged(index, before)


def test_ragged_lists_are_rejected():
    with pytest.raises((InvalidArgumentError, ValueError)):
        make().add([[1.0] * DIM, [1.0] * (DIM - 1)])


# ------------------------------------------------------------------- ids


def test_ids_of_the_wrong_length():
    index = make()
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match="ids has 2 entries but vectors has 3 rows"):
        index.add(np.ones((3, DIM)), ids=[100, 101])
    assert_unchanged(index, before)


@pytest.mark.parametrize(
    "ids,match",
    [
        (np.array([1.0, 2.0, 3.0]), "ids must be integers"),
        (np.array(["1", "2", "3"]), "ids must be integers"),
        (np.array([[1, 2, 3]]), "ids must be a 1-D array"),
        (np.array([1, 2, 2**63], dtype=np.uint64), "ids must fit in int64"),
    ],
)
def test_ids_of_the_wrong_type(ids, match):
    index = make()
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match=match):
        index.add(np.ones((3, DIM)), ids=ids)
    assert_unchanged(index, before)


def test_other_integer_id_dtypes_are_converted():
    index = make(n=0)
    index.add(np.eye(DIM)[:3], ids=np.array([7, 8, 9], dtype=np.uint8))
    index.add(np.eye(DIM)[3:5], ids=[2**40, 5])
    np.testing.assert_array_equal(index.ids, [7, 8, 9, 2**40, 5])
    assert index.ids.dtype == np.int64


def test_duplicate_ids_within_one_call():
    index = make(n=0)
    index.add(np.eye(DIM)[:2], ids=[1, 2])
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match=r"duplicate id 5 \(ids\[2\]\)"):
        index.add(np.ones((3, DIM)), ids=[5, 6, 5])
    assert_unchanged(index, before)
    index.add(np.ones((2, DIM)), ids=[5, 6])  # the failed call reserved nothing
    assert len(index) == 4


def test_duplicate_ids_across_calls():
    index = make(n=0)
    index.add(np.eye(DIM)[:3], ids=[10, 11, 12])
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match="duplicate id 11"):
        index.add(np.ones((2, DIM)), ids=[13, 11])
    assert_unchanged(index, before)
    index.add(np.ones((1, DIM)))  # automatic ids continue after the largest: 13
    with pytest.raises(InvalidArgumentError, match="duplicate id 13"):
        index.add(np.ones((1, DIM)), ids=[13])
    np.testing.assert_array_equal(index.ids, [10, 11, 12, 13])


def test_duplicate_ids_after_a_save_and_load(tmp_path):
    index = make(n=0)
    index.add(np.eye(DIM)[:3], ids=[4, 5, 6])
    index.save(tmp_path / "i.snn")
    loaded = sparknn.load(tmp_path / "i.snn")
    with pytest.raises(InvalidArgumentError, match="duplicate id 5"):
        loaded.add(np.ones((1, DIM)), ids=[5])
    assert len(loaded) == 3


def test_negative_ids():
    index = make()
    before = snapshot(index)
    with pytest.raises(InvalidArgumentError, match=r"ids must be non-negative .*ids\[1\] = -1"):
        index.add(np.ones((2, DIM)), ids=[100, -1])
    assert_unchanged(index, before)


def test_automatic_ids_cannot_overflow():
    index = make(n=0)
    index.add(np.ones((1, DIM)), ids=[2**63 - 1])
    with pytest.raises(InvalidArgumentError, match="pass ids explicitly"):
        index.add(np.ones((1, DIM)))
    assert len(index) == 1


# ------------------------------------------------------------------- constructor and settings


@pytest.mark.parametrize("metric", ["hamming", "", None, 3])
def test_unknown_metric(metric):
    with pytest.raises(InvalidArgumentError, match="unknown metric"):
        sparknn.Index(DIM, metric=metric, kind="flat")


@pytest.mark.parametrize("kind", ["pq", "annoy", "", None])
def test_unknown_kind(kind):
    with pytest.raises(InvalidArgumentError, match="unknown index kind"):
        sparknn.Index(DIM, kind=kind)


def test_metric_aliases_and_case():
    assert sparknn.Index(DIM, metric="Euclidean", kind="FLAT").metric == "l2"
    assert sparknn.Index(DIM, metric="dot", kind="flat").metric == "ip"


@pytest.mark.parametrize("dim", [0, -1, 2.5, "8", None, 2**21])
def test_bad_dim(dim):
    with pytest.raises(InvalidArgumentError, match="dim"):
        sparknn.Index(dim, kind="flat")


@pytest.mark.parametrize("threads", [-1, 1.5, "2", None])
def test_bad_threads(threads, tmp_path):
    with pytest.raises(InvalidArgumentError, match="threads must be an integer >= 0"):
        sparknn.Index(DIM, kind="flat", threads=threads)
    index = make()
    with pytest.raises(InvalidArgumentError, match="threads must be an integer >= 0"):
        index.threads = threads
    assert index.threads == 1
    index.save(tmp_path / "i.snn")
    with pytest.raises(InvalidArgumentError, match="threads must be an integer >= 0"):
        sparknn.load(tmp_path / "i.snn", threads=threads)


@pytest.mark.parametrize("name", ["M", "ef_construction", "ef_search", "nlist", "nprobe", "train_size", "pq_m",
                                  "rerank", "seed", "threads"])
def test_integers_beyond_the_engine_types_are_named(name):
    # 2**64 fits none of the engine's types: the binding used to raise a TypeError listing its signature
    kind = "hnsw" if name in ("M", "ef_construction", "ef_search") else "ivf"
    with pytest.raises(InvalidArgumentError, match=f"{name} must be an integer <= "):
        sparknn.Index(DIM, kind=kind, **{name: 2**64})
    sparknn.Index(DIM, kind="ivf", seed=2**64 - 1)  # a uint64 seed: the whole range


def built(kind, n=300):
    index = sparknn.Index(DIM, metric="l2", kind=kind, threads=1)
    index.add(np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32))
    return index


def test_call_arguments_beyond_the_engine_types_are_named(tmp_path):
    hnsw, ivf = built("hnsw"), built("ivf")
    q = np.ones((1, DIM), np.float32)
    for call, match in [
        (lambda: hnsw.search(q, 1, threads=2**31), "threads must be an integer <= 2147483647"),
        (lambda: hnsw.search(q, 1, ef=2**64), "ef must be an integer <= "),
        (lambda: ivf.search(q, 1, nprobe=2**64), "nprobe must be an integer <= "),
        (lambda: setattr(hnsw, "threads", 2**31), "threads must be an integer <= "),
        (lambda: setattr(hnsw, "ef_search", 2**64), "ef_search must be an integer <= "),
        (lambda: setattr(ivf, "nprobe", 2**64), "nprobe must be an integer <= "),
        (lambda: hnsw.reconstruct(0, 2**64), "stop must be an integer <= "),
        (lambda: ivf.tune(0.9, seed=-1), "seed must be an integer >= 0"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            call()
    hnsw.save(tmp_path / "i.snn")
    with pytest.raises(InvalidArgumentError, match="threads must be an integer <= "):
        sparknn.load(tmp_path / "i.snn", threads=2**31)


def test_numpy_scalar_recall_targets_are_numbers():
    index = built("ivf")
    assert index.tune(np.float32(0.5), k=2).target == pytest.approx(0.5)
    index.search(np.ones((3, DIM), np.float32), 2, recall=np.float64(0.9))
    with pytest.raises(InvalidArgumentError, match="recall must be a number in"):
        index.tune(np.bool_(True))


# ------------------------------------------------------------------- properties over shapes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 40),
    dim=st.integers(1, 9),
    nq=st.integers(0, 5),
    k=st.integers(1, 50),
    metric=st.sampled_from(["l2", "ip", "cosine"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_output_shapes_and_padding(n, dim, nq, k, metric, seed):
    rng = np.random.default_rng(seed)
    index = sparknn.Index(dim, metric=metric, kind="flat", threads=1)
    ids_in = rng.choice(10**6, size=n, replace=False)
    index.add(rng.standard_normal((n, dim)) + 0.1, ids=ids_in)
    ids, dist = index.search(rng.standard_normal((nq, dim)) + 0.1, k=k)
    assert ids.shape == dist.shape == (nq, k)
    assert (ids.dtype, dist.dtype) == (np.int64, np.float32)
    found = min(k, n)
    assert (ids[:, found:] == -1).all() and np.isposinf(dist[:, found:]).all()
    assert np.isin(ids[:, :found], ids_in).all()
    assert np.isfinite(dist[:, :found]).all()
    for row_ids, row_dist in zip(ids, dist):
        assert len(set(row_ids[:found].tolist())) == found
        assert (np.diff(row_dist[:found]) >= 0).all()


@settings(max_examples=150, deadline=None)
@given(
    x=hnp.arrays(
        dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes()),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
    ),
    k=st.integers(-2, 8),
)
def test_arbitrary_arrays_never_crash(x, k):
    """Any array as vectors or queries: a result or an InvalidArgumentError, never anything else."""
    index = make(n=3)
    before = snapshot(index)
    try:
        index.add(x)
    except InvalidArgumentError:
        assert_unchanged(index, before)
    try:
        ids, dist = index.search(x, k=k)
    except InvalidArgumentError:
        return
    assert ids.shape == dist.shape and ids.shape[1] == k


def test_a_row_groups_vectors_of_another_length_than_the_block_are_refused_not_broadcast(tmp_path):
    """row_group_vectors into a block's rows: vectors of length 1 would broadcast over a row of 4."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparknn.arrow import vectors_to_numpy
    from sparknn.inputs import row_group_vectors

    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"v": pa.array([[1.0]] * 3, type=pa.list_(pa.float32()))}), path)
    into = np.zeros((3, 4), np.float32)
    with pq.ParquetFile(path) as parquet, pytest.raises(ValueError, match="length 1 where 4"):
        row_group_vectors(parquet, "v", 0, 3, lambda column, _: vectors_to_numpy(column, "v"), into)
    assert not into.any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 40), max_size=30), st.sampled_from(["int64", "int32", "uint16"]), st.booleans())
def test_input_ids_repeat_exactly_when_a_value_repeats(values, kind, ascending):
    """The input reader's duplicate check (numpy for integer ids, one pass when ascending) agrees
    with a set, for every integer type and order; strings through Arrow."""
    import pyarrow as pa

    from sparknn.inputs import _has_duplicates

    if kind == "uint16":
        values = [abs(v) for v in values]
    if ascending:
        values = sorted(values)
    repeats = len(set(values)) != len(values)
    assert _has_duplicates(pa.array(values, type=getattr(pa, kind)())) == repeats
    assert _has_duplicates(pa.array([str(v) for v in values], type=pa.string())) == repeats
