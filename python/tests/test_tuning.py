"""Recall targets (sparknn.tuning, Index.tune, search(recall=), `sparknn similar --recall`): the
chosen nprobe / ef reaches the target on held-out queries, is reported, and is the least that does."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import clustered, exact_knn, recall

import sparknn
from sparknn import tuning
from sparknn.errors import InvalidArgumentError
from sparknn.index import flat_search

TOLERANCE = 0.02  # a 1000-query sample estimates recall@10 to about +-0.01


def _data_sets():
    """Three shapes: tight clusters (l2), many loose clusters (cosine), plain Gaussian noise (ip)."""
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((12_000, 24)).astype(np.float32)
    return {
        "clustered-l2": (clustered(12_000, 32, 40, seed=1), "l2"),
        "loose-cosine": (clustered(12_000, 48, 400, seed=2) * 0.3 + rng.standard_normal((12_000, 48)).astype(
            np.float32), "cosine"),
        "noise-ip": (noise, "ip"),
    }


@pytest.mark.parametrize("name", list(_data_sets()))
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tuned_index_reaches_the_target_on_held_out_queries(name, kind):
    x, metric = _data_sets()[name]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    # Tuned on 1000 queries, measured on 1000 others: none of them stored in the index.
    base, tune_q, held_out = x[order[:10_000]], x[order[10_000:11_000]], x[order[11_000:]]
    index = sparknn.Index(base.shape[1], metric, kind, M=8, ef_construction=60)
    index.add(base)
    chosen = index.tune(0.9, k=10, queries=tune_q)
    truth, _ = exact_knn(base, held_out, 10, metric)
    found, _ = index.search(held_out, 10)
    assert chosen.param == ("nprobe" if kind == "ivf" else "ef")
    assert (index.nprobe if kind == "ivf" else index.ef_search) == chosen.value
    assert chosen.reached and chosen.k == 10
    # a quarter of the sample decides alone only when the least value reaches the target beyond doubt
    assert chosen.sample == 1000 or (chosen.sample == 250 and tuning.settled(chosen, chosen.value)), chosen
    assert recall(found, truth) >= 0.9 - TOLERANCE, (chosen, recall(found, truth))
    # The least that reaches it: one step down the ladder misses it (on the same sample).
    lower = [v for v in tuning.LADDER if v < chosen.value]
    if lower and (kind == "ivf" or lower[-1] >= 10):
        knob = {"nprobe": lower[-1]} if kind == "ivf" else {"ef": lower[-1]}
        t_sample, _ = exact_knn(base, tune_q, 10, metric)
        got, _ = index.search(tune_q, 10, **knob)
        assert recall(got, t_sample) < 0.9 + 1e-9


def test_hnsw_tuning_reports_the_ef_it_searched_with():
    """hnsw answers k neighbours (k + 1 in a self-join) with ef >= that: the ladder starts there,
    so the value reported and set is the beam searched with, never an ef below k."""
    x = clustered(3000, 16, 30, seed=4)
    index = sparknn.Index(16, "l2", "hnsw", M=8, ef_construction=60)
    index.add(x)
    chosen = index.tune(0.5, k=10)  # easy: the ladder's first rung reaches it
    assert chosen.param == "ef" and chosen.value == 11 == index.ef_search and chosen.reached
    chosen = index.tune(0.5, k=10, queries=x[:200] + 0.01)
    assert chosen.value == 10 == index.ef_search


def test_a_first_quarter_of_the_sample_decides_only_beyond_doubt():
    """The exact pass is most of a tuning's cost: a quarter of the sample is measured first, and
    the rest only unless the least value already reaches the target by a wide margin."""
    x = clustered(8000, 16, 30, seed=4)
    index = sparknn.Index(16, "l2", "ivf", nlist=30)
    index.add(x)
    easy = index.tune(0.5, k=10)  # well-separated clusters: one list holds an item's neighbours
    assert (easy.value, easy.sample) == (1, 250) and easy.recall > 0.9, easy
    hard = index.tune(1.0, k=10)  # exact answers: never settled on part of the sample
    assert hard.sample == 1000, hard
    assert index.tune(0.5, k=10, sample=300).sample == 300, "below 4 x MIN_STAGE queries: one stage"
    # the rule itself: the least value, and a margin of four standard errors of the estimate
    assert tuning.settled(tuning.Tuning("nprobe", 1, 0.993, 0.95, 10, 250), 1)
    assert not tuning.settled(tuning.Tuning("nprobe", 2, 0.993, 0.95, 10, 250), 1), "a cheaper value exists"
    assert not tuning.settled(tuning.Tuning("nprobe", 1, 0.96, 0.95, 10, 250), 1), "too close to the target"
    assert not tuning.settled(tuning.Tuning("nprobe", 1, 1.0, 1.0, 10, 250), 1)
    assert not tuning.settled(tuning.Tuning("", 0, 1.0, 0.9, 10, 0), 0), "exact search"


def test_self_join_tuning_excludes_each_item_and_search_recall_keeps_settings():
    x = clustered(6000, 16, 30, seed=5)
    index = sparknn.Index(16, "l2", "ivf", nprobe=16)
    index.add(x)
    chosen = index.tune(0.95, k=5)  # the stored items, each excluding itself
    assert chosen.reached and index.nprobe == chosen.value
    index.nprobe = 16
    found, _ = index.search(x[:500], 6, recall=0.99)
    assert index.nprobe == 16, "search(recall=) leaves the index's own setting alone"
    assert list(index.tunings) == [(6, 0.99)] and index.tunings[(6, 0.99)].reached
    truth, _ = exact_knn(x, x[:500], 6, "l2")
    assert recall(found, truth) >= 0.99 - TOLERANCE
    again = index.tunings[(6, 0.99)]
    index.search(x[:10], 6, recall=0.99)
    assert index.tunings[(6, 0.99)] is again, "kept for later calls"
    index.add(clustered(100, 16, 30, seed=6))
    index.search(x[:10], 6, recall=0.99)
    assert index.tunings[(6, 0.99)] is not again, "an add measures again"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_empty_queries_neither_tune_nor_leave_a_tuning_behind(kind):
    x = clustered(5000, 16, 30, seed=8)
    index = sparknn.Index(16, "l2", kind)
    index.add(x)
    ids, dist = index.search(np.empty((0, 16), np.float32), 10, recall=0.99)
    assert ids.shape == dist.shape == (0, 10)
    assert index.tunings == {}, "nothing was measured: no tuning may serve later calls"
    with pytest.raises(InvalidArgumentError, match="queries is empty"):
        index.tune(0.99, queries=np.empty((0, 16), np.float32))
    with pytest.raises(InvalidArgumentError, match="recall must be a number in"):
        index.search(np.empty((0, 16), np.float32), 10, recall=1.5)
    found, _ = index.search(x[:300], 10, recall=0.99)
    truth, _ = exact_knn(x, x[:300], 10, "l2")
    assert recall(found, truth) >= 0.99 - TOLERANCE


def test_threads_tuning_for_different_targets_keep_every_tuning():
    # each thread replaced the dict it had read: of 8 targets tuned at once, 1 was kept
    x = clustered(6000, 16, 30, seed=9)
    index = sparknn.Index(16, "l2", "hnsw")
    index.add(x)
    targets = [0.8 + 0.02 * i for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: index.search(x[:100], 5, recall=t, threads=1), targets))
    assert sorted(index.tunings) == [(5, t) for t in targets]


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99, 1.0])
def test_ivf_ladder_from_one_scan_chooses_as_searching_each_value(target):
    """ivf tunes with the answers at every nprobe of a ladder step from one scan (search_nprobes):
    the value and recall chosen are those of searching each value alone and bisecting."""
    base = clustered(6000, 24, seed=51)
    queries = clustered(400, 24, seed=52)
    index = sparknn.Index(24, "l2", "ivf", nlist=64)
    index.add(base)
    truth, _ = index.search(queries, 10, nprobe=64)
    ivf = index._native_as("ivf", "search_nprobes")

    def search(value):
        return index.search(queries, 10, nprobe=value, widen=False)[0]

    def search_many(values):
        return list(ivf.search_nprobes(queries, 10, values)[0])

    one_by_one = tuning.tune(search, truth, target, "nprobe", 64, 10)
    one_scan = tuning.tune(search, truth, target, "nprobe", 64, 10, search_many=search_many)
    assert (one_scan.value, one_scan.recall) == (one_by_one.value, one_by_one.recall)
    assert one_scan.reached


def _bf16_tiles() -> bool:
    """Whether ivf float32 lists scan in bf16 here (the engine's own choice: AVX512_BF16 CPUs of
    AMD unless SPARKNN_BF16_TILES says otherwise)."""
    return sparknn._core.bf16_tiles_preferred()


def _near_ties(n: int, nq: int, dim: int):
    """Rows r orthogonal to u of norm 0.5 to 1.5, queries s u + w (s in [5, 15), |w| = 0.3, w
    orthogonal to u): a row is s^2 + |w|^2 + |r|^2 - 2 w . r from a query, its neighbours apart
    by ~1e-4 (float32 resolves them) while the bf16 scan errs by ~1e-2 (s u . r, truly 0): most
    exact answers cannot be proven from the scan and are searched exactly instead."""
    rng = np.random.default_rng(8)
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)

    def orthogonal(m, norms):
        v = rng.standard_normal((m, dim))
        v -= np.outer(v @ u, u)
        return v * (norms / np.linalg.norm(v, axis=1))[:, None]

    rows = orthogonal(n, 0.5 + rng.random(n))
    queries = np.outer(5 + 10 * rng.random(nq), u) + orthogonal(nq, np.full(nq, 0.3))
    return rows.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("rerank", [0, 2])
@pytest.mark.parametrize("data", ["clustered", "near ties"])
def test_ivf_float32_tuning_in_one_scan_chooses_as_an_exact_pass(rerank, data):
    """float32 lists tune from one scan of every list (the exact answers proven against the bf16
    scan's error bound, the rest searched exactly, and the ladder's lower values on the way):
    the value and recall chosen are those of numpy's exact neighbours (float64) and a search at
    each value. A wrong answer proven exact would lower the recall measured by ~1e-3 a query."""
    if data == "clustered":
        base, queries = clustered(6000, 24, seed=61), clustered(400, 24, seed=62)
    else:
        base, queries = _near_ties(6000, 400, 24)
    index = sparknn.Index(24, "l2", "ivf", nlist=64, rerank=rerank)
    index.add(base)
    truth, _ = exact_knn(base, queries, 10, "l2")
    for target in (0.9, 0.97):
        chosen = index.tune(target, k=10, queries=queries, sample=len(queries))
        if chosen.sample < len(queries):
            continue  # settled on the first quarter: nothing to compare with all of them
        want = tuning.tune(lambda v: index.search(queries, 10, nprobe=v, widen=False)[0], truth, target, "nprobe",
                           64, 10)
        # the same value; the same recall up to a neighbour or two tied within float32's rounding
        assert chosen.value == want.value and abs(chosen.recall - want.recall) <= 2 / (10 * len(queries)), \
            (target, chosen, want)
    if data == "near ties" and rerank and _bf16_tiles():
        ivf = index._native_as("ivf", "search_ladder_and_exact")
        _, _, proven = ivf.search_ladder_and_exact(queries, 10, [64])
        assert proven.mean() < 0.5, "answers the bf16 scan cannot order were proven"



def test_flat_is_exact_and_an_unreachable_target_says_so():
    x = clustered(3000, 16, 20, seed=7)
    flat = sparknn.Index(16, "l2", "flat")
    flat.add(x)
    assert flat.tune(0.99).param == "" and flat.tune(0.99).recall == 1.0
    # 8-bit codes without re-ranking lose some neighbours however many lists are scanned.
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((3000, 64)).astype(np.float32)
    sq8 = sparknn.Index(64, "l2", "ivf", storage="sq8", nlist=8)
    sq8.add(noise)
    chosen = sq8.tune(1.0, k=10, queries=noise[:300] + 0.01)
    if not chosen.reached:
        assert chosen.value == 8 and "not reached" in chosen.describe()
    for bad in (0, 1.5, "0.9", True):
        with pytest.raises(InvalidArgumentError, match="recall must be a number in"):
            flat.tune(bad)


def test_exact_neighbours_across_blocks_equal_brute_force():
    x = clustered(2500, 12, 10, seed=9)
    q_rows = np.arange(0, 2500, 25)
    blocks = [x[:700], x[700:701], x[701:2500]]
    for metric in ("l2", "cosine", "ip"):
        got = tuning.exact_neighbours(iter(blocks), x[q_rows], 7, flat_search(metric), exclude=q_rows)
        truth, _ = exact_knn(x, x[q_rows], 8, metric)
        want = np.array([t[t != r][:7] for t, r in zip(truth, q_rows)])
        assert recall(got, want) == 1.0, metric



@pytest.mark.parametrize("k", [1, 10, 100])
def test_recall_at_k_drop_own_first_kept_and_members_equal_their_row_by_row_meaning(k, monkeypatch):
    """The whole-array forms give what a loop over the rows gives: missing ids (-1) in the truth are
    not counted, a -1 found matches nothing; a row keeps its order without its own id."""
    rng = np.random.default_rng(k)
    m = 700
    truth = np.stack([rng.choice(3 * k + 5, k, replace=False) for _ in range(m)])
    truth[rng.random((m, k)) < 0.1] = -1
    found = np.stack([rng.choice(3 * k + 5, k + 1, replace=False) for _ in range(m)])
    found[rng.random((m, k + 1)) < 0.1] = -1
    hits = sum(np.isin(t[t >= 0], f).sum() for f, t in zip(found, truth))
    want = hits / (truth >= 0).sum()
    assert tuning.recall_at_k(found, truth) == pytest.approx(want, abs=1e-12)
    monkeypatch.setattr(tuning, "PAIRS_AT_ONCE", 3 * k * (k + 1))  # blocks of three rows
    assert tuning.recall_at_k(found, truth) == pytest.approx(want, abs=1e-12)
    assert tuning.recall_at_k(found, np.full_like(truth, -1)) == 1.0
    column = found[np.arange(m), rng.integers(0, k + 1, m)]  # an id of the row (ids are >= 0), or none
    own = np.where((rng.random(m) < 0.5) & (column >= 0), column, 10**6)
    np.testing.assert_array_equal(tuning.drop_own(found, own, k),
                                  np.array([r[r != i][:k] for r, i in zip(found, own)]))
    keep = rng.random(found.shape) < 0.4  # rows keeping fewer than k are padded with -1
    np.testing.assert_array_equal(tuning.first_kept(found, keep, k),
                                  np.array([np.pad(r[w][:k], (0, k - len(r[w][:k])), constant_values=-1)
                                            for r, w in zip(found, keep)]))
    sizes = rng.integers(0, 2 * k + 2, m)  # per row a set of lists (CSR), some empty
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    sets = np.concatenate([rng.choice(3 * k + 5, s, replace=False) for s in sizes])
    np.testing.assert_array_equal(tuning.members(truth, offsets, sets),
                                  np.array([np.isin(t, sets[offsets[i]:offsets[i + 1]]) & (t >= 0)
                                            for i, t in enumerate(truth)]))


def test_cli_similar_recall_target(tmp_path, capsys):
    from sparknn.cli import main

    x = clustered(8000, 16, 40, seed=11)
    path = str(tmp_path / "items.parquet")
    pq.write_table(pa.table({"id": np.arange(len(x)) * 3,
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}), path)
    out = str(tmp_path / "out.parquet")
    assert main(["similar", path, "-o", out, "--metric", "l2", "--recall", "0.97", "--index", "ivf"]) == 0
    said = capsys.readouterr().out
    assert "recall target: nprobe" in said and "recall tuning" in said
    table = pq.read_table(out).sort_by("id")
    found = np.array([[n["id"] // 3 for n in ns] for ns in table.column("neighbors").to_pylist()])
    truth, _ = exact_knn(x, x, 11, "l2")
    want = np.array([t[t != i][:10] for i, t in enumerate(truth)])
    assert recall(found, want) >= 0.97 - TOLERANCE
    assert main(["similar", path, "-o", str(tmp_path / "bad.parquet"), "--recall", "2"]) != 0
    assert "recall must be a number" in capsys.readouterr().err
