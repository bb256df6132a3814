"""Type stubs of the native extension (python/src/core_bindings.cpp)."""

from typing import Optional

import numpy as np
import numpy.typing as npt

FORMAT_VERSION: int

class IndexFileError(ValueError): ...
class InvalidArgumentError(ValueError): ...
class IndexIOError(OSError): ...
class UnsupportedError(NotImplementedError): ...

def ivf_default_nlist(n: int) -> int: ...
def ivf_default_train_size(nlist: int, n: int) -> int: ...
def simd_level() -> str: ...
def cpu_simd_level() -> str: ...
def crc32c(data: npt.NDArray[np.uint8], seed: int = 0) -> int: ...

class IndexOptions:
    """Parameters of make_index; each kind reads its own (sparknn::IndexOptions)."""

    M: int
    ef_construction: int
    ef_search: int
    seed: int
    nlist: int
    nprobe: int
    storage: str
    train_size: int
    pq_m: int
    rerank: int
    def __init__(
        self,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        seed: int = 42,
        nlist: int = 0,
        nprobe: int = 16,
        storage: str = "float32",
        train_size: int = 0,
        pq_m: int = 0,
        rerank: int = 0,
    ) -> None: ...

class Index:
    """What every kind has; make_index and load_index return an instance of the kind's class."""

    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def kind(self) -> str: ...
    threads: int
    @property
    def params(self) -> dict: ...
    def __len__(self) -> int: ...
    def add(self, vectors: npt.NDArray[np.float32], ids: Optional[npt.NDArray[np.int64]]) -> None: ...
    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        nprobe: int,
        out_ids: npt.NDArray[np.int64],
        out_distances: npt.NDArray[np.float32],
        widen: bool = True,
        threads: int = -1,
    ) -> None: ...
    def save(self, path: str, sync: bool = True, side_files: list[tuple[str, int, int]] = ...) -> None: ...
    def side_files(self) -> list[tuple[str, int, int]]: ...
    def reconstruct(self, start: int, stop: int) -> npt.NDArray[np.float32]: ...
    def reconstruct_labels(self, labels: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...
    # Zero-copy, read-only; add raises while any such array is alive.
    def ids(self) -> npt.NDArray[np.int64]: ...
    def vectors(self) -> npt.NDArray[np.float32]: ...

class FlatIndex(Index): ...

class HnswIndex(Index):
    ef_search: int

class IvfIndex(Index):
    nprobe: int
    @property
    def is_trained(self) -> bool: ...
    def add(
        self,
        vectors: npt.NDArray[np.float32],
        ids: Optional[npt.NDArray[np.int64]],
        lists: Optional[npt.NDArray[np.int64]] = None,
    ) -> None: ...
    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        nprobe: int,
        out_ids: npt.NDArray[np.int64],
        out_distances: npt.NDArray[np.float32],
        widen: bool = True,
        threads: int = -1,
        lists: Optional[npt.NDArray[np.int64]] = None,
    ) -> None: ...
    def train(self, vectors: npt.NDArray[np.float32]) -> None: ...
    def ideal_query_batch(self, nprobe: int) -> int: ...
    def nearest_lists(
        self, queries: npt.NDArray[np.float32], nprobe: int, out_lists: npt.NDArray[np.int64], threads: int = -1
    ) -> None: ...
    def probe_lists(
        self, queries: npt.NDArray[np.float32], nprobe: int, need: int,
        list_sizes: npt.NDArray[np.int64] | None = None, nearest: npt.NDArray[np.int64] | None = None,
        threads: int = -1,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def centroids(self) -> npt.NDArray[np.float32]: ...
    def list_sizes(self) -> npt.NDArray[np.int64]: ...
    def list_labels(self) -> npt.NDArray[np.int64]: ...

def make_index(kind: str, dim: int, metric: str, options: IndexOptions = ...) -> Index: ...
def load_index(path: str, mmap: bool, verify: bool) -> Index: ...
