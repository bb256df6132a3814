"""Planning a routed IVF build: list count, sample size, and lists packed into balanced parts.

A *part* is one executor-built IVF index holding whole lists (or, for a list
larger than a part, a slice of it). Every part shares the quantizer trained at
the driver, so a query probes the same lists whichever part it is searched in.
The plan is small (a few integers per list) and is kept in the model's
metadata: routing a query needs, per list, its size and the parts holding it
(``layout.IvfRouting``).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from sparknn._core import ivf_default_train_size


def sample_size(nlist: int, n: int) -> int:
    """k-means sample, as the in-process index draws it (16 vectors per list, at least 10,000)."""
    return ivf_default_train_size(nlist, n)


def item_bytes(dim: int, metric: str, storage: str, pq_m: int, rerank: int) -> int:
    """Bytes one item takes in a part's index, in memory and on disk (codes, label, id, extras)."""
    code = {"float32": 4 * dim, "fp16": 2 * dim, "bf16": 2 * dim, "sq8": dim, "pq": pq_m}[storage]
    extra = 4 if storage == "float32" and metric == "l2" else 0  # cached squared norms
    copies = 4 * dim if rerank and storage in ("sq8", "pq") else 0  # float32 re-ranks from its own lists
    return code + 16 + extra + copies


def spatial_order(points: np.ndarray, weights: np.ndarray, seed: int = 0) -> np.ndarray:
    """An order of the points in which neighbours tend to be adjacent: the leaves of a
    PCA tree, each node split at the weighted median of its points along their main axis
    (a few power iterations). Contiguous runs of equal weight are then compact regions."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64) + 1e-9  # empty lists still get a place
    out, stack = [], [np.arange(len(points))]
    while stack:
        idx = stack.pop()
        if len(idx) <= 2:
            out.extend(idx.tolist())
            continue
        x = points[idx]
        x = x - np.average(x, axis=0, weights=weights[idx])
        axis = rng.standard_normal(x.shape[1])
        for _ in range(8):
            axis = x.T @ (x @ axis)
            norm = np.linalg.norm(axis)
            if norm == 0:
                break
            axis /= norm
        order = idx[np.argsort(x @ axis, kind="stable")]
        w = np.cumsum(weights[order])
        half = int(np.clip(np.searchsorted(w, w[-1] / 2) + 1, 1, len(order) - 1))
        stack.append(order[half:])
        stack.append(order[:half])  # popped first: the left half comes first
    return np.asarray(out, dtype=np.int64)


def plan_parts(sizes: np.ndarray, bytes_per_item: int, target_part_bytes: int, parallelism: int,
               centroids: np.ndarray | None = None):
    """Packs lists into parts of about equal size.

    P = max(parallelism, ceil(total bytes / target)) parts of about n / P items.
    With ``centroids``, parts are compact regions: the lists in a spatial order
    (:func:`spatial_order`) are cut into P runs of equal item count, so a query,
    whose nprobe lists are neighbours, meets few parts, however many there are.
    Lists are cut into equal pieces of at most ~n / 8P items where a run boundary
    or a skewed cluster needs it (one huge cluster spreads over consecutive parts).
    Without centroids, pieces of at most n / P items go, largest first, to the
    least loaded part (LPT). Parts that receive nothing are dropped.

    Returns (piece_offsets, piece_parts, part_items): per list the parts of its
    pieces (CSR), and the expected item count of each part.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = int(sizes.sum())
    parts = max(1, parallelism, math.ceil(n * bytes_per_item / max(1, target_part_bytes)))
    parts = min(parts, max(1, n))
    cap = max(1, math.ceil(n / parts))
    owner = {}
    if centroids is not None:
        grain = max(1, cap // 8)
        per_part = n / parts
        pos = 0.0
        for lst in spatial_order(centroids, sizes).tolist():
            size = int(sizes[lst])
            if size == 0:
                continue
            count = math.ceil(size / grain)
            base, rest = divmod(size, count)
            for i in range(count):
                piece = base + (i < rest)
                owner.setdefault(lst, []).append(min(parts - 1, int((pos + piece / 2) // per_part)))
                pos += piece
    else:
        pieces = []  # (items, list)
        for lst, size in enumerate(sizes.tolist()):
            if size == 0:
                continue
            count = math.ceil(size / cap)
            base, rest = divmod(size, count)
            pieces += [(base + (i < rest), lst) for i in range(count)]
        pieces.sort(key=lambda p: (-p[0], p[1]))
        heap = [(0, b) for b in range(parts)]
        for items, lst in pieces:
            load, b = heapq.heappop(heap)
            owner.setdefault(lst, []).append(b)
            heapq.heappush(heap, (load + items, b))
    # Renumber the non-empty parts 0..P'-1 in order of first use.
    used = sorted({b for bs in owner.values() for b in bs})
    renumber = {b: i for i, b in enumerate(used)}
    offsets, flat = [0], []
    load = np.zeros(len(used), dtype=np.int64)
    for lst in range(len(sizes)):
        bs = [renumber[b] for b in owner.get(lst, [])]
        flat += bs
        offsets.append(len(flat))
        if bs:
            share = np.full(len(bs), sizes[lst] // len(bs))
            share[: sizes[lst] % len(bs)] += 1
            np.add.at(load, bs, share)
    return np.array(offsets, dtype=np.int64), np.array(flat, dtype=np.int64), load


def dedupe_parts(piece_offsets: np.ndarray, piece_parts: np.ndarray):
    """The list -> parts map without repeats (a part holding two pieces of a list appears once)."""
    offsets, flat = [0], []
    for lst in range(len(piece_offsets) - 1):
        flat += sorted(set(piece_parts[piece_offsets[lst]:piece_offsets[lst + 1]].tolist()))
        offsets.append(len(flat))
    return np.array(offsets, dtype=np.int64), np.array(flat, dtype=np.int64)


def expand(rows: np.ndarray, lists: np.ndarray, offsets: np.ndarray, targets: np.ndarray):
    """For (row, list) pairs, the (row, target) pairs of every target the CSR map gives each list."""
    counts = offsets[lists + 1] - offsets[lists]
    total = int(counts.sum())
    first = np.cumsum(counts) - counts  # where each pair's run starts in the output
    idx = np.arange(total, dtype=np.int64) - np.repeat(first - offsets[lists], counts)
    return np.repeat(rows, counts), targets[idx]
