"""Merging candidates: a query searched in several parts (routed IVF lists, the pieces of a large
group) has one row of candidates per part; rows shuffled by query key and sorted become one row
per query, its payload and the k nearest of all its candidates, with numpy (no Python rows, no
``groupBy`` of Python objects). Ties are broken by id, so the result does not depend on the order
the parts' rows arrived in.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from sparknn.arrow import vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.spark.schema import neighbors_spark_type
from sparknn.spark.tasks import partition_id

PAYLOAD = "__sparknn_row"  # the payload struct column: on one candidate row per query, null on the others


def keyed_queries(batches, features: str, dim: int, chunk: int | None = None):
    """(rows, float32 vectors, keys) for each query batch of a task (cut into ``chunk`` rows): the
    keys are unique per row across the job (partition << 33 | row), so candidate rows of one
    query from several parts merge into one row."""
    next_key = partition_id() << 33
    for batch in batches:
        for start in range(0, batch.num_rows, chunk or max(1, batch.num_rows)):
            rows = batch.slice(start, chunk) if chunk else batch
            try:
                x = vectors_to_numpy(rows.column(features), features, dim)
            except InvalidArgumentError as err:
                raise InvalidArgumentError(f"{err} (in partition {partition_id()}; rows are counted from the "
                                           "start of an Arrow batch)") from None
            yield rows, x, np.arange(next_key, next_key + len(x), dtype=np.int64)
            next_key += len(x)


def candidates_schema(payload: T.StructType, id_type: str) -> T.StructType:
    """Rows of a search stage: the query's key, its candidates from one part, and its payload (on
    one row per query, null on the others)."""
    return T.StructType([
        T.StructField("qkey", T.LongType()),
        T.StructField("neighbors", neighbors_spark_type(id_type)),
        T.StructField(PAYLOAD, payload),
    ])


def merged(searched: DataFrame, payload: T.StructType, id_type: str, k: int, output: str) -> DataFrame:
    """Candidate rows (candidates_schema) -> one row per query key: its payload's columns and the k
    nearest of all its candidates (ties by id)."""
    result = T.StructType(payload.fields + [T.StructField(output, neighbors_spark_type(id_type))])
    return (searched.repartition("qkey").sortWithinPartitions("qkey")
            .mapInArrow(partial(merge_batches, k=k, output=output), result))


def _merge(table: pa.Table, k: int, output: str) -> pa.RecordBatch:
    """Rows sorted by qkey -> one row per qkey: its payload and the k nearest of all its candidates."""
    keys = table.column("qkey").to_numpy()
    group = np.concatenate([[0], np.cumsum(keys[1:] != keys[:-1])])
    num_groups = int(group[-1]) + 1
    lists = table.column("neighbors").combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    values = lists.flatten()
    dist = values.field("distance").to_numpy(zero_copy_only=False)
    cand_group = np.repeat(group, lengths)
    # By query, distance, then id: ties do not depend on the order the parts' rows arrived in.
    keys = [(name, "ascending") for name in ("g", "d", "id")]
    order = pc.sort_indices(pa.table({"g": cand_group, "d": dist, "id": values.field("id")}),
                            sort_keys=keys).to_numpy().astype(np.int64)
    sorted_group = cand_group[order]
    first = np.searchsorted(sorted_group, np.arange(num_groups))
    rank = np.arange(len(order)) - first[sorted_group]
    keep = order[rank < k]
    counts = np.bincount(cand_group[keep], minlength=num_groups)
    offsets = np.zeros(num_groups + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    neighbors = pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(keep)))
    payload = table.column(PAYLOAD).combine_chunks()
    home = np.flatnonzero(payload.is_valid().to_numpy(zero_copy_only=False))
    if len(home) != num_groups:
        raise RuntimeError(f"routed IVF merge: {num_groups} queries but {len(home)} payload rows")
    rows = payload.take(pa.array(home))
    fields = [rows.type.field(i).name for i in range(rows.type.num_fields)]
    return pa.RecordBatch.from_arrays(rows.flatten() + [neighbors], names=fields + [output])


def merge_batches(batches, *, k: int, output: str):
    """Batches sorted by qkey; a query's rows may straddle two batches, so the last key waits for the next."""
    pending = None
    for batch in batches:
        table = pa.Table.from_batches([batch]) if pending is None else pa.concat_tables(
            [pending, pa.Table.from_batches([batch])])
        if table.num_rows == 0:
            continue
        keys = table.column("qkey").to_numpy()
        cut = int(np.searchsorted(keys, keys[-1], side="left"))
        pending = table.slice(cut)
        if cut:
            yield _merge(table.slice(0, cut), k, output)
    if pending is not None and pending.num_rows:
        yield _merge(pending, k, output)
