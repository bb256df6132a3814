"""The ivf first pass in a projected space (Index.first_pass_dims, `sparknn similar --first-pass`):
answers against brute force, the recall tuning measuring the searches it makes, the settings
refused, and the command line's report of what it used."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import exact_knn, recall

import sparknn
from sparknn import cli, jobs
from sparknn.errors import InvalidArgumentError
from sparknn.index import IndexSpec


def decaying(n: int, dim: int, seed: int = 1) -> np.ndarray:
    """Clusters whose spread decays over the directions, as real embeddings' spectra do: a
    16-dimensional subspace holds about 94% of the variance of 256 dimensions."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    scale = (np.arange(1, dim + 1) ** -0.9).astype(np.float32)
    centres = rng.standard_normal((200, dim)).astype(np.float32) * scale * 3
    x = centres[rng.integers(0, 200, n)] + rng.standard_normal((n, dim)).astype(np.float32) * scale
    return np.ascontiguousarray(x @ basis, dtype=np.float32)


@pytest.fixture(scope="module")
def data():
    x = decaying(14_000, 256)
    return x[:12_000], x[12_000:13_000], x[13_000:]


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_first_pass_answers_exact_distances_near_the_full_scans_recall(data, metric):
    base, queries, _ = data
    ids_true, d_true = exact_knn(base, queries, 10, metric)
    index = sparknn.Index(256, metric, "ivf", nlist=100, nprobe=8, rerank=2)
    index.add(base)
    full_ids, _ = index.search(queries, 10)
    assert index.first_pass_dims == 0 and index.first_pass_in_use() == (0, 0.0)
    index.first_pass_dims = "auto"
    assert index.first_pass_dims == "auto"
    dims, share = index.first_pass_in_use()
    assert 16 <= dims <= 64 and dims % 16 == 0 and 0.9 <= share <= 1.0, (dims, share)
    ids, dist = index.search(queries, 10)
    assert recall(ids, ids_true) >= recall(full_ids, ids_true) - 0.02
    assert recall(ids, ids_true) >= 0.95
    # each neighbour returned carries its exact distance (re-ranked in float32)
    b = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    dots = np.einsum("qd,qkd->qk", q.astype(np.float64), b[ids].astype(np.float64))
    if metric == "l2":
        want = ((q[:, None, :].astype(np.float64) - b[ids]) ** 2).sum(-1)
    else:
        want = 1 - dots if metric == "cosine" else -dots
    np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-4)
    assert (np.diff(dist, axis=1) >= 0).all()
    index.first_pass_dims = 24  # an exact count
    assert index.first_pass_in_use()[0] == 24
    index.first_pass_dims = 0
    np.testing.assert_array_equal(index.search(queries, 10)[0], full_ids)


def test_tuning_measures_the_projected_searches(data):
    """The recall reported is that of the searches the first pass makes, not of the full scan the
    tuning's exact pass takes (whose ladder it would otherwise report)."""
    base, queries, held_out = data
    index = sparknn.Index(256, "l2", "ivf", nlist=100, rerank=2)
    index.add(base)
    index.first_pass_dims = "auto"
    chosen = index.tune(0.975, k=10, queries=queries, sample=len(queries))
    assert chosen.param == "nprobe" and chosen.sample == len(queries)
    got, _ = index.search(queries, 10, nprobe=chosen.value)
    assert recall(got, exact_knn(base, queries, 10, "l2")[0]) == pytest.approx(chosen.recall, abs=1e-12)
    held, _ = index.search(held_out, 10)  # tune set nprobe
    assert recall(held, exact_knn(base, held_out, 10, "l2")[0]) >= 0.975 - 0.02
    # and for the self-join's own sample (the stored rows, each excluding itself)
    own = index.tune(0.95, k=10)
    assert own.reached


def test_set_at_creation_it_trains_in_the_subspace(data, tmp_path):
    base, queries, _ = data
    truth = exact_knn(base, queries, 10, "l2")[0]
    spec = IndexSpec(kind="ivf", metric="l2", nlist=100, nprobe=8, rerank=2, first_pass_dims="AUTO")
    assert spec.first_pass_dims == "auto"
    index = spec.create(256)
    assert index.first_pass_dims == "auto"
    index.add(base)
    assert index.first_pass_in_use()[0] > 0
    ids, dist = index.search(queries, 10)
    assert recall(ids, truth) >= 0.95
    # saved with the index, basis and all: the loaded one answers as the one saved
    index.save(str(tmp_path / "i.snn"))
    loaded = sparknn.load(str(tmp_path / "i.snn"))
    assert loaded.first_pass_dims == "auto"
    assert loaded.first_pass_in_use() == index.first_pass_in_use()
    again = loaded.search(queries, 10)
    np.testing.assert_array_equal(again[0], ids)
    np.testing.assert_array_equal(again[1], dist)
    # a loaded index lies in one mapped array: its rows in list order, searched in place as
    # queries (whose projections are then the lists'), answer as copies of them do
    rows = loaded.rows_in_list_order()
    assert rows is not None
    in_place = loaded.search(rows[1000:3000], 10)
    copied = loaded.search(np.array(rows[1000:3000]), 10)
    np.testing.assert_array_equal(in_place[0], copied[0])
    np.testing.assert_array_equal(in_place[1], copied[1])
    with pytest.raises(InvalidArgumentError):
        IndexSpec(kind="ivf", first_pass_dims="most")
    assert IndexSpec(kind="ivf", first_pass_dims="off").first_pass_dims == 0
    assert IndexSpec(kind="ivf", rerank=2, first_pass_dims="32").first_pass_dims == 32  # text, as the CLI has it
    with pytest.raises(InvalidArgumentError, match="first_pass_dims must be 'auto', 'off' or a count"):
        IndexSpec(kind="ivf", first_pass_dims=-3)
    assert sparknn.Index(256, "l2", "ivf", rerank=2, first_pass_dims=32).first_pass_dims == 32


def test_first_pass_settings_refused():
    hnsw = sparknn.Index(256, "l2", "hnsw")
    assert hnsw.first_pass_dims == 0
    with pytest.raises(InvalidArgumentError, match="ivf"):
        hnsw.first_pass_dims = "auto"
    plain = sparknn.Index(256, "l2", "ivf", nlist=4)  # rerank 0: nothing re-ranks the candidates
    with pytest.raises(ValueError, match="rerank >= 1"):
        plain.first_pass_dims = "auto"
    plain.first_pass_dims = 0
    coded = sparknn.Index(256, "l2", "ivf", nlist=4, storage="sq8", rerank=2)
    with pytest.raises(ValueError, match="float32"):
        coded.first_pass_dims = 16
    index = sparknn.Index(256, "l2", "ivf", nlist=4, rerank=2)
    for bad in (-1, 256, 1000, "most", 2.5, None):
        with pytest.raises((InvalidArgumentError, ValueError, TypeError)):
            index.first_pass_dims = bad
    assert index.first_pass_dims == 0


def _items(path, x):
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array(np.arange(len(x)) * 7 + 3), "vector": vec}), path)


def test_similar_uses_it_by_default_and_says_so(tmp_path, data, capsys):
    x = np.concatenate(data[:2])[:8000]
    items = str(tmp_path / "items.parquet")
    _items(items, x)
    out = str(tmp_path / "out.parquet")
    assert cli.main(["similar", items, "-o", out, "--metric", "l2", "-k", "5"]) == 0
    said = capsys.readouterr().out
    assert "first pass: scanned in " in said and " of 256 dimensions" in said, said
    result = jobs.similar(items, str(tmp_path / "again.parquet"), k=5, spec=IndexSpec(kind="ivf", metric="l2",
                                                                                       rerank=2), recall=0.95)
    assert result.first_pass is not None and result.first_pass[1] == 256
    assert "projection" in result.timings.steps
    # the neighbours found: at recall >= 0.95 less the tolerance of a 1000-query estimate
    table = pq.read_table(out).to_pylist()
    found = np.array([[(n["id"] - 3) // 7 for n in r["neighbors"]] for r in table])
    rows = np.array([(r["id"] - 3) // 7 for r in table])
    truth = exact_knn(x, x[rows], 6, "l2")[0]
    truth = np.array([[j for j in t if j != i][:5] for t, i in zip(truth, rows)])
    assert recall(found, truth) >= 0.93
    off = str(tmp_path / "off.parquet")
    assert cli.main(["similar", items, "-o", off, "--metric", "l2", "-k", "5", "--first-pass", "off"]) == 0
    assert "first pass" not in capsys.readouterr().out
    assert cli.main(["similar", items, "-o", off, "--first-pass", "some", "--overwrite"]) == 2
    assert "--first-pass: must be auto, off or a count of dimensions, got 'some'" in capsys.readouterr().err
