"""One Index shared by Python threads: add, search, save and load at once (issue 16).

Before, 4 searching threads and 1 adding thread crashed the process (hnsw, ivf) or returned
distances that belonged to other ids (flat), and a save during an add wrote files that did not
load. Every result here is checked against the true distance of the id it names, every saved
file must load and hold a state between two adds. Bounded iteration counts, no timing.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import sparknn
from sparknn.errors import InvalidArgumentError

DIM = 12
FIRST, BATCH, ADDS = 300, 25, 16
TOTAL = FIRST + BATCH * ADDS
K = 5


def ids_of(rows: np.ndarray) -> np.ndarray:
    return 5 * rows + 11  # not positions: a label returned as an id would not pass


def true_distances(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    if metric == "l2":
        return ((q - x) ** 2).sum(-1)
    dot = (q * x).sum(-1)
    return -dot if metric == "ip" else 1 - dot


def check(metric, base, queries, ids, dist, limit):
    """Problems with a search result (empty when consistent)."""
    problems = []
    valid = (ids >= 11) & ((ids - 11) % 5 == 0) & ((ids - 11) // 5 < limit)
    if not valid.all():
        problems.append(f"ids never added: {ids[~valid][:5]}")
        return problems
    if (np.diff(dist, axis=1) < 0).any():
        problems.append("distances not ascending")
    if any(len(set(row)) != len(row) for row in ids.tolist()):
        problems.append("an id twice in one row")
    want = true_distances(metric, queries[:, None, :], base[(ids - 11) // 5])
    bad = np.abs(dist - want) > 1e-3 * (1 + np.abs(want))
    if bad.any():
        problems.append(f"{int(bad.sum())} distances are not their ids' distances")
    return problems


CASES = [("flat", "l2"), ("flat", "cosine"), ("hnsw", "l2"), ("hnsw", "ip"), ("ivf", "l2"), ("ivf", "cosine")]


@pytest.mark.parametrize("kind,metric", CASES)
def test_threads_add_search_save_load_at_once(tmp_path, kind, metric):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((TOTAL, DIM)).astype(np.float32)
    queries = rng.standard_normal((48, DIM)).astype(np.float32)
    ids = ids_of(np.arange(TOTAL))
    index = sparknn.Index(DIM, metric, kind, M=8, ef_construction=40, nlist=6, nprobe=2, threads=2)
    index.add(base[:FIRST], ids[:FIRST])

    problems: list[str] = []
    adding = threading.Event()
    adding.set()
    searches = [0]
    lock = threading.Lock()

    def record(what):
        with lock:
            problems.append(what)

    def writer():
        try:
            for a in range(ADDS):
                seen = searches[0]
                # each add after some searches, so the adds spread over them (bounded wait)
                for _ in range(100_000):
                    if searches[0] >= seen + 2 or not any(t.is_alive() for t in searchers):
                        break
                    threading.Event().wait(0.0005)
                row = FIRST + a * BATCH
                index.add(base[row:row + BATCH], ids[row:row + BATCH])
        except Exception as e:  # reported below, not lost in the thread
            record(f"add: {e!r}")
        finally:
            adding.clear()

    def searcher(t):
        try:
            for it in range(300):
                if it >= 4 and not adding.is_set():
                    break
                q = queries[(it * 3 + t) % 6 * 8:][:8]
                found, dist = index.search(q, k=K, threads=1 + t % 2)
                for p in check(metric, base, q, found, dist, TOTAL):
                    record(f"search: {p}")
                with lock:
                    searches[0] += 1
        except Exception as e:
            record(f"search: {e!r}")

    def saver():
        try:
            for it in range(12):
                if it >= 3 and not adding.is_set():
                    break
                path = tmp_path / f"index-{it}.snn"
                index.save(path, sync=False)
                loaded = sparknn.load(path, mmap=it % 2 == 0)
                n = len(loaded)
                if n < FIRST or n > TOTAL or (n - FIRST) % BATCH:
                    record(f"save: the file holds {n} vectors, not a state between adds")
                    continue
                if not np.array_equal(loaded.ids, ids[:n]):
                    record("save: the file's ids are not those added")
                found, dist = loaded.search(queries[:8], k=K)
                for p in check(metric, base, queries[:8], found, dist, n):
                    record(f"search of a saved file: {p}")
                del loaded
                path.unlink()
        except Exception as e:
            record(f"save/load: {e!r}")

    def reader():
        try:
            for it in range(100):
                if it >= 3 and not adding.is_set():
                    break
                x = index.reconstruct(0, FIRST)
                stored = base[:FIRST] if metric != "cosine" else base[:FIRST] / np.linalg.norm(
                    base[:FIRST], axis=1, keepdims=True)
                if not np.allclose(x, stored, atol=1e-5):
                    record("reconstruct: stored vectors changed")
                if kind == "ivf":
                    order = index.list_order()
                    if len(order) < FIRST or index.list_sizes.sum() < FIRST:
                        record("ivf lists lost vectors")
                    index.nearest_lists(queries[:4], 2, threads=1)
                _ = index.params, len(index), index.is_trained
        except Exception as e:
            record(f"reader: {e!r}")

    def settings():
        try:
            for it in range(40):
                if it >= 3 and not adding.is_set():
                    break
                index.threads = it % 3
                if kind == "hnsw":
                    index.ef_search = 16 + it % 32
                if kind == "ivf":
                    index.nprobe = 1 + it % 6
        except Exception as e:
            record(f"settings: {e!r}")

    searchers = [threading.Thread(target=searcher, args=(t,)) for t in range(3)]
    others = [threading.Thread(target=f) for f in (writer, saver, reader, settings)]
    for t in searchers + others:
        t.start()
    for t in searchers + others:
        t.join()

    assert problems == []
    assert searches[0] >= 12
    assert len(index) == TOTAL
    if kind != "hnsw":  # whole again: flat, and ivf with every list probed, are exact
        found, dist = index.search(queries, k=K, nprobe=6)
        want = np.sort(true_distances(metric, queries[:, None, :], base[None, :, :]), axis=1)[:, :K]
        np.testing.assert_allclose(dist, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_refuses_while_a_view_of_the_ids_is_alive(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, DIM)).astype(np.float32)
    index = sparknn.Index(DIM, "l2", kind, nlist=4)
    index.add(x[:30])
    view = index.ids
    part = view[10:]  # a numpy view of the view pins too
    del view
    with pytest.raises(InvalidArgumentError, match="view"):
        index.add(x[30:])
    assert len(index) == 30 and part[0] == 10  # unchanged, and the view still reads
    kept = index.ids.copy()  # a copy does not pin
    del part
    gc.collect()
    index.add(x[30:])
    assert len(index) == 60
    assert list(kept) == list(range(30))
    assert index.ids[-1] == 59  # a temporary view is released at once


def test_vectors_view_pins_and_outlives_the_python_index():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, DIM)).astype(np.float32)
    index = sparknn.Index(DIM, "l2", "flat")
    index.add(x)
    vectors = index._index.vectors()
    assert not vectors.flags.writeable
    with pytest.raises(InvalidArgumentError):
        index.add(x, ids=np.arange(20) + 100)
    del index  # the view keeps the native index (and its memory) alive
    gc.collect()
    np.testing.assert_array_equal(vectors, x)


def test_threads_per_call():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, DIM)).astype(np.float32)
    index = sparknn.Index(DIM, "l2", "flat", threads=1)
    index.add(x)
    one = index.search(x[:20], k=4, threads=1)
    two = index.search(x[:20], k=4, threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert index.threads == 1  # per call: the setting is untouched
    with pytest.raises(InvalidArgumentError, match="threads"):
        index.search(x[:2], k=4, threads=-1)
