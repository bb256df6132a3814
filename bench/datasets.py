"""Benchmark data: fixed-seed clustered synthetic sets and Fashion-MNIST.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (the same images as
ann-benchmarks' fashion-mnist-784-euclidean: 60k train as the base, 10k test as
queries, L2 on raw pixel values).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class Dataset:
    name: str
    base: np.ndarray
    queries: np.ndarray
    metric: str


def clustered(n: int, dim: int, nq: int, clusters: int = 1000, seed: int = 0, metric: str = "l2") -> Dataset:
    """Gaussian clusters (centres ~ N(0, 1), spread 0.35 per coordinate); queries from the same law."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            labels = rng.integers(0, clusters, e - s)
            out[s:e] = centres[labels] + 0.35 * rng.standard_normal((e - s, dim), dtype=np.float32)
        return out

    return Dataset(f"clustered-{n // 1000}k-{dim}", draw(n), draw(nq), metric)


def _idx_images(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    count = int.from_bytes(data[4:8], "big")
    rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows * cols).astype(np.float32)


def fashion_mnist(nq: int = 10_000) -> Dataset:
    train = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")
    test = os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")
    if not os.path.exists(train):
        raise FileNotFoundError("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    return Dataset("fashion-mnist-784", _idx_images(train), _idx_images(test)[:nq], "l2")


def get(name: str, nq: int) -> Dataset:
    if name == "clustered-200k-128":
        return clustered(200_000, 128, nq, seed=1)
    if name == "clustered-100k-768":
        return clustered(100_000, 768, nq, seed=2)
    if name == "clustered-50k-128":
        return clustered(50_000, 128, nq, seed=3)
    if name == "fashion-mnist":
        return fashion_mnist(nq)
    raise ValueError(f"unknown dataset {name}")
