"""Arrow <-> numpy conversions shared by the in-process job, the CLI and Spark.

Vectors arrive as Arrow list<float|double> (also large_list, fixed_size_list)
or as Spark ML dense vectors (struct<type, size, indices, values>). They become
a float32 [n, dim] numpy matrix without a copy when the values are float32 and
the rows are contiguous. Results leave as list<struct<id, distance>>.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import pyarrow as pa

from sparknn.errors import InvalidArgumentError


# Arrow <-> numpy for the primitive arrays of the CLI's hot path, through their buffers: the
# first Array.to_numpy or pa.array(ndarray) of a process imports pandas where it is installed
# (0.35-0.5 s of `sparknn similar` on Fashion-MNIST), which a job that never needs pandas
# should not pay.
def _numpy_dtype(arrow_type: pa.DataType) -> np.dtype:
    if pa.types.is_integer(arrow_type):
        kind = "i" if pa.types.is_signed_integer(arrow_type) else "u"
        return np.dtype(f"{kind}{arrow_type.bit_width // 8}")
    if pa.types.is_floating(arrow_type):
        return np.dtype(f"f{arrow_type.bit_width // 8}")
    raise InvalidArgumentError(f"not an integer or floating type: {arrow_type}")


def primitive_values(column: pa.Array) -> np.ndarray:
    """A null-free integer or floating array's values as numpy, in place (its data buffer)."""
    if column.null_count:
        raise InvalidArgumentError("primitive_values: the array has nulls")
    values = np.frombuffer(column.buffers()[1], dtype=_numpy_dtype(column.type))
    return values[column.offset:column.offset + len(column)]


def integer_values(column: pa.Array) -> np.ndarray:
    """A null-free integer array's values as numpy, in place."""
    if not pa.types.is_integer(column.type):
        raise InvalidArgumentError(f"integer_values: {column.type} is not an integer type")
    return primitive_values(column)


def primitive_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A 1-D numpy array as an Arrow array of ``arrow_type`` (converted when its dtype differs),
    sharing the array's memory when it is contiguous."""
    values = np.ascontiguousarray(values, dtype=_numpy_dtype(arrow_type))
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


DISTANCE_TYPE = pa.float32()
# How local Parquet files are read (ParquetFile, read_table, scan options): without pre_buffer
# (pyarrow's default for ParquetFile and read_table fetches every column chunk of the file up
# front and keeps it to the end of the read: a second copy of the data), in requests of
# READ_BUFFER bytes (unbuffered, each column chunk is read whole first: 153 MB per 50k-row group
# of 768-dim vectors). Reading a 500k x 768 file (1.5 GB) and keeping the vectors: peak RSS
# 3.32 GB -> 1.79 GB. 1 MiB requests read it in a median 1.7 s against 1.9 s at 256 KiB and
# 4.0 s at 4 MiB (whose buffers the allocator does not reuse).
READ_BUFFER = 1 << 20
PARQUET_READ = {"pre_buffer": False, "buffer_size": READ_BUFFER}


def decoding_pool() -> pa.MemoryPool:
    """The Arrow memory pool for decoding Parquet batch after batch: the C library's allocator.
    Arrow's default (mimalloc since pyarrow 13) hands a freed batch's memory back to the system
    10 ms later, so every next batch page-faults it in again: the read of Fashion-MNIST's 70k x
    784 column took 1.31-1.41 s so, 0.62-0.68 s from the C library's allocator or 0.58-0.63 s from
    jemalloc, which keep it for the next batch (three interleaved runs of `sparknn similar`, AMD
    EPYC, 2026-12-06; a third of that run's cycles were the kernel clearing pages). jemalloc is
    missing from some pyarrow builds. The C library keeps freed blocks up to its mmap threshold
    (at most 32 MiB: a batch holds about READ_BATCH_BYTES of vectors, twice over as the list
    decoder reserves); larger ones are mapped afresh either way. Only reads switch to it
    (``decoding_memory``): the whole CLI job on it measured no faster."""
    return pa.system_memory_pool()


_pool_lock = threading.Lock()
_pool_users = 0
_pool_before: Optional[pa.MemoryPool] = None


class _DecodingMemory:
    """``decoding_memory``'s switch. A class, not a generator: nothing runs between the count
    going up and the body's guarded part, so an interrupt (Ctrl-C in a notebook) cannot leave the
    switch on for the rest of the session."""

    def __enter__(self) -> None:
        global _pool_users, _pool_before
        with _pool_lock:
            if _pool_users == 0:
                _pool_before = pa.default_memory_pool()
                pa.set_memory_pool(decoding_pool())
            _pool_users += 1

    def __exit__(self, *exc) -> None:
        global _pool_users, _pool_before
        with _pool_lock:
            _pool_users -= 1
            if _pool_users == 0:
                # Put the caller's default back only if it is still ours: a default someone set
                # meanwhile is theirs to keep (and to free: ours may be stale by then).
                if pa.default_memory_pool().backend_name == decoding_pool().backend_name:
                    pa.set_memory_pool(_pool_before)
                _pool_before = None


def decoding_memory() -> _DecodingMemory:
    """While inside, Arrow's default pool, from which pyarrow allocates the arrays a Parquet
    reader opened then decodes, is ``decoding_pool()`` (readers take no pool argument: the
    process default is switched). Parquet's own read and page buffers stay in Arrow's C++
    default, and other threads of the process allocating meanwhile take the switched pool too:
    harmless, as a buffer is freed to the pool it came from. Nested and concurrent users share
    one switch: the first in sets it, the last out puts the caller's default back."""
    return _DecodingMemory()


def _combine(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _first_null(arr: pa.Array) -> int:
    import pyarrow.compute as pc  # (here, not at import: pyarrow.compute costs 0.05-0.07 s of a job's start)

    return int(pc.index(pc.is_null(arr), True).as_py())


def _dense_values(arr: pa.Array, name: str) -> pa.Array:
    """The list array of a Spark ML VectorUDT struct column, rejecting sparse rows."""
    names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
    if not {"type", "values"} <= names:
        raise InvalidArgumentError(f"column {name!r} is a struct, not a vector: expected array<float>, "
                                   "array<double> or a pyspark.ml.linalg dense vector")
    import pyarrow.compute as pc

    kinds = arr.field("type")
    if len(kinds) and pc.any(pc.not_equal(kinds, 1)).as_py():
        row = int(pc.index(pc.not_equal(kinds, 1), True).as_py())
        raise InvalidArgumentError(f"column {name!r} row {row} is a sparse vector: convert to dense "
                                   "(e.g. pyspark.ml.functions.vector_to_array) before indexing")
    return arr.field("values")


def vectors_to_numpy(column, name: str = "vector", dim: Optional[int] = None) -> np.ndarray:
    """A float32 [n, dim] matrix from an Arrow vector column.

    Raises InvalidArgumentError naming the row for null vectors, null elements,
    and rows whose length differs from the others (or from ``dim``).
    """
    arr = _combine(column)
    n = len(arr)
    if arr.null_count:
        raise InvalidArgumentError(f"column {name!r} has a null vector at row {_first_null(arr)}")
    if pa.types.is_struct(arr.type):
        arr = _dense_values(arr, name)
    # (the child values sliced, not arr.flatten(), which imports pyarrow.compute: 0.05-0.07 s of a
    # job's start; no list is null here, so they are the same values)
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        values = arr.values.slice(arr.offset * width, n * width)
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = primitive_values(arr.offsets)
        lengths = np.diff(offsets)
        width = int(lengths[0]) if n else (dim or 0)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            row = int(bad[0])
            raise InvalidArgumentError(f"column {name!r} row {row} has {int(lengths[row])} values but row 0 has "
                                       f"{width}: all vectors must have the same length")
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if n else arr.values.slice(0, 0)
    else:
        raise InvalidArgumentError(f"column {name!r} has type {arr.type}: expected array<float>, "
                                   "array<double> or a dense vector")
    if dim is not None and n and width != dim:
        raise InvalidArgumentError(f"column {name!r} has vectors of length {width} but the index has dim={dim}")
    if n and width == 0:
        raise InvalidArgumentError(f"column {name!r} has empty vectors")
    if values.null_count:
        pos = _first_null(values)
        raise InvalidArgumentError(f"column {name!r} row {pos // max(width, 1)} has a null element")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise InvalidArgumentError(f"column {name!r} has {values.type} elements: expected float or double")
    flat = primitive_values(values)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    return flat.reshape(n, width if n else (dim or 0))


class ChunkedVectors:
    """A (chunked) vector column read by rows in any order, chunk by chunk: each chunk becomes a
    float32 matrix (vectors_to_numpy: a view of its values when they are float32, kept; else
    converted again for each ``take`` that needs it). ChunkedArray.take joins every chunk into one
    array first: a copy of the whole column for any take (500k x 768: +1.4 GB, 3.3 s)."""

    def __init__(self, column, name: str = "vector", dim: Optional[int] = None):
        self._chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])
        self._name, self.dim = name, dim
        self._kept: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _matrix(self, c: int) -> np.ndarray:
        if c in self._kept:
            return self._kept[c]
        chunk = self._chunks[c]
        x = vectors_to_numpy(chunk, self._name, self.dim)
        self.dim = x.shape[1]
        if pa.types.is_float32(getattr(chunk.type, "value_type", chunk.type)):
            self._kept[c] = x  # a view of the chunk's own values: keeping it costs nothing
        return x

    def take(self, rows) -> np.ndarray:
        """float32 [len(rows), dim]: the vectors at positions ``rows`` (ints, any order)."""
        rows = np.asarray(rows, dtype=np.int64)  # sort_indices gives uint64: uint64 - int64 is float64
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = None
        for c in np.unique(chunk_of):
            picked = chunk_of == c
            x = self._matrix(int(c))
            if out is None:
                out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
            out[picked] = x[rows[picked] - self._starts[c]]
        return out if out is not None else np.empty((0, self.dim or 0), dtype=np.float32)


def fixed_rows(column) -> np.ndarray:
    """A fixed_size_list<T, width> column (an index file's vectors or nearest lists) as a numpy
    [n, width] matrix, zero-copy when it is one chunk without nulls."""
    arr = _combine(column)
    return arr.flatten().to_numpy().reshape(len(arr), arr.type.list_size)


def rows_to_list(x: np.ndarray) -> pa.ListArray:
    """A 2-D matrix [n, width] as an Arrow list<T> column, one list per row (no copy of the values;
    Spark's array<T> needs list, not fixed_size_list)."""
    n, width = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int64).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(x).reshape(-1)))


def neighbors_array(ids: np.ndarray, distances: np.ndarray, id_values: Optional[pa.Array] = None,
                    exclude: Optional[np.ndarray] = None, k: Optional[int] = None) -> pa.Array:
    """list<struct<id, distance>> from search results, nearest first.

    ``ids``/``distances`` are [nq, kk] engine results (padding id -1 is dropped).
    With ``id_values``, engine ids are positions into it (the user's own ids,
    any Arrow type); otherwise they are the ids. ``exclude`` [nq] drops each
    row's own engine id (self-join); rows keep at most ``k`` neighbours.
    """
    nq, kk = ids.shape
    k = kk if k is None else k
    keep = ids >= 0
    if exclude is not None:
        keep &= ids != exclude[:, None]
    # Keep at most k per row, in order: cumulative count of kept entries.
    keep &= np.cumsum(keep, axis=1) <= k
    counts = keep.sum(axis=1)
    offsets = np.zeros(nq + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat_ids = ids[keep]
    flat_dist = distances[keep].astype(np.float32, copy=False)
    if id_values is not None:
        id_arr = id_values.take(primitive_array(flat_ids, pa.int64()))
    else:
        id_arr = primitive_array(flat_ids, pa.int64())
    struct = pa.StructArray.from_arrays([id_arr, primitive_array(flat_dist, DISTANCE_TYPE)], names=["id", "distance"])
    return pa.ListArray.from_arrays(primitive_array(offsets, pa.int32()), struct)


def neighbors_type(id_type: pa.DataType) -> pa.DataType:
    return pa.list_(pa.struct([("id", id_type), ("distance", DISTANCE_TYPE)]))
