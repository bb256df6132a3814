"""The numpy-facing Index: argument checking and conversion, then the C++ core.

C-contiguous float32 input is passed to the engine without a copy; other
numeric dtypes and layouts are converted once. The GIL is released while the
engine adds or searches. An Index may be shared by threads (see :class:`Index`).
"""

from __future__ import annotations

import os
import dataclasses
import math
import threading
from typing import Mapping, Optional, Tuple

import numpy as np

from sparknn import _core, integrity, tuning
from sparknn.errors import InvalidArgumentError

KINDS = ("flat", "hnsw", "ivf")
STORAGES = ("float32", "fp16", "bf16", "sq8", "pq")
# Storages that keep each vector as one row of values: every kind has them; sq8 and pq are ivf's.
ROW_STORAGES = ("float32", "fp16", "bf16")
_STORAGE_ALIASES = {"float": "float32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
METRICS = ("l2", "ip", "cosine")
_METRIC_ALIASES = {"euclidean": "l2", "sqeuclidean": "l2", "inner_product": "ip", "dot": "ip", "angular": "cosine"}


def _as_matrix(x, dim: int, name: str) -> np.ndarray:
    """A C-contiguous float32 [n, dim] view of x (copied only if needed)."""
    arr = np.asarray(x)
    # Real numbers only: not bool, complex, timedelta (an integer subtype), strings or objects.
    if arr.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"{name} must be numeric (float32 preferred), got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidArgumentError(f"{name} must be a 2-D array [n, dim], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise InvalidArgumentError(f"{name} have dimension {arr.shape[1]} but the index has dim={dim}")
    if arr.dtype == np.float32:
        return np.ascontiguousarray(arr)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    # A finite float64 beyond float32's range became inf; say so rather than "non-finite".
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and np.isinf(out).any():
        bad = np.argwhere(np.isinf(out) & np.isfinite(arr))
        if len(bad):
            row, col = bad[0]
            raise InvalidArgumentError(
                f"{name} row {row} has {float(arr[row, col])!r} at position {col}, beyond the float32 range "
                "sparknn stores: rescale the vectors"
            )
    return out


def _as_ids(ids, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"ids must be a 1-D array of integers, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InvalidArgumentError(f"ids has {arr.shape[0]} entries but vectors has {n} rows")
    if n == 0:
        return np.empty(0, dtype=np.int64)  # e.g. ids=[], whose dtype numpy guesses as float64
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"ids must be integers (int64), got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and n and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgumentError("ids must fit in int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _result_arrays(nq: int, k: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Empty ids int64 [nq, k] and distances float32 [nq, k]; a k too large for memory is
    reported with what to ask for instead of numpy's allocation error."""
    try:
        return np.empty((nq, k), dtype=np.int64), np.empty((nq, k), dtype=np.float32)
    except (MemoryError, ValueError):
        need = nq * k * 12 / 2**30
        raise MemoryError(f"search results for {nq} queries x k={k} need {need:,.1f} GiB; the index holds {n} "
                          f"vectors, so k <= {max(n, 1)} already gives every one of them (larger k only pads "
                          "with id -1)") from None


def _as_int64(values, name: str) -> np.ndarray:
    """Integers as a flat int64 array: a float array is refused, not truncated (1.7 -> row 1)."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)


def _as_lists(lists, n: int, width: Optional[int]) -> np.ndarray:
    """IVF list numbers as int64 [n, width] (a 1-D array is one list per row)."""
    arr = np.asarray(lists)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] != n or (width is not None and arr.shape[1] != width):
        want = f"[{n}, {width}]" if width is not None else f"[{n}] or [{n}, nprobe]"
        raise InvalidArgumentError(f"lists must have shape {want}, got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"lists must be integers (from nearest_lists), got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise InvalidArgumentError("lists must name at least one list per row")
    return np.ascontiguousarray(arr, dtype=np.int64)


def normalise_metric(metric: str) -> str:
    metric = _METRIC_ALIASES.get(str(metric).lower(), str(metric).lower())
    if metric not in METRICS:
        raise InvalidArgumentError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    return metric


# The engine's integer types: counts are size_t (passed as int64 here), thread counts C int, seeds uint64.
INT64_MAX, INT_MAX, UINT64_MAX = 2**63 - 1, 2**31 - 1, 2**64 - 1


def _check_count(value, name: str, minimum: int, maximum: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value > maximum:  # beyond the engine's type: the binding would reject it with a list of overloads
        raise InvalidArgumentError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)


def first_pass_setting(value, name: str = "first_pass_dims"):
    """A first-pass setting as the index takes it: ``"auto"``, 0 (off) or a count of dimensions,
    from ``"auto"``, ``"off"``, a count or its text (the CLI's argument, a saved Spark Param)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "off"):
            return "auto" if text == "auto" else 0
        value = int(text) if text.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidArgumentError(f"{name} must be 'auto', 'off' or a count of dimensions, got {value!r}")
    return int(value)


def _check_threads(value) -> int:
    return _check_count(value, "threads", 0, INT_MAX)


def _call_threads(threads) -> int:
    """A call's ``threads`` as the engine takes it: None (the index's own) is -1."""
    return -1 if threads is None else _check_threads(threads)


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """What an index is: its kind, metric and parameters, checked and normalised once.

    The one description of an index every layer passes along: :class:`Index`
    is built from it, the command line and every Spark build make one from
    their options, and the binding receives its fields by name. The fields are
    those of :class:`Index` (which documents them). ``for_items(n)`` fixes an
    ivf ``nlist`` of 0 to the count the engine picks for n vectors, so a build
    that adds its vectors in batches gets lists chosen for all of them.
    """

    kind: str = "hnsw"
    metric: str = "cosine"
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    seed: int = 42
    nlist: int = 0
    nprobe: int = 16
    storage: str = "float32"
    train_size: int = 0
    pq_m: int = 0
    rerank: int = 0
    threads: int = 0
    first_pass_dims: object = 0  # ivf: 0 (off), "auto" or a count (Index.first_pass_dims)

    def __post_init__(self):
        kind = str(self.kind).lower()
        if kind not in KINDS:
            raise InvalidArgumentError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
        storage = str(self.storage).lower()
        storage = _STORAGE_ALIASES.get(storage, storage)
        if storage not in STORAGES:
            raise InvalidArgumentError(f"unknown storage {storage!r}: use one of {', '.join(STORAGES)}")
        if kind != "ivf" and storage not in ROW_STORAGES:
            raise InvalidArgumentError(f"storage {storage!r} compresses vectors per inverted list: only kind 'ivf' "
                                       f"keeps it; {kind} keeps {', '.join(ROW_STORAGES)}")
        checked = {"kind": kind, "metric": normalise_metric(self.metric), "storage": storage}
        for name, minimum in _SPEC_MINIMUMS.items():
            checked[name] = _check_count(getattr(self, name), name, minimum, _SPEC_MAXIMUMS.get(name, INT64_MAX))
        checked["first_pass_dims"] = first_pass_setting(self.first_pass_dims)
        # "auto" is off where no first pass can be made (it re-ranks from float32 ivf lists): a
        # spec replaced into another kind or storage (a grouped model's flat shards) stays valid
        if checked["first_pass_dims"] == "auto" and not (kind == "ivf" and storage == "float32"
                                                         and checked["rerank"] >= 1):
            checked["first_pass_dims"] = 0
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def for_items(self, n: int, batch: bool = False) -> "IndexSpec":
        """This spec with an ivf ``nlist`` of 0 replaced by the engine's choice for ``n`` vectors.

        ``batch``: the index is searched by large batches of queries (a self-join: every item;
        a Spark model: ``similarItems``, ``transform`` of a DataFrame) rather than a query at a
        time, and the lists are sqrt(n) instead of about 4 sqrt(n). k-means and the assignment
        of every item cost in proportion to nlist (training more: its sample grows with nlist
        too), while a batch scans larger lists as larger matrix products; the recall target then
        picks the lists to scan. Measured in-process at recall >= 0.95 (train + assign +
        search): Fashion-MNIST 70k x 784 1.7 s against 3.9 s at 4 sqrt(n), clustered 200k x 128
        1.2 against 3.0 s, 100k x 768 1.7 against 5.5 s; on Spark (fit + similarItems, recall
        target 0.95) Fashion-MNIST 60k 10.5 s against 13.3 s, clustered 200k x 768 15.7 against
        26.2 s (bench/README.md, docs/spark.md). A query at a time (4 sqrt(n), faiss' rule) pays
        less per query for its nearest lists: an Index trained directly keeps that default.
        """
        if self.kind != "ivf" or self.nlist or n <= 0:
            return self
        nlist = max(1, min(n, round(math.sqrt(n)))) if batch else _core.ivf_default_nlist(int(n))
        return dataclasses.replace(self, nlist=nlist)

    def replace(self, **changes) -> "IndexSpec":
        """A copy with ``changes`` (checked like a new spec)."""
        return dataclasses.replace(self, **changes)

    def create(self, dim: int) -> "Index":
        """A new, empty index of ``dim`` dimensions."""
        return Index(dim, spec=self)

    def _native(self, dim: int) -> _core.Index:
        options = _core.IndexOptions(M=self.M, ef_construction=self.ef_construction, ef_search=self.ef_search,
                                     seed=self.seed, nlist=self.nlist, nprobe=self.nprobe, storage=self.storage,
                                     train_size=self.train_size, pq_m=self.pq_m, rerank=self.rerank)
        return _core.make_index(self.kind, dim, self.metric, options)


# An ivf index with float32 lists searched by batches (`sparknn similar`, a Spark KNN model)
# re-ranks twice k candidates of a bf16 scan unless told otherwise: the same neighbours on the
# data measured, exact distances, a faster search on CPUs with AVX512_BF16 (docs/ivf.md).
BATCH_RERANK = 2


def default_rerank(kind: str, storage: str) -> int:
    """``rerank`` when the user gave none, for an index searched by batches."""
    return BATCH_RERANK if kind == "ivf" and storage == "float32" else 0


_TUNING_LOCK = threading.Lock()  # guards Index._tuning_cache's merges (held for a dict copy only)

_SPEC_MINIMUMS = {"M": 2, "ef_construction": 1, "ef_search": 1, "seed": 0, "nlist": 0, "nprobe": 1,
                  "train_size": 0, "pq_m": 0, "rerank": 0, "threads": 0}
_SPEC_MAXIMUMS = {"seed": UINT64_MAX, "threads": INT_MAX}

# The native class of each kind with methods of its own (flat has none).
_NATIVE_CLASSES = {"hnsw": _core.HnswIndex, "ivf": _core.IvfIndex}

#: float32 rows [rows, dim], uninitialised, filled through ``block.array()`` (a writable numpy
#: view) and then taken by an index without a copy (:meth:`Index.adopt_rows`).
RowBlock = _core.RowBlock


class Index:
    """A k-nearest-neighbour index over float vectors with int64 ids.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"cosine", "l2", "ip"}
        ``l2`` is squared Euclidean distance, ``ip`` the negated inner product,
        ``cosine`` is ``1 - cos``; vectors are normalised once when added.
        Distances are always "smaller is closer".
    kind : {"hnsw", "flat", "ivf"}
        ``flat`` is exact search (BLAS); ``hnsw`` is an approximate graph index;
        ``ivf`` partitions the vectors into k-means lists (docs/ivf.md).
    **params
        The other fields of :class:`IndexSpec` (defaults there), by keyword:
    M, ef_construction, ef_search : int
        HNSW parameters (ignored by other kinds).
    storage : {"float32", "fp16", "bf16", "sq8", "pq"}
        How vectors are kept. Every kind: "float32", or "fp16" / "bf16" (16 bits
        per value: half the memory and file; fp16 keeps 11 significant bits and
        |values| <= 65504 and refuses rows too small for it, bf16 8 bits and
        float32's range; docs/storage.md).
        ivf also: "sq8" (8-bit scalar quantisation, 4x smaller) or "pq"
        (``pq_m`` bytes per vector, 0 = about dim/4).
    nlist, nprobe, train_size, pq_m, rerank
        IVF parameters: ``nlist`` lists (0 = about 4 sqrt(n), chosen when
        trained), ``nprobe`` lists scanned per query, ``train_size`` vectors sampled for k-means
        (0 = automatic), ``rerank`` r > 0 re-ranks the r*k best candidates of an
        approximate scan by exact distance: sq8 / pq scan their codes and keep
        float32 copies in the file for it (memory-mapped: only candidates are
        read); float32 scans in bf16 on CPUs with AVX512_BF16 (twice the
        arithmetic rate; elsewhere in float32 sgemm, whose rounding depends on the
        batch) and re-ranks from its own lists: no extra memory, distances exact
        and the same in any batch, answers the float32 scan's but for near ties
        (rerank 2 kept every neighbour on the data measured; docs/ivf.md). fp16 / bf16
        refuse it. An untrained index trains on its first ``add``; ``train(sample)``
        trains it explicitly.
    seed : int
        Seed of HNSW levels and IVF k-means.
    threads : int
        Threads for add and search; 0 means all available cores.
    spec : IndexSpec, optional
        Instead of ``metric``, ``kind`` and ``params``: the whole description at once.

    Threads: one Index may be shared by any number of threads. ``search``,
    ``save``, ``reconstruct``, ``nearest_lists`` and the other readers run
    concurrently; ``add``, ``train`` and setting ``threads``, ``nprobe`` or
    ``ef_search`` wait for running calls and run alone (and readers that come
    later wait for them). Threads that want their own thread count pass
    ``search(..., threads=n)`` rather than setting the shared attribute.
    ``ids`` and ``vectors`` are zero-copy, read-only views of
    the index's memory: while any such array (or a view of it) is alive,
    ``add`` raises ``InvalidArgumentError`` rather than move that memory; drop
    them or take copies (``index.ids.copy()``) before adding.
    """

    def __init__(self, dim: int, metric: str = "cosine", kind: str = "hnsw", *, spec: Optional[IndexSpec] = None,
                 _native=None, **params):
        if _native is not None:
            self._index = _native
            return
        dim = _check_count(dim, "dim", 1)
        if spec is None:
            spec = IndexSpec(kind=kind, metric=metric, **params)  # a misspelt parameter is a TypeError
        elif not isinstance(spec, IndexSpec):
            raise InvalidArgumentError(f"spec must be a sparknn.IndexSpec, got {type(spec).__name__}")
        elif params:
            raise InvalidArgumentError(f"give the parameters in spec, not also as keywords ({', '.join(params)})")
        self._index = spec._native(dim)
        self.threads = spec.threads
        if spec.first_pass_dims:  # before training: its k-means then runs in the subspace
            self.first_pass_dims = spec.first_pass_dims

    def _native_as(self, kind: str, what: str, say_kind: bool = True):
        """The native index when it is of ``kind``, whose class alone has ``what``; otherwise
        InvalidArgumentError "<what> applies to <kind> indexes only (this index is <its kind>)"."""
        if isinstance(self._index, _NATIVE_CLASSES[kind]):
            return self._index
        this = f" (this index is {self.kind})" if say_kind else ""
        raise InvalidArgumentError(f"{what} applies to {kind} indexes only{this}")

    # -- properties -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def metric(self) -> str:
        return self._index.metric

    @property
    def kind(self) -> str:
        return self._index.kind

    @property
    def storage(self) -> str:
        """How the vectors are kept: "float32", "fp16", "bf16" (every kind), "sq8" or "pq" (ivf)."""
        return self._index.storage

    @property
    def threads(self) -> int:
        return self._index.threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._index.threads = _check_threads(value)

    @property
    def ef_search(self) -> int:
        """hnsw: the default candidate list size of a search (0 for other kinds)."""
        return self._index.ef_search if isinstance(self._index, _core.HnswIndex) else 0

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        value = _check_count(value, "ef_search", 1)
        self._native_as("hnsw", "ef_search", say_kind=False).ef_search = value

    @property
    def nprobe(self) -> int:
        """ivf: the default number of lists a search scans (0 for other kinds)."""
        return self._index.nprobe if isinstance(self._index, _core.IvfIndex) else 0

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        value = _check_count(value, "nprobe", 1)
        self._native_as("ivf", "nprobe", say_kind=False).nprobe = value

    @property
    def first_pass_dims(self):
        """ivf: the projected first pass's setting: 0 (off, the default), ``"auto"`` or a count.

        With it on, a search projects the lists' rows and its queries onto the principal
        subspace of a sample of the rows, scans the lists there, and re-ranks each query's
        best ``max(rerank, 4) * k`` candidates by exact float32 distance: for long vectors
        searched by large batches (a self-join), whose scan then costs ``dims / dim`` of the
        multiply-adds. ``"auto"`` takes the least multiple of 16 dimensions (up to dim / 4,
        at most 256) that holds 90% of the variance, and stays off when none does or dim <
        256. Set before training (or as ``IndexSpec.first_pass_dims``), the basis is fitted on
        the training sample and k-means runs in the subspace too (each centroid then the mean
        of its members' full rows); else it is fitted on the first search. The lists are
        projected on the first search (a pass over the rows, ``n * dims`` floats kept until the
        next add); recall tuning measures the answers searched this way. Needs float32 storage
        and ``rerank >= 1``. Saved with the index (the setting, and the basis once fitted), so a
        loaded index searches in the subspace it was trained and tuned in.
        :meth:`first_pass_in_use` says what a search would use.
        """
        if not isinstance(self._index, _core.IvfIndex):
            return 0
        dims = self._index.first_pass_dims
        return "auto" if dims == -1 else dims

    @first_pass_dims.setter
    def first_pass_dims(self, value) -> None:
        native = self._native_as("ivf", "first_pass_dims", say_kind=False)
        setting = first_pass_setting(value)
        native.first_pass_dims = -1 if setting == "auto" else _check_count(setting, "first_pass_dims", 0, self.dim - 1)

    def first_pass_in_use(self, threads: Optional[int] = None) -> Tuple[int, float]:
        """ivf: ``(dims, variance share)`` of the first pass a search would use now (fitting
        it if needed), ``(0, 0.0)`` when it is off or declined (see :attr:`first_pass_dims`)."""
        if not isinstance(self._index, _core.IvfIndex):
            return 0, 0.0
        dims, share = self._index.first_pass_in_use(_call_threads(threads))
        return int(dims), float(share)

    @property
    def is_trained(self) -> bool:
        """False only for an ivf index that has no lists yet."""
        return self._index.is_trained if isinstance(self._index, _core.IvfIndex) else True

    @property
    def params(self) -> dict:
        return dict(self._index.params)

    @property
    def ids(self) -> np.ndarray:
        """The ids of the stored vectors, in insertion order: a zero-copy, read-only view.

        While it (or any array made from it without a copy) is alive, ``add`` raises
        ``InvalidArgumentError`` instead of moving the memory under it; use
        ``index.ids.copy()`` to keep ids across adds.
        """
        return self._index.ids()

    @property
    def vectors(self) -> np.ndarray:
        """flat, hnsw: the stored vectors (normalised under cosine), float32 [n, dim], a zero-copy,
        read-only view that pins the index against ``add`` as :attr:`ids` does. An ivf index
        stores vectors per list (maybe compressed), and fp16 / bf16 storage holds no float32
        array: use :meth:`reconstruct` (raises ``UnsupportedError``)."""
        return self._index.vectors()

    def stored_vectors(self) -> np.ndarray:
        """Every stored vector, float32 [n, dim]: the zero-copy :attr:`vectors` where the index
        keeps float32 rows (flat, hnsw), otherwise decoded by :meth:`reconstruct` (a copy)."""
        if self.kind != "ivf" and self.storage == "float32":
            return self.vectors
        return self.reconstruct()

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"sparknn.Index(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, size={len(self)})"

    # -- operations -------------------------------------------------------------------
    def add(self, vectors, ids=None, lists=None) -> None:
        """Adds vectors [n, dim] with optional int64 ids [n].

        Without ids, ids continue from the largest id so far + 1 (0..n-1 for a new
        index). Duplicate or negative ids, NaN/inf values and (for cosine) zero
        vectors raise ValueError and leave the index unchanged, as does a live
        zero-copy view of the index (:attr:`ids`). Waits for running searches;
        searches started meanwhile wait for it.

        ``lists`` (ivf, trained): the list of each vector [n], usually column 0 of
        :meth:`nearest_lists`, so a self-join assigns its items once for both add
        and search.
        """
        x = _as_matrix(vectors, self.dim, "vectors")
        id_arr = None if ids is None else _as_ids(ids, x.shape[0])
        list_arr = None if lists is None else np.ascontiguousarray(_as_lists(lists, x.shape[0], None)[:, 0])
        if x.shape[0] == 0:
            return
        if list_arr is None:
            self._index.add(x, id_arr)
        else:
            self._native_as("ivf", "add(lists=...)").add(x, id_arr, list_arr)

    def adopt_rows(self, block: RowBlock, ids=None, lists=None, order=None, nearest: int = 0) -> Optional[np.ndarray]:
        """An empty index whose vectors are float32 (flat, hnsw; ivf trained, with float32
        lists) adds the rows of ``block`` (a :class:`RowBlock` filled through ``block.array()``)
        without copying them: it keeps the block's memory as its vectors (ivf: reordered in place
        into list order, as its lists), so a build that held its input needs the vectors' memory
        once, not twice (and touches no fresh memory for them). The block is the index's from
        then on: ``block.array()`` raises, and arrays taken from it before must not be used.
        ``order`` (int [n], each row once): the rows in the order :meth:`add` would have been
        given them (row ``order[i]`` becomes the i-th vector; default: the block's order);
        ``ids`` and ``lists`` (ivf only) as :meth:`add`, in that order. Bad rows, ids or orders
        raise as in :meth:`add`, leaving the index and the block unchanged.

        ``nearest`` (ivf, without ``lists``): the index finds the lists itself and returns each
        vector's nearest ``nearest`` lists, int64 [n, nearest] in the order of ``order`` (what
        :meth:`nearest_lists` answers for it; a self-join's probes). With a first pass trained
        in its subspace, the rows are projected once for both their lists and the first pass's
        projected lists (which the first search would otherwise compute again)."""
        n = block.rows
        id_arr = None if ids is None else _as_ids(ids, n)
        order_arr = None if order is None else _as_int64(order, "order")
        nearest = _check_count(nearest, "nearest", 0)
        if self.kind != "ivf":
            if lists is not None or nearest:
                raise InvalidArgumentError(f"lists= and nearest= are for ivf indexes; this index is {self.kind}")
            self._index.adopt_rows(block, id_arr, order_arr)
            return None
        native = self._native_as("ivf", "adopt_rows()")
        if nearest:
            if lists is not None:
                raise InvalidArgumentError("give lists= or nearest=, not both: nearest= finds the lists")
            found = np.empty((n, nearest), dtype=np.int64)
            native.adopt_rows_nearest(block, id_arr, order_arr, found)
            return found
        list_arr = None if lists is None else np.ascontiguousarray(_as_lists(lists, n, None)[:, 0])
        native.adopt_rows(block, id_arr, list_arr, order_arr)
        return None

    def rows_in_list_order(self) -> Optional[np.ndarray]:
        """ivf, float32 lists: every stored vector list after list (in :meth:`list_order`), a
        zero-copy read-only view that pins the index as :attr:`vectors` does, when the lists lie
        in one array (after :meth:`adopt_rows`, or loaded from a file, nothing added since); None
        otherwise (then ``reconstruct_rows(list_order())`` gives the same rows as a copy)."""
        native = self._native_as("ivf", "rows_in_list_order()")
        try:  # Unsupported: codes that are not float32 rows, or lists not in one array
            return native.rows_in_list_order()
        except _core.UnsupportedError:
            return None

    def shrink_to_fit(self) -> None:
        """Returns the memory reserved for growth and freed by the adds, after the last add: an
        ivf index added to in batches holds up to twice its lists' rows (300k x 768 added 4096 at
        a time: the process grew by 1.21 GB for 0.88 GB of vectors, 0.90 GB after this). Answers
        are unchanged; a later add grows the lists again."""
        self._index.shrink_to_fit()

    def reserve_lists(self, extra) -> None:
        """ivf: room for ``extra[l]`` more vectors in list ``l`` (int [nlist], >= 0), so the adds
        that follow append without growing. A builder that knows where every vector goes
        (:meth:`nearest_lists`) reserves first: the lists then never hold more than they
        need, where lists grown add by add hold up to twice their vectors until
        :meth:`shrink_to_fit`. Needs a trained index."""
        extra = _as_int64(extra, "extra")
        self._native_as("ivf", "reserve_lists()").reserve_lists(extra)

    def train(self, vectors) -> None:
        """Trains an IVF index's lists (k-means) on a sample [n, dim], before the first add."""
        x = _as_matrix(vectors, self.dim, "training vectors")
        self._native_as("ivf", "train()", say_kind=False).train(x)

    def reconstruct(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """A copy of the stored vectors of rows ``[start, stop)`` (insertion order), float32 [n, dim].

        Under cosine these are the normalised vectors. float32 storage (or ivf sq8 / pq
        with ``rerank``) returns them exactly, fp16 / bf16 the values as stored
        (rounded to nearest even when added); ivf sq8 and pq return their decoded
        approximations.
        """
        stop = len(self) if stop is None else stop
        start, stop = _check_count(start, "start", 0), _check_count(stop, "stop", 0)
        return self._index.reconstruct(start, stop)

    def reconstruct_rows(self, rows) -> np.ndarray:
        """A copy of the stored vectors at positions ``rows`` (insertion order, int [m]), float32
        [m, dim]; exact or decoded as :meth:`reconstruct`."""
        return self._index.reconstruct_labels(_as_int64(rows, "rows"))

    def list_order(self) -> np.ndarray:
        """ivf: the positions (insertion order) of the stored vectors, list after list, int64 [n]
        (``list_sizes`` gives the boundaries). A self-join that takes its queries in this order
        gives each list all its members at once: larger, faster scans."""
        return self._native_as("ivf", "list_labels").list_labels()

    def query_batch(self, minimum: int, maximum: int, nprobe: Optional[int] = None) -> int:
        """Queries to hand one ``search`` call: ``minimum`` for flat and hnsw (they search per
        query); for ivf, enough that each probed list sees ~256 queries (its scan is then one
        efficient sgemm), 256 x nlist / nprobe, within [minimum, maximum]."""
        if self.kind != "ivf":
            return minimum
        return int(np.clip(self._index.ideal_query_batch(nprobe or self.params["nprobe"]), minimum, maximum))

    def nearest_lists(self, vectors, nprobe: int = 1, threads: Optional[int] = None) -> np.ndarray:
        """ivf: the ``nprobe`` lists whose centroids are nearest each vector, int64 [n, nprobe], nearest first.

        The lists ``search`` scans for the same queries and ``nprobe`` (routing
        queries to the machines holding those lists uses this). ``threads`` as in
        :meth:`search`.
        """
        nprobe = _check_count(nprobe, "nprobe", 1)
        threads = _call_threads(threads)
        x = _as_matrix(vectors, self.dim, "vectors")
        native = self._native_as("ivf", "nearest_lists()")
        if native.is_trained and nprobe > self.params["nlist"]:
            # the engine's own message, before allocating [n, nprobe]
            raise InvalidArgumentError(f"nprobe must be in [1, nlist={self.params['nlist']}], got {nprobe}")
        out = np.empty((x.shape[0], nprobe), dtype=np.int64)
        if x.shape[0]:
            native.nearest_lists(x, nprobe, out, threads)
        return out

    def probe_lists(self, vectors, nprobe: int, need: int, list_sizes=None, nearest=None,
                    threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """ivf: the lists each query scans so that they hold at least ``need`` vectors, nearest first.

        Returns CSR ``(offsets, lists)``: query i scans ``lists[offsets[i]:offsets[i + 1]]``. That
        is its ``nprobe`` nearest lists (the first ``nprobe`` columns of ``nearest``, int [n, >=
        nprobe], when already known), or, for a query whose lists hold fewer than ``need``, the
        nearest lists at twice, four times ... the width until they do, trimmed to the shortest
        prefix that does (all lists if even they do not). ``list_sizes`` (int [nlist]) counts the
        vectors per list, default this index's own: a routed query passes the sizes of all its
        parts. ``search`` widens by the same policy.
        """
        nprobe = _check_count(nprobe, "nprobe", 1)
        need = _check_count(need, "need", 0)
        threads = _call_threads(threads)
        x = _as_matrix(vectors, self.dim, "vectors")
        native = self._native_as("ivf", "probe_lists()")
        sizes = None if list_sizes is None else np.ascontiguousarray(list_sizes, dtype=np.int64).reshape(-1)
        given = None if nearest is None else _as_lists(nearest, x.shape[0], None)
        return native.probe_lists(x, nprobe, need, sizes, given, threads)

    @property
    def centroids(self) -> np.ndarray:
        """ivf: a copy of the centroids, float32 [nlist, dim] (unit vectors under cosine); empty before training."""
        return self._native_as("ivf", "centroids").centroids()

    @property
    def list_sizes(self) -> np.ndarray:
        """ivf: vectors per list, int64 [nlist]; empty before training."""
        return self._native_as("ivf", "list_sizes").list_sizes()

    def tune(self, recall: float, k: int = 10, queries=None, sample: int = tuning.SAMPLE, seed: int = 0,
             threads: Optional[int] = None) -> tuning.Tuning:
        """Sets ``nprobe`` (ivf) or ``ef_search`` (hnsw) to the least value whose recall@k reaches
        ``recall``, measured against exact search on ``sample`` queries (drawn with ``seed``) from
        ``queries``, or else from the stored vectors (each then excluding itself, as in a
        self-join). Returns the :class:`sparknn.tuning.Tuning`: the value and the recall measured
        (if no value reaches the target, the most work tried; ``reached`` is then False). A flat
        index is exact: nothing to tune. The exact pass reads the stored vectors (decoded, for a
        compressed ivf) in blocks; float32 ivf lists give the exact answers and the ladder's
        nprobe 1-16 from one scan of every list instead (with the bf16 scan, an answer is kept
        only when proven exact against its error bound; the others take the exact pass; past a
        query's nearest 16 lists, those that cannot hold one of its neighbours are skipped). A
        quarter of the sample is measured first and decides alone when the least value reaches
        the target beyond doubt (``tuning.settled``; the Tuning's ``sample`` then says 250 of
        1000), sparing the rest's exact pass."""
        chosen = self._tuning(recall, k, queries, sample, seed, threads)
        if chosen.param == "nprobe":
            self.nprobe = chosen.value
        elif chosen.param == "ef":
            self.ef_search = chosen.value
        return chosen

    @property
    def tunings(self) -> dict:
        """(k, recall target) -> :class:`sparknn.tuning.Tuning` chosen by ``search(..., recall=)``."""
        return dict(getattr(self, "_tuning_cache", (None, {}))[1])

    def _tuned(self, recall, k, queries, threads) -> tuning.Tuning:
        key = (k, tuning.check_target(recall))
        # Tunings hold for the vectors they were measured on: an add (a new count) drops them.
        count = len(self)
        cached_count, tunings = getattr(self, "_tuning_cache", (None, {}))
        found = tunings.get(key) if cached_count == count else None
        if found is None:
            found = self._tuning(recall, k, queries, tuning.SAMPLE, 0, threads)
            # Threads tuning at once merge under a lock (each replacing the dict lost the others'
            # entries); one measured across an add is not kept. (count, dict): replaced whole, never mutated.
            with _TUNING_LOCK:
                cached_count, tunings = getattr(self, "_tuning_cache", (None, {}))
                if len(self) == count:
                    self._tuning_cache = (count, {**(tunings if cached_count == count else {}), key: found})
        return found

    def _tuning(self, recall, k, queries, sample, seed, threads) -> tuning.Tuning:
        target = tuning.check_target(recall)
        k = _check_count(k, "k", 1)
        n = len(self)
        if self.kind == "flat" or n == 0:
            return tuning.Tuning("", 0, 1.0, target, k, 0)
        rng = np.random.default_rng(_check_count(seed, "seed", 0, UINT64_MAX))
        own = queries is None
        if own:
            rows = np.sort(rng.choice(n, min(_check_count(sample, "sample", 1), n), replace=False))
            q = self.reconstruct_rows(rows)
        else:
            q = _as_matrix(queries, self.dim, "queries")
            if not len(q):  # a recall measured on nothing would choose the least work and claim 1.0
                raise InvalidArgumentError("queries is empty: tuning needs at least one query to measure recall on")
            q = q[np.sort(rng.choice(len(q), min(_check_count(sample, "sample", 1), len(q)), replace=False))]
        kk = min(k, n - 1 if own else n)
        if kk < 1:
            return tuning.Tuning("", 0, 1.0, target, k, 0)
        step = max(1, tuning.BLOCK_BYTES // (4 * self.dim))
        exact_search = flat_search(self.metric, self.threads if threads is None else threads)
        ids = self.ids
        own_ids = ids[rows] if own else None

        def truth_of(sel: np.ndarray) -> np.ndarray:
            """The true neighbours' ids of the queries ``sel`` (positions into q): one exact pass."""
            blocks = (self.reconstruct(lo, min(n, lo + step)) for lo in range(0, n, step))
            found = tuning.exact_neighbours(blocks, q[sel], kk, exact_search, exclude=rows[sel] if own else None)
            return np.where(found >= 0, ids[np.maximum(found, 0)], -1)

        def tuned(sel: np.ndarray, truth: np.ndarray) -> tuning.Tuning:
            def found(value: int) -> np.ndarray:
                knob = {"nprobe": value} if self.kind == "ivf" else {"ef": value}  # the ef ladder starts at kk + own
                got, _ = self.search(q[sel], kk + own, threads=threads, **knob)
                if own:  # drop each query's own id, keep kk
                    got = tuning.drop_own(got, own_ids[sel], kk)
                return got

            def found_at_each(values: list[int]) -> list[np.ndarray]:
                """ivf: the answers at every nprobe of ``values`` from one scan of the largest."""
                ivf = self._native_as("ivf", "search_nprobes")
                got, _ = ivf.search_nprobes(q[sel], kk + own, [int(v) for v in values], _call_threads(threads))
                return [tuning.drop_own(g, own_ids[sel], kk) if own else g for g in got]

            if self.kind == "ivf":
                return tuning.tune(found, truth, target, "nprobe", int(self.params["nlist"]), k,
                                   search_many=found_at_each, answered=answered)
            # hnsw searches with ef >= k (its answer is k long): the ladder starts there, and the
            # value reported is the ef searched with
            return tuning.tune(found, truth, target, "ef", max(kk + own, min(4096, n)), k, lowest=kk + own)

        # float32 lists: the exact answers and the ladder's lower values come from one scan of
        # every list (bf16 tiles, each exact answer proven against the scan's error bound; the
        # few not proven searched exactly), instead of an exact pass and then a ladder scan.
        nlist = int(self.params["nlist"]) if self.kind == "ivf" else 0
        # (up to ONE_SCAN_MAX_NLIST lists: each query's lists all ranked at once)
        one_scan = self.kind == "ivf" and self.storage == "float32" and nlist <= tuning.ONE_SCAN_MAX_NLIST
        answered: dict[int, np.ndarray] = {}  # the one scan's ladder: nprobe -> ids [sample so far, kk]

        def truth_and_ladder(sel: np.ndarray) -> np.ndarray:
            """The exact answers of ``sel``; ``answered`` gets the ladder's, after those of the
            stages before (the sample's queries in stage order)."""
            values = [v for v in tuning.LADDER if v <= tuning.ONE_SCAN_LADDER_TOP and v < nlist] + [nlist]
            ivf = self._native_as("ivf", "search_ladder_and_exact")
            got, _, proven = ivf.search_ladder_and_exact(q[sel], kk + own, values, _call_threads(threads))
            if own:
                got = [tuning.drop_own(g, own_ids[sel], kk) for g in got]
            # not nlist's answer (got[-2]): the scan skipped lists that cannot hold a neighbour
            for value, found in zip(values[:-1], got[:-2]):
                answered[value] = np.concatenate([answered[value], found]) if value in answered else found
            truth = np.array(got[-1])
            doubtful = np.flatnonzero(proven == 0)
            if len(doubtful):
                truth[doubtful] = truth_of(sel[doubtful])
            return truth

        def stage(sel: np.ndarray) -> np.ndarray:
            return truth_and_ladder(sel) if one_scan else truth_of(sel)

        # A quarter of the sample first: when the least value already reaches the target beyond
        # doubt, nothing cheaper exists and the other three quarters' exact pass is not needed.
        order = rng.permutation(len(q))
        first = np.sort(order[:len(q) // tuning.STAGES])
        if len(first) >= tuning.MIN_STAGE:
            truth = stage(first)
            chosen = tuned(first, truth)
            if tuning.settled(chosen, kk + own if self.kind == "hnsw" else 1):
                return chosen
            rest = np.sort(order[len(q) // tuning.STAGES:])
            return tuned(np.concatenate([first, rest]), np.concatenate([truth, stage(rest)]))
        everything = np.arange(len(q))
        return tuned(everything, stage(everything))

    def search(
        self, queries, k: int = 10, ef: Optional[int] = None, nprobe: Optional[int] = None, lists=None,
        widen: bool = True, threads: Optional[int] = None, recall: Optional[float] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of each query.

        Returns ``(ids, distances)``: int64 [nq, k] and float32 [nq, k], nearest
        first; equal distances are ordered by id, and where the k-th distance is
        shared the smaller ids are kept (flat, and ivf trained alike, answer the
        same whatever order the vectors were added in). When the index holds fewer than k
        vectors, rows are padded with id -1 and distance +inf. ``threads``: the
        threads for this call (0 = all cores; default: the index's ``threads``);
        concurrent callers pass it instead of setting the shared attribute.
        ``ef`` (hnsw) widens the search: higher is more
        accurate and slower; it is raised to k when smaller. ``nprobe`` (ivf)
        is the number of lists scanned per query; a query whose lists hold fewer
        than k vectors probes more lists until it has min(k, n) (``widen=False``
        scans exactly the given lists and pads instead). ``lists`` (ivf): the
        lists to scan per query, int64 [nq, nprobe] as returned by
        :meth:`nearest_lists`, instead of computing them again.
        ``recall`` (ivf, hnsw; instead of ``nprobe`` / ``ef``): the least nprobe or ef whose
        recall@k reaches it, chosen on the first such call by :meth:`tune` on a sample of its
        queries (without changing the index's own settings) and kept for later calls with the
        same k and target until the next ``add``; :attr:`tunings` shows what was chosen.
        """
        k = _check_count(k, "k", 1)
        q = _as_matrix(queries, self.dim, "queries")
        if recall is not None:
            tuning.check_target(recall)
        # No queries: nothing to tune on (a tuning kept from them would serve later calls).
        if recall is not None and len(q) and lists is None and ef is None and nprobe is None and self.kind != "flat":
            chosen = self._tuned(recall, k, q, threads)
            ef, nprobe = (chosen.value, None) if chosen.param == "ef" else (None, chosen.value or None)
        threads = _call_threads(threads)
        ef = 0 if ef is None else _check_count(ef, "ef", 1)
        nprobe = 0 if nprobe is None else _check_count(nprobe, "nprobe", 1)
        list_arr = None
        if lists is not None:
            list_arr = _as_lists(lists, q.shape[0], nprobe or None)
            nprobe = list_arr.shape[1]
        out_ids, out_dist = _result_arrays(q.shape[0], k, len(self))
        if q.shape[0] and list_arr is None:
            self._index.search(q, k, ef, nprobe, out_ids, out_dist, bool(widen), threads)
        elif q.shape[0]:
            ivf = self._native_as("ivf", "search(lists=...)")
            ivf.search(q, k, ef, nprobe, out_ids, out_dist, bool(widen), threads, lists=list_arr)
        return out_ids, out_dist

    def save(self, path, sync: bool = True, side_files: Optional[Mapping[str, object]] = None) -> None:
        """Writes the index to ``path`` atomically (a temporary file, then rename).

        ``sync`` flushes the file and its directory to disk before returning, so a
        crash right after cannot lose it; ``False`` skips that for scratch files.
        ``side_files`` maps a role (e.g. ``"ids"``) to a file that belongs beside
        this index (its path, or a :class:`sparknn.integrity.FileDigest`): its size
        and CRC-32C are stored in the index file, so its readers can tell a
        missing, damaged or foreign side file (see :attr:`side_files`). Write the
        side files first, the index last. Runs beside searches; an ``add`` in another
        thread waits for it, so the file holds one consistent state.
        """
        records = []
        for role, file in (side_files or {}).items():
            d = file if isinstance(file, integrity.FileDigest) else integrity.digest(os.fspath(file))
            records.append((str(role), d.size, d.crc32c))
        self._index.save(_path(path), bool(sync), records)

    @property
    def side_files(self) -> dict:
        """Role -> :class:`sparknn.integrity.FileDigest` of the side files recorded in
        the file this index was loaded from (empty for a new index or a file without
        any). Check one with ``sparknn.integrity.verify(path, digest, what)``."""
        return {role: integrity.FileDigest(size, crc) for role, size, crc in self._index.side_files()}


def _path(path) -> str:
    """A path as the engine takes it: str, bytes or os.PathLike; a NUL byte would end the path
    early in the engine (a save landing at another file), so it is refused, as open() does."""
    path = os.fsdecode(path)
    if "\0" in path:
        raise InvalidArgumentError(f"path {path!r} contains a NUL byte")
    return path


def flat_search(metric: str, threads: int = 0):
    """``search(block, queries, k) -> (positions, distances)``: exact search of ``queries`` in a
    block of vectors, the engine's fused product and selection (tuning.exact_neighbours)."""
    def search(block: np.ndarray, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        flat = Index(block.shape[1], metric, "flat", threads=threads)
        flat.add(block)
        return flat.search(queries, k)

    return search


def load(path, mmap: bool = True, threads: int = 0, verify: bool = True) -> Index:
    """Loads an index file written by :meth:`Index.save`.

    With ``mmap=True`` the file is mapped read-only and shared: every process on
    a node that loads it uses one copy in the page cache. ``verify`` checks every
    section's checksum (reads the file once); structure is always validated.
    A truncated, corrupted, foreign or newer-version file raises IndexFileError.
    """
    path = _path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no index file at {path!r}")
    index = Index(0, _native=_core.load_index(path, bool(mmap), bool(verify)))
    index.threads = threads
    return index
