import numpy as np
import pytest

import sparknn
from conftest import exact_knn


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dim", [1, 7, 64, 129])
def test_flat_equals_numpy_by_distance(metric, dim):
    rng = np.random.default_rng(dim)
    base = rng.standard_normal((1500, dim)).astype(np.float32)
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    index = sparknn.Index(dim, metric=metric, kind="flat")
    index.add(base)
    ids, dist = index.search(queries, k=10)
    _, ref_dist = exact_knn(base, queries, 10, metric)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4 * np.sqrt(dim))
    # the returned ids really have the returned distances
    _, own = exact_knn(base, queries, 1500, metric)
    full = np.empty((40, 1500))
    order, d_all = exact_knn(base, queries, 1500, metric)
    np.put_along_axis(full, order, d_all, axis=1)
    np.testing.assert_allclose(np.take_along_axis(full, ids, axis=1), dist, rtol=1e-4, atol=1e-4 * np.sqrt(dim))


def test_user_ids_and_padding():
    index = sparknn.Index(3, metric="l2", kind="flat")
    index.add(np.array([[0, 0, 0], [1, 1, 1]], dtype=np.float32), ids=np.array([42, 7]))
    ids, dist = index.search(np.zeros((1, 3), dtype=np.float32), k=4)
    assert ids.tolist() == [[42, 7, -1, -1]]
    assert np.isinf(dist[0, 2:]).all()
    assert ids.dtype == np.int64 and dist.dtype == np.float32
