import numpy as np
import pytest


def clustered(n: int, dim: int, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Fixed-seed Gaussian clusters, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int, metric: str):
    """numpy brute force in float64: (ids, distances) with 'smaller is closer'."""
    b = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        d = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * q @ b.T
        d = np.maximum(d, 0)
    elif metric == "ip":
        d = -(q @ b.T)
    else:
        d = 1 - q @ b.T
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


@pytest.fixture(scope="session")
def clustered_data():
    return clustered(5000, 32, seed=1), clustered(200, 32, seed=2)
