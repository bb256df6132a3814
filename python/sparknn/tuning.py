"""A recall target instead of knobs: the least search work that reaches the recall asked for.

An approximate index trades recall for speed through one knob: ``nprobe`` (ivf: lists scanned
per query) or ``ef`` (hnsw: the search's candidate list). The right value depends on the data, k
and the metric, so a fixed default gives some data sets recall 0.99 and others 0.88, silently.
``tune`` measures instead: exact neighbours of a sample of queries (matrix products over the
vectors in blocks, so memory stays a block), then the index's recall@k at values of the knob up
a ladder, and keeps the smallest that reaches the target. Recall grows with both knobs, so a
binary search on the ladder measures a handful of values. The result says what was chosen and
the recall measured, so a caller can report it.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, Iterable, Optional

import numpy as np

from sparknn._core import IVF_ONE_SCAN_LADDER_TOP
from sparknn.errors import InvalidArgumentError

SAMPLE = 1000  # queries measured by default: recall to about +-0.01 at k = 10
# The self-join's default (the CLI's `similar`, KNN without nprobe / efSearch): one neighbour in
# twenty may differ from exact search, and no data set gets more work than that needs.
DEFAULT_TARGET = 0.95
# Vectors per block of the exact pass: small enough that the allocator reuses one block's memory
# for the next (new memory costs page faults: 256 MB blocks took 0.1 s longer on Fashion-MNIST).
BLOCK_BYTES = 16 << 20
# The sample is measured in stages: a first 1 / STAGES of it (at least MIN_STAGE queries) decides
# alone when the least value reaches the target beyond doubt (``settled``); the exact pass is most
# of a tuning's cost (6.6 s of 31 s for a 500k x 768 self-join whose answer was nprobe 1).
STAGES = 4
MIN_STAGE = 100
# An ivf tuning's scan of every list (float32 lists) answers at each ladder value up to this on
# its way (the engine's bound, IvfIndex::kRankHeapsTop); values above are measured by searches
# after it when needed.
ONE_SCAN_LADDER_TOP = IVF_ONE_SCAN_LADDER_TOP
# Beyond this many lists the exact pass runs in blocks instead (the one scan ranks every list of
# every query: [sample, nlist] lists and selections).
ONE_SCAN_MAX_NLIST = 8192
# Values tried for nprobe / ef, ascending (capped at nlist for ivf).
LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
          256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 2048, 3072, 4096)


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What ``tune`` chose: ``param`` ("nprobe", "ef", or "" for exact search) = ``value``, with
    recall@k ``recall`` measured on ``sample`` queries (``reached``: recall >= ``target``; when no
    value reaches it, the largest tried)."""

    param: str
    value: int
    recall: float
    target: float
    k: int
    sample: int

    @property
    def reached(self) -> bool:
        return self.recall >= self.target

    def describe(self) -> str:
        if not self.param:
            return f"exact search (recall 1.0; target {self.target})"
        got = f"recall@{self.k} {self.recall:.3f} on {self.sample} sampled queries"
        note = "" if self.reached else " (the most tried: the target was not reached)"
        return f"{self.param} {self.value}: {got}, target {self.target}{note}"


PAIRS_AT_ONCE = 1 << 24  # id pairs recall_at_k compares at a time (16 MB of booleans)


def check_target(recall) -> float:
    # numbers.Real: numpy scalars too (np.float32(0.95) from a config or an array is a fine target)
    if isinstance(recall, (bool, np.bool_)) or not isinstance(recall, numbers.Real) or not 0 < recall <= 1:
        raise InvalidArgumentError(f"recall must be a number in (0, 1], got {recall!r}")
    return float(recall)


def exact_neighbours(blocks: Iterable[np.ndarray], queries: np.ndarray, k: int,
                     exact_search: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                     exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Row positions [m, k] of each query's k nearest vectors over ``blocks`` (float32 [rows, dim]
    in row order), nearest first, -1 where fewer: ``exact_search(block, queries, kk)`` (positions
    in the block, distances; ``sparknn.index.flat_search``) block by block, merged; ``exclude``
    [m]: a row position each query must not return (itself, in a self-join)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_d = np.full((len(q), k), np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    first = 0
    for block in blocks:
        if not len(block):
            continue
        found, dist = exact_search(block, q, min(k + (exclude is not None), len(block)))
        found = np.where(found >= 0, found + first, -1)
        if exclude is not None:
            dist = np.where(found == exclude[:, None], np.inf, dist)
        best_d, best_i = keep_nearest((best_d, best_i), (dist, found), k)
        first += len(block)
    return np.where(np.isfinite(best_d), best_i, -1)


def keep_nearest(best: tuple, candidates: tuple, k: int) -> tuple:
    """Running top-k: ``best`` and ``candidates`` are (distances [m, a], *columns [m, a]); returns
    the k nearest of both per row, (distances, *columns), nearest first, earlier ones first on ties."""
    joined = [np.concatenate([b, c], axis=1) for b, c in zip(best, candidates)]
    keep = np.argsort(joined[0], axis=1, kind="stable")[:, :k]
    return tuple(np.take_along_axis(column, keep, axis=1) for column in joined)


def settled(chosen: Tuning, lowest: int) -> bool:
    """Whether a tuning on part of a sample stands: it chose the least value (``lowest``: no
    cheaper one to find) and its recall exceeds the target by four standard errors of the
    estimate (binomial over sample x k neighbours, doubled for neighbours of one query missing
    together), so the whole sample would not have chosen differently."""
    slots = chosen.sample * chosen.k
    if not chosen.param or chosen.value != lowest or not slots:
        return False
    spread = 2 * np.sqrt(max(chosen.recall * (1 - chosen.recall), 1 / slots) / slots)
    return chosen.recall - chosen.target > 4 * spread


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (ids >= 0 of ``truth``) found in the same row of ``found``.

    Compared row block by row block as whole arrays (at most PAIRS_AT_ONCE id pairs at a time): a
    loop over rows (np.isin per query) was a fifth of a Fashion-MNIST self-join's recall tuning."""
    found, truth = np.asarray(found), np.asarray(truth)
    total = int((truth >= 0).sum())
    if not total:
        return 1.0
    width = max(1, found.shape[1] * truth.shape[1]) if found.ndim == 2 else 1
    rows = max(1, PAIRS_AT_ONCE // width)
    hits = 0
    for lo in range(0, len(truth), rows):
        t, f = truth[lo:lo + rows], found[lo:lo + rows]
        hits += int(((t[:, :, None] == f[:, None, :]).any(axis=2) & (t >= 0)).sum())
    return hits / total


def first_kept(values: np.ndarray, keep: np.ndarray, k: int, fill: int = -1) -> np.ndarray:
    """Per row of ``values`` [m, n], its entries where ``keep`` [m, n], in their order, the first k
    (``fill`` where a row keeps fewer): a row-by-row filter as whole-array operations."""
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in their order
    return np.where(np.take_along_axis(keep, first, axis=1), np.take_along_axis(values, first, axis=1), fill)


def drop_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``found`` (ids [m, >= k]) without its own id ``own[i]`` (where it is there), the
    first k kept in order (-1 where fewer remain): a self-join's answer from a search for k + 1."""
    return first_kept(found, found != np.asarray(own)[:, None], k)


def members(values: np.ndarray, offsets: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Whether each ``values[i, j]`` (ints [m, w]) is in row i's set
    ``sets[offsets[i]:offsets[i + 1]]`` (ints >= 0; CSR): one np.isin of (row, value) pairs, not a
    call per row. False where values[i, j] < 0."""
    values, sets = np.asarray(values, dtype=np.int64), np.asarray(sets, dtype=np.int64)
    span = int(max(values.max(initial=0), sets.max(initial=0))) + 1
    row_of_set = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    pairs = np.arange(len(values), dtype=np.int64)[:, None] * span + values
    return np.isin(pairs, row_of_set * span + sets) & (values >= 0)


def tune(search: Callable[[int], np.ndarray], truth: np.ndarray, target: float, param: str, limit: int,
         k: int, lowest: int = 1,
         search_many: Optional[Callable[[list[int]], list[np.ndarray]]] = None,
         answered: Optional[dict[int, np.ndarray]] = None) -> Tuning:
    """The smallest value of ``param`` on LADDER (from ``lowest`` up to ``limit``) whose
    ``search(value)`` (ids [m, k]) reaches recall ``target`` against ``truth`` (ids [m, k]). Recall
    rises with the value, so the ladder is climbed in doubling steps until the target is reached
    (never measuring far above the answer: large values are slow), then bisected.

    ``search_many(values)`` (ascending), when given, answers for every value at the cost of the
    largest (ivf: one scan whose answer is taken after each number of lists): each doubling step
    then measures every value up to its top, and nothing is bisected. ``answered`` (with
    ``search_many``): answers already found, by value (the exact scan's ladder): the least of
    the ladder's first values among them to reach the target is taken; only values above them
    are searched."""
    target = check_target(target)
    lowest = min(lowest, limit)
    ladder = [lowest] + [v for v in LADDER if lowest < v < limit] + ([limit] if limit > lowest else [])
    if search_many is not None:
        done = 0  # the ladder's first values, answered already
        while answered and done < len(ladder) and ladder[done] in answered:
            recall = recall_at_k(answered[ladder[done]], truth)
            if recall >= target or done == len(ladder) - 1:
                return Tuning(param, ladder[done], recall, target, k, len(truth))
            done += 1
        return _climb_measuring_all(search_many, truth, target, param, k, ladder[done:])
    measured: dict[int, float] = {}

    def reaches(i: int) -> bool:
        if i not in measured:
            measured[i] = recall_at_k(search(ladder[i]), truth)
        return measured[i] >= target

    below, step, i = -1, 1, 0  # ladder[below] is known to miss the target
    while not reaches(i):
        if i == len(ladder) - 1:
            return Tuning(param, ladder[i], measured[i], target, k, len(truth))
        below, i, step = i, min(len(ladder) - 1, i + step), step * 2
    while i - below > 1:  # ladder[i] reaches it, ladder[below] does not
        mid = (below + i) // 2
        if reaches(mid):
            i = mid
        else:
            below = mid
    return Tuning(param, ladder[i], measured[i], target, k, len(truth))


def _climb_measuring_all(search_many: Callable[[list[int]], list[np.ndarray]], truth: np.ndarray, target: float,
                         param: str, k: int, ladder: list[int]) -> Tuning:
    """``tune`` with ``search_many``: ladder[0..1], then up to ladder[3], [7], [15] ... in one call
    each, every value above the last call's measured; the first to reach the target wins."""
    done, top, step = -1, 1, 2
    while True:
        top = min(top, len(ladder) - 1)
        values = ladder[done + 1:top + 1]
        for value, found in zip(values, search_many(values)):
            recall = recall_at_k(found, truth)
            if recall >= target or value == ladder[-1]:
                return Tuning(param, value, recall, target, k, len(truth))
        done, top, step = top, top + step, step * 2
