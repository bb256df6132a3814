"""sparknn.arrow: vector columns read by rows in any order, chunk by chunk."""

import numpy as np
import pyarrow as pa
import pytest

from sparknn.arrow import ChunkedVectors
from sparknn.errors import InvalidArgumentError


def _chunks(x, cuts, value_type=None):
    value_type = value_type or pa.float32()
    return [pa.array(x[a:b].tolist(), type=pa.list_(value_type)) for a, b in zip(cuts, cuts[1:])]


def test_chunked_vectors_take_rows_in_any_order_without_joining_the_chunks():
    x = np.random.default_rng(0).standard_normal((500, 6)).astype(np.float32)
    cuts = [0, 0, 1, 200, 200, 499, 500]  # empty chunks among them
    column = pa.chunked_array(_chunks(x, cuts), type=pa.list_(pa.float32()))
    vectors = ChunkedVectors(column, "v")
    assert len(vectors) == 500
    for rows in (np.random.default_rng(1).permutation(500), np.arange(500)[::-1].astype(np.uint64), [7, 7, 0],
                 np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(vectors.take(rows), x[np.asarray(rows, dtype=np.int64)])
    assert vectors.take([]).shape == (0, 6)
    # float32 chunks are read in place (a view kept for later takes); others converted each time
    big = int(np.argmax([len(c) for c in column.chunks]))
    assert np.shares_memory(vectors._matrix(big), column.chunk(big).values.to_numpy())
    doubles = ChunkedVectors(pa.chunked_array(_chunks(x, cuts, pa.float64())), "v")
    np.testing.assert_array_equal(doubles.take(np.arange(500)[::-1]), x[::-1])
    assert not doubles._kept
    # a single Array is one chunk
    np.testing.assert_array_equal(ChunkedVectors(column.combine_chunks()).take([3, 1]), x[[3, 1]])


def test_chunked_vectors_refuse_what_the_engine_refuses():
    x = np.ones((10, 4), dtype=np.float32)
    ragged = pa.chunked_array(_chunks(x, [0, 5, 10]) + [pa.array([[1.0] * 3], type=pa.list_(pa.float32()))])
    with pytest.raises(InvalidArgumentError, match="length 3 but the index has dim=4"):
        ChunkedVectors(ragged, "v").take(np.arange(11))
    with pytest.raises(InvalidArgumentError, match="length 4 but the index has dim=5"):
        ChunkedVectors(pa.chunked_array(_chunks(x, [0, 10])), "v", dim=5).take([0])
    nulls = pa.chunked_array([pa.array([[1.0, 2.0], None], type=pa.list_(pa.float32()))])
    with pytest.raises(InvalidArgumentError, match="null vector"):
        ChunkedVectors(nulls, "v").take([0])


def test_decoding_memory_switches_the_default_pool_and_puts_the_callers_back():
    """Parquet decodes from decoding_pool() inside; nested and concurrent users share one switch,
    and the caller's default comes back when the last leaves, also after an error."""
    import threading

    from sparknn.arrow import decoding_memory, decoding_pool

    before = pa.default_memory_pool().backend_name
    wanted = decoding_pool().backend_name
    with decoding_memory():
        assert pa.default_memory_pool().backend_name == wanted
        with decoding_memory():
            assert pa.default_memory_pool().backend_name == wanted
        assert pa.default_memory_pool().backend_name == wanted  # the outer user is still inside
    assert pa.default_memory_pool().backend_name == before
    with pytest.raises(KeyError), decoding_memory():
        raise KeyError("a failed read")
    assert pa.default_memory_pool().backend_name == before

    inside, leave, seen = threading.Barrier(4), threading.Event(), []

    def user():
        with decoding_memory():
            inside.wait()
            seen.append(pa.default_memory_pool().backend_name)
            leave.wait()

    users = [threading.Thread(target=user) for _ in range(4)]
    for t in users:
        t.start()
    while len(seen) < 4:
        leave.wait(0.01)
    leave.set()
    for t in users:
        t.join()
    assert seen == [wanted] * 4 and pa.default_memory_pool().backend_name == before

    # a default set by someone else while inside is theirs: the last user out leaves it
    pools = {name: getattr(pa, f"{name}_memory_pool", None) for name in ("mimalloc", "jemalloc")}
    other = next((name for name in pa.supported_memory_backends() if name not in (before, wanted) and pools.get(name)),
                 None)
    if other is None:
        pytest.skip("needs a pool that is neither the default nor decoding_pool() to set meanwhile")
    try:
        with decoding_memory():
            pa.set_memory_pool(pools[other]())
        assert pa.default_memory_pool().backend_name == other
    finally:
        pa.set_memory_pool(pools[before]() if before in pools else pa.system_memory_pool())
