"""Building an index from vectors that arrive in batches, and which ids the engine stores.

One of each, shared by the command line's jobs (batches read from Parquet) and
every Spark build (batches of a collected column on the driver, or of one
shard in an executor task), so that an index built in-process and one built
on Spark from the same rows are the same index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import pyarrow as pa

from sparknn.arrow import integer_values
from sparknn.errors import InvalidArgumentError
from sparknn.index import Index, IndexSpec, RowBlock

INT64_MAX = np.iinfo(np.int64).max


def stores_own_ids(id_type: pa.DataType, lowest=None, highest=None) -> bool:
    """The id policy: does the engine store the user's ids themselves?

    Yes for integers that are all non-negative and fit int64 (``lowest`` /
    ``highest`` None: no rows, or not known to exceed); anything else (strings,
    a negative id, uint64 beyond int64) makes the engine store row positions,
    and the user's ids are kept beside the index to map them back.
    """
    if not pa.types.is_integer(id_type):
        return False
    return (lowest is None or lowest >= 0) and (highest is None or highest <= INT64_MAX)


def engine_ids(ids: pa.Array) -> np.ndarray | None:
    """``ids`` as the engine's int64 ids when :func:`stores_own_ids` allows, else None (row positions)."""
    lowest = highest = values = None
    if len(ids) and pa.types.is_integer(ids.type):
        if ids.null_count:
            import pyarrow.compute as pc  # (here, not at import: pyarrow.compute costs 0.05-0.07 s of a job's start)

            lowest, highest = (v.as_py() for v in pc.min_max(ids).values())
        else:
            values = integer_values(ids)
            lowest, highest = int(values.min()), int(values.max())
    if not stores_own_ids(ids.type, lowest, highest):
        return None
    if values is None:
        values = integer_values(ids) if not ids.null_count else ids.to_numpy(zero_copy_only=False)
    return values.astype(np.int64, copy=False)


def build_streaming(batches: Iterable[tuple[int, np.ndarray]], n: int, spec: IndexSpec, *,
                    ids: np.ndarray | None = None, train_sample: Callable[[int], np.ndarray] | None = None,
                    keep_lists: int = 0,
                    rows_context: Callable[[int, int], AbstractContextManager] | None = None,
                    dim: int | None = None,
                    assign_first: Callable[[], Iterable[tuple[int, np.ndarray]]] | None = None,
                    adopt: Callable[[], tuple[RowBlock, np.ndarray | None]] | None = None,
                    ) -> tuple[Index | None, np.ndarray | None]:
    """A new index over ``n`` vectors given as (first row, float32 [m, dim]) batches, in row order.

    ``ids`` (int64 [n]) are the engine ids, None for row positions 0..n-1. An ivf
    index gets its lists from ``spec.for_items(n)`` (chosen for all n, not the
    first batch), is trained on ``train_sample(nlist)`` and then assigns each
    batch to its nearest lists in one pass: the first is where the vector is
    stored; with ``keep_lists`` > 0 the nearest ``min(nprobe, nlist,
    keep_lists)`` of every vector are also returned, int32 [n, width], so a
    self-join searches those without computing them again. ``rows_context(first,
    m)`` wraps the work on each batch (e.g. to name input rows in errors).
    ``dim`` known beforehand: the index is created and trained before the first
    batch is asked for (batches that let go of their source as they pass it can
    still be sampled for training); else on the first batch. ``assign_first``
    (with ``dim``): the same batches again, passed over first to assign every
    vector to its lists, so each list is reserved at its final size before the
    adds (Index.reserve_lists): lists grown batch by batch held up to twice their
    vectors until the end of the build, its peak. ``adopt``: hands over
    every row as one RowBlock, and the block's row of each batch row in turn (None: the same
    order); a float32 index then keeps those rows in place (Index.adopt_rows) instead of
    copying the batches, which are not read: the vectors take their memory once. flat and
    hnsw take them in one call; ivf (with ``assign_first``, which finds their lists) as its
    lists. Other storages ignore it.

    Returns (index, lists): None for an index when there were no batches; lists
    is None unless kept.
    """
    context = rows_context or (lambda first, m: nullcontext())
    index = lists = None

    def start(dim: int) -> tuple[Index, np.ndarray | None]:
        index, lists = spec.for_items(n).create(dim), None
        if index.kind == "ivf":
            nlist = index.params["nlist"]
            with context(0, n):
                index.train(train_sample(nlist))
            if keep_lists:
                lists = np.empty((n, min(index.nprobe, nlist, keep_lists)), dtype=np.int32)
        return index, lists

    if adopt is not None and spec.kind != "ivf" and spec.storage == "float32":
        block, order = adopt()  # flat, hnsw: the block's rows are the index's vectors, in one call
        if block.rows != n:
            raise InvalidArgumentError(f"the input has {block.rows} rows, not the {n} counted before the build: "
                                       "did it change while it was read?")
        index, _ = start(block.dim)
        with context(0, n):
            index.adopt_rows(block, ids, order=order)
        return (index, None) if n else (None, None)
    assigned = None  # each row's nearest lists, found before the adds (assign_first)
    if dim is not None:
        index, lists = start(dim)
        if index.kind == "ivf" and assign_first is not None:
            assigned = lists if lists is not None else np.empty((n, 1), dtype=np.int32)
            if adopt is not None and index.storage == "float32":
                # the lists found as the rows are adopted, each row projected once for its lists
                # and the first pass (Index.adopt_rows(nearest=)): the batches are not read
                block, order = adopt()
                if block.rows != n:
                    raise InvalidArgumentError(f"the input has {block.rows} rows, not the {n} counted before the "
                                               "build: did it change while it was read?")
                with context(0, n):
                    assigned[:] = index.adopt_rows(block, ids, order=order, nearest=assigned.shape[1])
                return index, lists
            seen = 0
            for first, x in assign_first():
                if first != seen or first + len(x) > n:
                    raise InvalidArgumentError(f"the input does not have the {n} rows counted before the build "
                                               "in order: did it change while it was read?")
                with context(first, len(x)):
                    assigned[first:first + len(x)] = index.nearest_lists(x, assigned.shape[1])
                seen += len(x)
            if seen != n:
                raise InvalidArgumentError(f"the input has {seen} rows, not the {n} counted before the build: "
                                           "did it change while it was read?")
            index.reserve_lists(np.bincount(assigned[:, 0], minlength=index.params["nlist"]))
    added = 0
    for first, x in batches:
        if first + len(x) > n:
            raise InvalidArgumentError(f"the input has more than the {n} rows counted before the build: "
                                       "did it change while it was read?")
        if index is None:
            index, lists = start(x.shape[1])
        added += len(x)
        rows = None if ids is None else ids[first:first + len(x)]
        with context(first, len(x)):
            if index.kind != "ivf":
                index.add(x, rows)
                continue
            if assigned is not None:
                index.add(x, rows, lists=assigned[first:first + len(x), :1])
                continue
            nearest = index.nearest_lists(x, lists.shape[1] if lists is not None else 1)
            index.add(x, rows, lists=nearest[:, :1])
        if lists is not None:
            lists[first:first + len(x)] = nearest
    if not added:
        return None, None
    index.shrink_to_fit()  # lists grown batch by batch keep up to as much again reserved
    return index, lists
