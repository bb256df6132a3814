"""Small fixed-seed example data: clustered Gaussian vectors as an Arrow table.

Used by ``sparknn example`` (the README's first command) and by the tests.
Clusters make the neighbour structure realistic: uniform random vectors in
64 dimensions are all nearly equidistant, which flatters approximate indexes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sparknn.arrow import rows_to_list
from sparknn.errors import InvalidArgumentError


def _vectors(n: int, dim: int, clusters: int, seed: int, stream: int) -> np.ndarray:
    if n < 0 or dim < 1 or clusters < 1:
        raise InvalidArgumentError(f"need n >= 0, dim >= 1 and clusters >= 1, got n={n}, dim={dim}, "
                                   f"clusters={clusters}")
    # The centres depend only on (seed, dim, clusters), so items and queries
    # drawn with the same seed come from the same clusters.
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)) * 3.0
    rng = np.random.default_rng([seed, stream])
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)


def vector_table(ids, vectors: np.ndarray, id_col: str = "id", vector_col: str = "vector") -> pa.Table:
    """A table of ``ids`` and ``vectors`` [n, dim] as ``list<float32>``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n * dim >= 2**31:
        raise InvalidArgumentError(f"{n} x {dim} values do not fit a list<float32> column; use fewer rows")
    return pa.table({id_col: ids, vector_col: rows_to_list(vectors)})


def make_items(n: int = 20_000, dim: int = 64, clusters: int = 100, seed: int = 0) -> pa.Table:
    """``n`` items: ``id`` int64 (0..n-1) and ``vector`` list<float32> [dim], fixed seed."""
    return vector_table(pa.array(np.arange(n, dtype=np.int64)), _vectors(n, dim, clusters, seed, stream=1))


def make_queries(n: int = 1_000, dim: int = 64, clusters: int = 100, seed: int = 0) -> pa.Table:
    """``n`` queries from the same clusters as ``make_items`` with the same arguments (other points)."""
    return vector_table(pa.array(np.arange(n, dtype=np.int64)), _vectors(n, dim, clusters, seed, stream=2))
