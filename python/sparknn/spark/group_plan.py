"""Where a grouped model's items go: hashed shards of whole small groups, and large groups on
shards of their own (split into pieces when larger than a shard).

- **Hashed shards** (numbers ``0 .. hashed - 1``): a group's items go to shard
  ``pmod(xxhash64(group), hashed)``, so a shard holds whole groups, searched in batches by
  ``sparknn.grouped.within_groups`` (tiny groups thousands at a time, small ones exactly).
- **Large groups** (more than ``large_rows`` items, the few largest of a skewed column) get
  shards of their own after the hashed ones, each built at fit as an index of the model's kind
  on that group alone: no search of them rebuilds an index. A group larger than ``piece_rows``
  (a shard's share of the data, at most ``PIECE_BYTES`` of vectors) is split into pieces by a
  hash of the item id, so no task holds more than a piece; its searches go to every piece and
  are merged into one top-k (group_pieces).

The plan is small (at most ``MAX_LARGE`` large groups plus the pieces of the largest) and kept
in the model (``Layout.group_pieces``: value, first shard, pieces).
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparknn.grouped import SMALL

PIECE_BYTES = 256 << 20  # vectors per shard (hashed or piece) at most, when the data allows
MAX_LARGE = 256  # large groups at most: each is a file and a build task of its own


def num_shards(rows: int, dim: int, minimum: int) -> int:
    """Hashed shards for ``rows`` vectors: at least ``minimum``, more when a shard would hold
    more than PIECE_BYTES of vectors."""
    return max(minimum, math.ceil(rows * 4 * dim / PIECE_BYTES))


def large_rows(rows: int) -> int:
    """Groups with more items than this get shards of their own."""
    return max(SMALL, math.ceil(rows / MAX_LARGE))


def piece_rows(rows: int, dim: int, hashed: int) -> int:
    """Items per piece of a large group at most: a hashed shard's share, bounded by PIECE_BYTES."""
    return max(SMALL, min(math.ceil(rows / hashed), PIECE_BYTES // (4 * dim)))


def plan(df: DataFrame, group_col: str, rows: int, dim: int, hashed: int) -> tuple[tuple[object, int, int], ...]:
    """(group value, first shard, pieces) of every large group, by value; one Spark job counts
    the groups (null groups are left to the build, which names them)."""
    size = piece_rows(rows, dim, hashed)
    large = (df.where(F.col(group_col).isNotNull()).groupBy(F.col(group_col).alias("g")).count()
             .where(F.col("count") > large_rows(rows)).collect())
    pieces, first = [], hashed
    for row in sorted(large, key=lambda r: r["g"]):
        count = math.ceil(row["count"] / size)
        pieces.append((row["g"], first, count))
        first += count
    return tuple(pieces)


def shard_column(group: Column, item_id: Column | None, hashed: int, pieces, group_type: str) -> Column:
    """The shard of a row of group ``group`` (cast to the items' group type): a large group's own
    shard, a piece of it chosen by ``item_id`` (items; None: its first piece), else the hash."""
    shard = F.pmod(F.xxhash64(group), F.lit(hashed))
    if pieces:
        keys = [F.lit(value).cast(group_type) for value, _, _ in pieces]
        first = F.element_at(F.create_map(*[c for key, (_, s, _) in zip(keys, pieces) for c in (key, F.lit(s))]),
                             group)
        within = F.lit(0)
        if item_id is not None:
            count = F.element_at(F.create_map(*[c for key, (_, _, m) in zip(keys, pieces) for c in (key, F.lit(m))]),
                                 group)
            within = F.pmod(F.xxhash64(item_id), count)
        shard = F.when(group.isin(*keys), first + within).otherwise(shard)
    return shard.cast("int")


def split_values(pieces) -> list:
    """Values of the groups split into more than one piece (their searches are merged)."""
    return [value for value, _, count in pieces if count > 1]
