"""Uniform wrappers around sparknn and its peers for the side-by-side benchmark.

Each engine builds with `threads` threads, then searches a batch of queries at
a given search-time knob (ef for HNSW, search_k for Annoy; none for exact).
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import numpy as np


def _file_size(save) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index")
        save(path)
        return os.path.getsize(path)


class Engine:
    name = ""
    knobs: list = [None]

    def build(self, base: np.ndarray, metric: str, threads: int) -> None: ...
    def search(self, queries: np.ndarray, k: int, knob, threads: int) -> np.ndarray: ...
    def size_bytes(self) -> int: ...


class SparknnFlat(Engine):
    name = "sparknn-flat"

    def build(self, base, metric, threads):
        import sparknn

        self.index = sparknn.Index(base.shape[1], metric=metric, kind="flat", threads=threads)
        self.index.add(base)

    def search(self, queries, k, knob, threads):
        self.index.threads = threads
        return self.index.search(queries, k)[0]

    def size_bytes(self):
        return _file_size(self.index.save)


class SparknnHnsw(Engine):
    name = "sparknn-hnsw"

    def __init__(self, M=16, ef_construction=200, knobs=(10, 16, 32, 64, 128)):
        self.M, self.efc, self.knobs = M, ef_construction, list(knobs)

    def build(self, base, metric, threads):
        import sparknn

        self.index = sparknn.Index(base.shape[1], metric=metric, kind="hnsw", M=self.M,
                                   ef_construction=self.efc, threads=threads)
        self.index.add(base)

    def search(self, queries, k, knob, threads):
        self.index.threads = threads
        return self.index.search(queries, k, ef=knob)[0]

    def size_bytes(self):
        return _file_size(self.index.save)


class Hnswlib(Engine):
    name = "hnswlib"

    def __init__(self, M=16, ef_construction=200, knobs=(10, 16, 32, 64, 128)):
        self.M, self.efc, self.knobs = M, ef_construction, list(knobs)

    def build(self, base, metric, threads):
        import hnswlib

        space = {"l2": "l2", "ip": "ip", "cosine": "cosine"}[metric]
        self.index = hnswlib.Index(space=space, dim=base.shape[1])
        self.index.init_index(max_elements=base.shape[0], M=self.M, ef_construction=self.efc, random_seed=100)
        self.index.set_num_threads(threads)
        self.index.add_items(base, np.arange(base.shape[0]))

    def search(self, queries, k, knob, threads):
        self.index.set_ef(max(knob, k))
        self.index.set_num_threads(threads)
        return self.index.knn_query(queries, k=k)[0].astype(np.int64)

    def size_bytes(self):
        return _file_size(self.index.save_index)


def _faiss_metric(faiss, metric):
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _faiss_prepare(base, metric):
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
    return np.ascontiguousarray(base, dtype=np.float32)


class FaissFlat(Engine):
    name = "faiss-flat"

    def build(self, base, metric, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.metric = metric
        self.index = faiss.IndexFlat(base.shape[1], _faiss_metric(faiss, metric))
        self.index.add(_faiss_prepare(base, metric))

    def search(self, queries, k, knob, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        return self.index.search(_faiss_prepare(queries, self.metric), k)[1]

    def size_bytes(self):
        import faiss

        return _file_size(lambda p: faiss.write_index(self.index, p))


class FaissHnsw(Engine):
    name = "faiss-hnsw"

    def __init__(self, M=16, ef_construction=200, knobs=(10, 16, 32, 64, 128)):
        self.M, self.efc, self.knobs = M, ef_construction, list(knobs)

    def build(self, base, metric, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.metric = metric
        self.index = faiss.IndexHNSWFlat(base.shape[1], self.M, _faiss_metric(faiss, metric))
        self.index.hnsw.efConstruction = self.efc
        self.index.add(_faiss_prepare(base, metric))

    def search(self, queries, k, knob, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = max(knob, k)
        return self.index.search(_faiss_prepare(queries, self.metric), k)[1]

    def size_bytes(self):
        import faiss

        return _file_size(lambda p: faiss.write_index(self.index, p))


class Annoy(Engine):
    """Annoy as its users run it: items added one by one in Python, then build(n_trees)."""

    name = "annoy"

    def __init__(self, n_trees=50, knobs=(1000, 5000, 20000, 50000)):
        self.n_trees, self.knobs = n_trees, list(knobs)

    def build(self, base, metric, threads):
        from annoy import AnnoyIndex

        self.index = AnnoyIndex(base.shape[1], {"l2": "euclidean", "ip": "dot", "cosine": "angular"}[metric])
        for i, row in enumerate(base):
            self.index.add_item(i, row)
        self.index.build(self.n_trees, n_jobs=threads)

    def search(self, queries, k, knob, threads):
        # Annoy has no batch API: one Python call per query (single-threaded).
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for i, q in enumerate(queries):
            res = self.index.get_nns_by_vector(q, k, search_k=knob)
            out[i, : len(res)] = res
        return out

    def size_bytes(self):
        return _file_size(self.index.save)


ENGINES = {
    "sparknn-flat": SparknnFlat,
    "sparknn-hnsw": SparknnHnsw,
    "faiss-flat": FaissFlat,
    "faiss-hnsw": FaissHnsw,
    "hnswlib": Hnswlib,
    "annoy": Annoy,
}


def make(name: str, knobs: Optional[list] = None) -> Engine:
    engine = ENGINES[name]()
    if knobs:
        engine.knobs = knobs
    return engine
