"""Neighbours within groups (sparknn.grouped, `sparknn similar --group-col`): against per-group
brute force, for groups of every shape in one call."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import clustered, exact_knn, mixed_groups
from sparknn.cli import main
from sparknn.errors import InvalidArgumentError
from sparknn.grouped import GroupTunings, group_codes, within_groups
from sparknn.index import IndexSpec

K = 5


def _truth(x, codes, k, metric):
    """Per-group brute force in float64: row -> (neighbour rows, distances), itself excluded."""
    out = {}
    for g in np.unique(codes):
        members = np.flatnonzero(codes == g)
        kk = min(k, len(members) - 1)
        if kk == 0:
            for r in members:
                out[r] = (np.array([], dtype=np.int64), np.array([]))
            continue
        idx, dist = exact_knn(x[members], x[members], kk + 1, metric)
        for i, r in enumerate(members):
            keep = idx[i] != i
            out[r] = (members[idx[i][keep][:kk]], dist[i][keep][:kk])
    return out


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_every_group_shape_equals_per_group_brute_force(metric):
    x = clustered(6000, 12, 30, seed=2)
    codes = mixed_groups(len(x), scale=2)
    rows, dist = within_groups(x, codes, K, IndexSpec(kind="flat", metric=metric), small=300)
    truth = _truth(x, codes, K, metric)
    for r in range(len(x)):
        want, want_d = truth[r]
        got = rows[r][rows[r] >= 0]
        assert set(got) == set(want), (r, got, want)
        assert np.allclose(dist[r][: len(got)], want_d, atol=1e-3)
        assert np.all(rows[r][len(got):] == -1) and np.all(np.isinf(dist[r][len(got):]))
        assert np.all(codes[got] == codes[r]) and r not in got
        assert np.all(np.diff(dist[r][: len(got)]) >= 0), "nearest first"


def test_large_groups_get_an_index_of_their_own_with_high_recall():
    x = clustered(8000, 16, 40, seed=4)
    codes = np.repeat([0, 1, 2], [5000, 2500, 500])
    rows, _ = within_groups(x, codes, 10, IndexSpec(kind="ivf", metric="l2", nprobe=16), small=1000)
    truth = _truth(x, codes, 10, "l2")
    for g, size in ((0, 5000), (1, 2500)):
        members = np.flatnonzero(codes == g)
        hits = np.mean([len(set(rows[r]) & set(truth[r][0])) / 10 for r in members])
        assert hits >= 0.95, (g, size, hits)
    small = np.flatnonzero(codes == 2)
    assert all(set(rows[r]) == set(truth[r][0]) for r in small), "small groups are exact"


def _hard_groups():
    """Overlapping clusters in two large groups (6000, 3000) and a small one (500)."""
    rng = np.random.default_rng(4)
    x = (clustered(9500, 24, 300, seed=3) * 0.4 + rng.standard_normal((9500, 24))).astype(np.float32)
    return x, np.repeat([0, 1, 2], [6000, 3000, 500])


def _group_recall(rows, truth, members):
    return np.mean([len(set(rows[r]) & set(truth[r][0])) / 10 for r in members])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_target_tunes_each_large_group(kind):
    """Each group above `small` is tuned on its own items; what was chosen is reported, and the
    groups reach the target (within the sample's tolerance) where the fixed defaults do not."""
    x, codes = _hard_groups()
    truth = _truth(x, codes, 10, "l2")
    spec = IndexSpec(kind=kind, metric="l2", nprobe=2, ef_search=10, M=8, ef_construction=60)
    fixed, _ = within_groups(x, codes, 10, spec, small=1000)
    tunings: list = []
    rows, _ = within_groups(x, codes, 10, spec, small=1000, recall=0.95, tunings=tunings)
    assert [size for size, _ in tunings] == [6000, 3000]
    for (_, chosen), g in zip(tunings, (0, 1)):
        assert chosen.param == ("nprobe" if kind == "ivf" else "ef") and chosen.reached and chosen.k == 10
        members = np.flatnonzero(codes == g)
        assert _group_recall(rows, truth, members) >= 0.95 - 0.02, (g, chosen)
        assert _group_recall(fixed, truth, members) < 0.95 - 0.02, "the fixed knobs must fall short here"
    small = np.flatnonzero(codes == 2)
    assert all(set(rows[r]) == set(truth[r][0]) for r in small), "small groups stay exact"
    summary = GroupTunings(0.95, 1000, tuple(tunings))
    assert summary.reached
    assert summary.recall == pytest.approx((6000 * tunings[0][1].recall + 3000 * tunings[1][1].recall) / 9000)


def test_cli_group_col_takes_a_recall_target(tmp_path, capsys):
    x, codes = _hard_groups()
    path = _items_file(tmp_path, x, list(range(len(x))), [f"g{c}" for c in codes])
    out = str(tmp_path / "out.parquet")
    # the default: a target of 0.95 (in-process), reported per large group
    assert main(["similar", path, "-o", out, "--metric", "l2", "--group-col", "category"]) == 0
    said = capsys.readouterr().out
    assert "recall target: 1 group(s) of more than 4096 items tuned each on its own items: nprobe" in said, said
    assert "target 0.95" in said and "smaller groups exact" in said
    assert main(["similar", path, "-o", out, "--metric", "l2", "--group-col", "category", "--overwrite",
                 "--nprobe", "4"]) == 0
    assert "recall target" not in capsys.readouterr().out, "--nprobe given: no target"


def test_group_codes_of_strings_and_integers_and_bad_groups():
    assert group_codes(pa.array(["b", "a", "b", "c"])).tolist() == [0, 1, 0, 2]
    assert group_codes(pa.chunked_array([[7, 3], [7]])).tolist() == [0, 1, 0]
    with pytest.raises(InvalidArgumentError, match="group column 'city' has a null group at row 2"):
        group_codes(pa.array(["x", "y", None]), "city")
    with pytest.raises(InvalidArgumentError, match="groups are integers or strings"):
        group_codes(pa.array([1.5, 2.5]), "score")
    with pytest.raises(InvalidArgumentError, match="finite"):
        within_groups(np.array([[np.nan, 1.0], [0.0, 1.0]], dtype=np.float32), np.array([0, 0]), 1,
                      IndexSpec(kind="flat", metric="l2"))


def _items_file(tmp_path, x, ids, groups, name="items.parquet"):
    table = pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
                      "category": groups})
    path = str(tmp_path / name)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("string_ids", [False, True])
def test_cli_similar_with_group_col_is_exact_per_group(tmp_path, capsys, string_ids):
    x = clustered(3000, 8, 20, seed=6)
    codes = mixed_groups(len(x), seed=1, scale=2)
    ids = [f"item-{i}" for i in range(len(x))] if string_ids else (np.arange(len(x)) * 3 + 1).tolist()
    groups = [f"cat-{c}" for c in codes]
    path = _items_file(tmp_path, x, ids, groups)
    out = str(tmp_path / "similar.parquet")
    assert main(["similar", path, "-o", out, "-k", str(K), "--index", "flat", "--metric", "l2",
                 "--group-col", "category"]) == 0
    assert "3,000 items" in capsys.readouterr().out
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ids, "one row per item, in input order"
    truth = _truth(x, codes, K, "l2")
    position = {v: i for i, v in enumerate(ids)}
    for r, neighbors in enumerate(table.column("neighbors").to_pylist()):
        got = {position[n["id"]] for n in neighbors}
        assert got == set(truth[r][0]), r


def test_cli_group_col_errors(tmp_path, capsys):
    x = clustered(50, 4, 3, seed=1)
    good = _items_file(tmp_path, x, list(range(50)), [i % 3 for i in range(50)])
    out = str(tmp_path / "out.parquet")
    assert main(["similar", good, "-o", out, "--group-col", "nope"]) == 2
    assert "has no column 'nope' (--group-col)" in capsys.readouterr().err
    nulls = _items_file(tmp_path, x, list(range(50)), [None if i == 7 else "a" for i in range(50)], "nulls.parquet")
    assert main(["similar", nulls, "-o", out, "--group-col", "category"]) == 1
    assert "null group at row 7" in capsys.readouterr().err
    # Every group of one item: one row each, no neighbours.
    singles = _items_file(tmp_path, x, list(range(50)), list(range(50)), "singles.parquet")
    assert main(["similar", singles, "-o", out, "--group-col", "category", "--overwrite"]) == 0
    assert all(n == [] for n in pq.read_table(out).column("neighbors").to_pylist())
