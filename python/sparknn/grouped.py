"""Neighbours within groups: each item's k nearest items of its own group (a category, a city, a
market), in one call however many groups there are and however their sizes vary.

Items are ordered by group and a group is only ever compared with itself:

- **Tiny groups** (at most ``BATCHED`` items; millions of them are common) are searched exactly
  and many at a time, with no Python per group: groups of similar size are padded to one size m
  (a power of two) and stacked, one batched matrix product ``[G, m, d] x [G, d, m]`` gives every
  pair's distance, padding and the item itself are masked, and the k nearest are kept.
- **Small groups** (up to ``SMALL`` items) are searched exactly by the engine's flat index (its
  fused product and selection), one group per call: few enough that the call costs nothing.
- **Larger groups** get a real index of ``spec``'s kind built on their own rows and searched
  with them, so their cost is not quadratic in the group's size. With a recall target each such
  index is tuned on its own items (``Index.tune``: the least nprobe / ef whose recall@k on a
  sample of the group, each item excluding itself, reaches it), and the choices are reported.

Distances are the engine's: squared L2, 1 - cosine, or -inner product. Ties are ordered by row
position, so the result does not depend on how the rows were grouped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from sparknn.errors import InvalidArgumentError
from sparknn.index import IndexSpec, normalise_metric
from sparknn.tuning import Tuning, check_target

BATCHED = 64  # groups up to this many items are searched exactly, many per product
SMALL = 4096  # groups up to this many items are searched exactly (flat), larger ones with spec's index
_BATCH_BYTES = 64 << 20  # bounds one batched product's inputs and distance matrices


def group_codes(values, name: str = "group") -> np.ndarray:
    """int64 code per row (equal values, equal codes) of an Arrow array of integers or strings;
    a null group is an InvalidArgumentError naming the column and the first such row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_integer(values.type) or pa.types.is_string(values.type)
            or pa.types.is_large_string(values.type)):
        raise InvalidArgumentError(f"group column {name!r} is {values.type}: groups are integers or strings")
    if values.null_count:
        import pyarrow.compute as pc

        row = int(pc.index(pc.is_null(values), True).as_py())
        raise InvalidArgumentError(f"group column {name!r} has a null group at row {row}: give every row a group "
                                   "(e.g. fill nulls with a value of their own)")
    encoded = values.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class GroupTunings:
    """What a recall target chose in each group searched with an index: (group size, Tuning)
    per group, in the order searched; the smaller groups are exact. ``what`` names what each
    choice was made for and ``rest`` how the other groups are searched, where a caller's differ."""

    target: float
    small: int
    chosen: tuple = ()
    what: str = "group(s)"
    rest: str = "smaller groups exact"

    @property
    def reached(self) -> bool:
        return all(t.reached for _, t in self.chosen)

    @property
    def recall(self) -> float:
        """The groups' measured recall weighted by their sizes (1.0 when every group is exact)."""
        items = sum(size for size, _ in self.chosen)
        return sum(size * t.recall for size, t in self.chosen) / items if items else 1.0

    def describe(self) -> str:
        if not self.chosen:
            return f"no {self.what} of more than {self.small} items to tune (target {self.target}); {self.rest}"
        tunings = [t for _, t in self.chosen]
        values = sorted(t.value for t in tunings)
        recalls = sorted(t.recall for t in tunings)

        def span(lo, hi, f: str) -> str:
            return f"{lo:{f}}" if lo == hi else f"{lo:{f}}-{hi:{f}}"

        missed = sum(not t.reached for t in tunings)
        note = f"; {missed} did not reach it at the most work tried" if missed else ""
        return (f"{len(tunings)} {self.what} of more than {self.small} items tuned each on its own items: "
                f"{tunings[0].param} {span(values[0], values[-1], 'd')}, recall@{tunings[0].k} "
                f"{span(recalls[0], recalls[-1], '.3f')} (by size {self.recall:.3f}), target {self.target}{note}; "
                f"{self.rest}")


def within_groups(x: np.ndarray, codes: np.ndarray, k: int, spec: IndexSpec, small: int = SMALL,
                  progress=None, recall: float | None = None, tunings: list | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [n, k], distances float32 [n, k]): for every row of ``x`` the rows of its group
    nearest to it, itself excluded, nearest first; a row whose group has fewer than k + 1 items
    gets the others, padded with row -1 and distance +inf. ``spec`` gives the metric and the index
    built for groups of more than ``small`` items (its kind: flat for exact results everywhere).
    ``recall`` (ivf, hnsw): each such index's nprobe / ef is the least reaching this recall@k on
    its own items (``Index.tune``), and ``tunings`` (a list) gets (group size, Tuning) per group.
    Vectors under cosine are normalised here; the engine normalises its own copies alike."""
    if recall is not None:
        check_target(recall)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if codes.shape != (n,):
        raise InvalidArgumentError(f"{len(codes)} group codes for {n} vectors")
    if k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InvalidArgumentError("vectors must be a 2-d array of finite values (no NaN or inf)")
    metric = normalise_metric(spec.metric)
    if metric == "cosine":
        x = unit_rows(x)
    rows = np.full((n, k), -1, dtype=np.int64)
    dist = np.full((n, k), np.inf, dtype=np.float32)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    sizes = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    tiny = (sizes > 1) & (sizes <= min(BATCHED, small))
    _tiny_groups(x, order, starts[tiny], sizes[tiny], k, metric, rows, dist, progress)
    exact = IndexSpec(kind="flat", metric=metric, threads=spec.threads)
    for start, size in zip(starts[~tiny & (sizes > 1)], sizes[~tiny & (sizes > 1)]):
        tuning = _indexed_group(x, order[start:start + size], k, exact if size <= small else spec, rows, dist,
                                recall)
        if tuning is not None and tunings is not None:
            tunings.append((int(size), tuning))
        if progress is not None:
            progress(int(size))
    return rows, dist


def _tiny_groups(x, order, starts, sizes, k, metric, rows, dist, progress) -> None:
    """Every group of 2..BATCHED items, exactly: stacked by padded size, one product per batch."""
    dim = x.shape[1]
    padded = np.maximum(2, 1 << np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    for m in np.unique(padded):
        m = int(m)
        pick = np.flatnonzero(padded == m)
        per_batch = max(1, _BATCH_BYTES // (4 * m * (m + dim)))
        kk = min(k, m - 1)
        for lo in range(0, len(pick), per_batch):
            g_starts, g_sizes = starts[pick[lo:lo + per_batch]], sizes[pick[lo:lo + per_batch]]
            offsets = np.arange(m)
            valid = offsets[None, :] < g_sizes[:, None]  # [G, m]
            where = order[np.where(valid, g_starts[:, None] + offsets[None, :], g_starts[:, None])]  # rows of x
            a = x[where]  # [G, m, d]
            d = distances(a, a, metric)
            d[~np.broadcast_to(valid[:, None, :], d.shape)] = np.inf  # padding columns
            d[:, offsets, offsets] = np.inf  # the item itself
            nearest = np.argpartition(d, kk - 1, axis=2)[:, :, :kk]
            nd = np.take_along_axis(d, nearest, axis=2)
            # Nearest first; ties by row position (stable over how groups were batched).
            ties = np.take_along_axis(np.broadcast_to(where[:, None, :], d.shape), nearest, axis=2)
            sort = np.lexsort((ties, nd), axis=2)
            nearest = np.take_along_axis(nearest, sort, axis=2)
            nd = np.take_along_axis(nd, sort, axis=2)
            found = np.take_along_axis(np.broadcast_to(where[:, None, :], d.shape), nearest, axis=2)
            found = np.where(np.isfinite(nd), found, -1)
            keep = valid  # output rows: the real items of each group
            rows[where[keep], :kk] = found[keep]
            dist[where[keep], :kk] = nd[keep]
            if progress is not None:
                progress(int(g_sizes.sum()))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every non-zero row scaled to length 1 (what cosine compares)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """The engine's distances between the rows of ``q`` [..., a, d] and ``x`` [..., b, d] -> [..., a, b]
    (stacked groups batch alike); under cosine the rows are unit length already (unit_rows)."""
    dots = np.matmul(q, np.swapaxes(x, -1, -2))
    if metric == "ip":
        return -dots
    if metric == "cosine":
        return 1.0 - dots
    q_sq, x_sq = np.einsum("...d,...d->...", q, q), np.einsum("...d,...d->...", x, x)
    return np.maximum(q_sq[..., :, None] + x_sq[..., None, :] - 2.0 * dots, 0.0)


def index_of(vectors: np.ndarray, spec: IndexSpec):
    """A new index of ``spec`` (nlist chosen for the group's size) holding ``vectors``, positions as ids."""
    index = spec.for_items(len(vectors), batch=True).create(vectors.shape[1])  # searched by its own items
    index.threads = spec.threads
    index.add(vectors)
    return index


def _indexed_group(x, members, k, spec: IndexSpec, rows, dist, recall: float | None = None) -> Tuning | None:
    """One group: an index of ``spec`` on its own rows (``members``, ascending), searched with them;
    with ``recall`` (an approximate index) tuned on them first, and the Tuning returned."""
    sub = x[members]
    index = index_of(sub, spec)
    kk = min(k + 1, len(sub))
    tuned = index.tune(recall, k=kk - 1) if recall is not None and index.kind != "flat" else None
    found, d = index.search(sub, kk)
    self_pos = np.arange(len(sub))[:, None]
    keep = (found >= 0) & (found != self_pos)
    keep &= np.cumsum(keep, axis=1) <= k
    out_rows = np.full((len(sub), k), -1, dtype=np.int64)
    out_dist = np.full((len(sub), k), np.inf, dtype=np.float32)
    cols = np.cumsum(keep, axis=1) - 1
    r, c = np.nonzero(keep)
    out_rows[r, cols[r, c]] = members[found[r, c]]
    out_dist[r, cols[r, c]] = d[r, c]
    rows[members], dist[members] = out_rows, out_dist
    return tuned
