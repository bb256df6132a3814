"""The in-process jobs (sparknn.jobs, sparknn.output, sparknn.datasets) on small real files."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import exact_knn, recall
from sparknn import inputs, jobs
from sparknn.arrow import neighbors_type
from sparknn.datasets import make_items, make_queries, vector_table
from sparknn.index import Index, IndexSpec
from sparknn.output import DataError, UsageError, write_batches
from sparknn.progress import Progress

N, DIM = 3000, 24
FLAT = IndexSpec(kind="flat")


# --------------------------------------------------------------------------- helpers shared with test_cli.py
def items_matrix(table: pa.Table, col: str = "vector") -> np.ndarray:
    return np.asarray(table.column(col).to_pylist(), dtype=np.float32)


def neighbor_lists(table: pa.Table, id_col: str = "id"):
    """{id: (neighbour ids, distances)} from a result table."""
    out = {}
    for row in table.to_pylist():
        out[row[id_col]] = ([n["id"] for n in row["neighbors"]],
                            np.array([n["distance"] for n in row["neighbors"]], dtype=np.float64))
    return out


def distance_matrix(x: np.ndarray, metric: str) -> np.ndarray:
    """All pairwise distances in float64, "smaller is closer" as the engine defines them."""
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1 - x @ x.T
    sq = (x * x).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)


def assert_exact_similar(result: pa.Table, items: pa.Table, k: int, metric: str = "cosine", id_col: str = "id"):
    """The result is the exact self-join: checked by distance, and each returned id really has its distance."""
    true = distance_matrix(items_matrix(items), metric)
    ids = items.column(id_col).to_pylist()
    position = {v: i for i, v in enumerate(ids)}
    got = neighbor_lists(result, id_col)
    assert result.num_rows == len(ids) and set(got) == set(ids)
    want = min(k, len(ids) - 1)
    for item, (nbr, dist) in got.items():
        i = position[item]
        assert len(nbr) == want and item not in nbr and len(set(nbr)) == want
        np.testing.assert_allclose(dist, np.sort(np.delete(true[i], i))[:want], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dist, true[i, [position[j] for j in nbr]], rtol=1e-4, atol=1e-4)


def assert_same_neighbors(a: pa.Table, b: pa.Table, id_col: str = "id"):
    """Equal results (same types, rows, distances; same ids except in the order of near-tied neighbours)."""
    assert a.schema.field(id_col).type == b.schema.field(id_col).type
    assert a.schema.field("neighbors").type.value_type == b.schema.field("neighbors").type.value_type
    la, lb = neighbor_lists(a, id_col), neighbor_lists(b, id_col)
    assert la.keys() == lb.keys() and a.num_rows == b.num_rows == len(la)
    for key in la:
        (ia, da), (ib, db) = la[key], lb[key]
        assert len(ia) == len(ib)
        np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-5)
        tied = np.zeros(len(da), bool)
        close = np.diff(da) < 1e-5
        tied[:-1] |= close
        tied[1:] |= close
        assert [x for x, t in zip(ia, tied) if not t] == [x for x, t in zip(ib, tied) if not t]
        assert set(ia) == set(ib) or tied.any()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def items():
    return make_items(N, DIM, clusters=30, seed=3)


@pytest.fixture(scope="module")
def items_file(items, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("jobs") / "items.parquet")
    pq.write_table(items, path, row_group_size=1000)
    return path


def leftovers(directory) -> list:
    return sorted(name for name in os.listdir(directory) if ".sparknn-" in name)


# --------------------------------------------------------------------------- similar
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_similar_flat_is_exact(items, items_file, tmp_path, metric):
    out = str(tmp_path / "similar.parquet")
    res = jobs.similar(items_file, out, k=10, spec=IndexSpec(kind="flat", metric=metric))
    assert (res.rows, res.neighbors) == (N, 10)
    table = pq.read_table(out)
    assert table.schema.names == ["id", "neighbors"] and table.schema.field("id").type == pa.int64()
    assert table.schema.field("neighbors").type.value_type == neighbors_type(pa.int64()).value_type
    assert_exact_similar(table, items, 10, metric)
    assert leftovers(tmp_path) == []
    # written without dictionaries (distinct ids and distances only fill them up)
    meta = pq.ParquetFile(out).metadata
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    assert chunks and not any(chunk.has_dictionary_page for chunk in chunks)


@pytest.mark.parametrize("opts", [IndexSpec(kind="hnsw"),
                                  IndexSpec(kind="ivf", nlist=32, nprobe=8),
                                  IndexSpec(kind="ivf", nlist=32, nprobe=8, storage="pq", pq_m=8, rerank=8)],
                         ids=["hnsw", "ivf", "ivf-pq"])
def test_similar_approximate_recall(items, items_file, tmp_path, opts):
    out = str(tmp_path / "similar.parquet")
    jobs.similar(items_file, out, k=10, spec=opts)
    got = neighbor_lists(pq.read_table(out))
    x = items_matrix(items)
    truth, _ = exact_knn(x, x, 11, "cosine")
    truth = np.array([[j for j in row if j != i][:10] for i, row in enumerate(truth)])
    found = np.array([got[i][0] for i in range(N)])  # ids are 0..N-1 = positions
    assert recall(found, truth) >= 0.95


def test_ids_keep_their_type_and_values(items, tmp_path):
    """String ids and int32 ids come back as they went in, also when they are not engine-usable."""
    x = items_matrix(items)[:500]
    labels = [f"item-{i:04d}" for i in range(500)]
    cases = {
        "string": pa.array(labels),
        "int32": pa.array(np.arange(500, dtype=np.int32) * 7 + 3),
        "negative": pa.array(np.arange(500, dtype=np.int64) - 250),  # not usable as engine ids: positions
    }
    reference = None
    for name, ids in cases.items():
        src = tmp_path / f"{name}.parquet"
        pq.write_table(vector_table(ids, x, id_col="key", vector_col="emb"), src)
        out = str(tmp_path / f"{name}-out.parquet")
        jobs.similar(str(src), out, id_col="key", vector_col="emb", k=5, spec=FLAT)
        table = pq.read_table(out)
        assert table.schema.field("key").type == ids.type
        assert table.schema.field("neighbors").type.value_type.field("id").type == ids.type
        # map back to positions: the same neighbours whatever the id type
        pos = {v: i for i, v in enumerate(ids.to_pylist())}
        by_pos = {pos[k]: [pos[j] for j in v[0]] for k, v in neighbor_lists(table, "key").items()}
        if reference is None:
            reference = by_pos
        assert by_pos == reference


def test_k_larger_than_data_gives_every_other_item(items, tmp_path):
    src = tmp_path / "tiny.parquet"
    pq.write_table(items.slice(0, 4), src)
    out = str(tmp_path / "out.parquet")
    res = jobs.similar(str(src), out, k=10, spec=FLAT)
    assert res.neighbors == 3
    assert_exact_similar(pq.read_table(out), items.slice(0, 4), 10)


def test_batches_and_directories(items, tmp_path, monkeypatch):
    """Small batches over a directory of files: same result, and errors name the row of the whole input."""
    monkeypatch.setattr(jobs, "BUILD_BATCH", 256)
    monkeypatch.setattr(jobs, "SEARCH_BATCH", 100)
    src = tmp_path / "parts"
    src.mkdir()
    for i in range(3):
        pq.write_table(items.slice(i * 1000, 1000), src / f"part-{i}.parquet")
    (src / "_SUCCESS").write_text("")  # as Spark leaves it: ignored
    out = str(tmp_path / "out.parquet")
    jobs.similar(str(src), out, k=7, spec=FLAT)
    assert_exact_similar(pq.read_table(out), items, 7)

    vectors = items.column("vector").to_pylist()
    vectors[2345] = vectors[2345][:-1]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": items.column("id"), "vector": pa.array(vectors, pa.list_(pa.float32()))}), bad)
    with pytest.raises(DataError, match=r"row 2345 has 23 values"):
        jobs.similar(str(bad), str(tmp_path / "bad-out.parquet"), spec=FLAT)
    assert not (tmp_path / "bad-out.parquet").exists()


@pytest.mark.parametrize("spec", [IndexSpec(kind="ivf"), FLAT], ids=["ivf", "flat"])
def test_held_and_streamed_inputs_give_the_same_join(items, tmp_path, monkeypatch, spec):
    """The self-join reads its input once into memory when it fits (hold_vectors), else in
    batches: both give the same bytes, also when Parquet batches do not line up with the build's
    and search's batches (regrouped through one reused buffer)."""
    monkeypatch.setattr(inputs, "READ_BATCH", 300)
    monkeypatch.setattr(jobs, "BUILD_BATCH", 1000)
    monkeypatch.setattr(jobs, "SEARCH_BATCH", 700)
    src = tmp_path / "parts"
    src.mkdir()
    for i, (lo, hi) in enumerate([(0, 1234), (1234, 1250), (1250, N)]):
        pq.write_table(items.slice(lo, hi - lo), src / f"part-{i}.parquet", row_group_size=450)
    results = {}
    for mode, fraction in [("held", inputs.HOLD_FRACTION), ("streamed", 0.0)]:
        monkeypatch.setattr(inputs, "HOLD_FRACTION", fraction)
        out = str(tmp_path / f"{mode}.parquet")
        res = jobs.similar(str(src), out, k=7, spec=spec, recall=0.9 if spec.kind == "ivf" else None)
        results[mode] = pq.read_table(out)
        # every step timed apart, whether the input was held or read in batches
        steps = ["read", "build"] + (["recall tuning"] if spec.kind == "ivf" else []) + ["search", "write"]
        assert list(res.timings.steps) == steps
    # the held input is let go as the build adds it, and the search takes the index's own float32
    # rows (ivf: list after list, so the rows come in another order): under cosine those are
    # normalised, and normalising them again moves a few last bits
    held, streamed = (results[mode].sort_by("id") for mode in ("held", "streamed"))
    assert held.column("id").equals(streamed.column("id"))
    results = {"held": held, "streamed": streamed}
    neighbours = {mode: pc.list_flatten(table.column("neighbors").combine_chunks()) for mode, table in results.items()}
    assert neighbours["held"].field("id").equals(neighbours["streamed"].field("id"))
    np.testing.assert_allclose(neighbours["held"].field("distance").to_numpy(),
                               neighbours["streamed"].field("distance").to_numpy(), rtol=1e-5, atol=1e-6)
    if spec.kind == "flat":
        assert_exact_similar(held, items, 7)


@pytest.mark.parametrize("spec, exact", [
    (IndexSpec(kind="ivf", metric="l2", nlist=16, nprobe=16), True),  # float32: searched from the index, list order
    (IndexSpec(kind="ivf", metric="cosine", nlist=16, nprobe=16, storage="fp16"), False),  # the input kept
    (IndexSpec(kind="hnsw", metric="l2", ef_search=200), False),  # float32: from the index, input order
], ids=["ivf-float32", "ivf-fp16", "hnsw"])
@pytest.mark.parametrize("string_ids", [False, True], ids=["int-ids", "string-ids"])
def test_a_held_self_join_answers_every_item_whichever_rows_it_searches(items, tmp_path, spec, exact, string_ids):
    """Whether the self-join searches its index's own rows (the input let go) or the input kept
    (16-bit storage), every item gets its own row with true distances to the ids it names, exact
    when every list is scanned."""
    table = items
    if string_ids:
        table = items.set_column(0, "id", pa.array([f"item-{i}" for i in items.column("id").to_pylist()]))
    src = tmp_path / "items.parquet"
    pq.write_table(table, src, row_group_size=700)
    out = str(tmp_path / "out.parquet")
    jobs.similar(str(src), out, k=6, spec=spec)
    got = pq.read_table(out)
    if exact:
        assert_exact_similar(got, table, 6, metric=spec.metric)
        return
    true = distance_matrix(items_matrix(table), spec.metric)
    position = {v: i for i, v in enumerate(table.column("id").to_pylist())}
    found = neighbor_lists(got, "id")
    assert got.num_rows == N and set(found) == set(position)
    hits = 0
    for item, (nbr, dist) in found.items():
        i = position[item]
        assert len(nbr) == 6 and item not in nbr
        np.testing.assert_allclose(dist, true[i, [position[j] for j in nbr]], rtol=2e-3, atol=2e-3)
        hits += len(set(position[j] for j in nbr) & set(np.argsort(np.where(np.arange(N) == i, np.inf, true[i]))[:6]))
    assert hits / (6 * N) > 0.95


def test_a_delta_table_input_is_read_file_by_file(items, tmp_path):
    """Each of the table's current files by its own Parquet reader (on deltalake's filesystem)."""
    deltalake = pytest.importorskip("deltalake")
    table = tmp_path / "items-delta"
    plain = items.cast(pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32()))]))
    deltalake.write_deltalake(str(table), plain.slice(0, 1000))
    deltalake.write_deltalake(str(table), plain.slice(1000), mode="append")
    out = str(tmp_path / "out.parquet")
    assert jobs.similar(str(table), out, k=5, spec=FLAT).rows == N
    got = pq.read_table(out)
    order = np.argsort(got.column("id").to_numpy())
    assert_exact_similar(got.take(pa.array(order)), items, 5)


def test_vector_batches_regroup_chunks_in_row_order(tmp_path):
    x = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    inp = inputs.Input("mem", None, "id", "vector", 100, held=[(0, x[:7]), (7, x[7:8]), (8, x[8:60]), (60, x[60:])])
    for size in (1, 5, 8, 40, 100, 1000):
        got = [(first, batch.copy()) for first, batch in inp.vector_batches(size)]
        assert [first for first, _ in got] == list(range(0, 100, size))
        assert all(len(batch) == min(size, 100 - first) for first, batch in got)
        assert np.array_equal(np.concatenate([batch for _, batch in got]), x)
    # a chunk holding a whole batch is passed as it is, not copied
    in_place = [first for first, batch in inp.vector_batches(8) if np.shares_memory(batch, x)]
    assert in_place == [8, 16, 24, 32, 40, 48, 64, 72, 80, 88]


def test_hold_vectors_keeps_within_budget(items, items_file):
    inp = inputs.open_input(items_file, "id", "vector")
    assert not inputs.hold_vectors(inp, Progress(False), budget=N * DIM * 4 - 1) and inp.held is None
    assert inputs.hold_vectors(inp, Progress(False), budget=N * DIM * 4)
    assert np.array_equal(np.concatenate([x for _, x in inp.held]), items_matrix(items))


def test_hold_vectors_decodes_from_the_pool_that_keeps_freed_batches(items, items_file, monkeypatch):
    """Every batch is decoded while Arrow's default pool is decoding_pool() (not mimalloc, which
    gives each freed batch back to the system for the next to fault in again); the caller's
    default is back afterwards, also when the read fails. (Arrow decodes what the page decoder
    leaves: here every row group.)"""
    from sparknn.arrow import decoding_pool

    monkeypatch.setattr(inputs, "decode_row_groups", lambda sources, outs, *_: [False] * len(sources))
    pools, decode = [], inputs.row_group_vectors

    def spy(*args, **kwargs):
        pools.append(pa.default_memory_pool().backend_name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(inputs, "row_group_vectors", spy)
    before = pa.default_memory_pool().backend_name
    assert inputs.hold_vectors(inputs.open_input(items_file, "id", "vector"), Progress(False), threads=2)
    assert pools and set(pools) == {decoding_pool().backend_name}
    assert pa.default_memory_pool().backend_name == before
    with pytest.raises(DataError):
        inputs.hold_vectors(inputs.open_input(items_file, "id", "vector"), Progress(False), dim=DIM + 1)
    assert pa.default_memory_pool().backend_name == before


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_row_groups_read_side_by_side_keep_row_order_and_row_numbers(items, tmp_path, monkeypatch, threads):
    """hold_vectors decodes the row groups of every file on several threads: the rows come back
    in input order whatever thread finished first, and a bad row is reported by its row in the
    whole input (the earliest bad row, as a serial read would find it)."""
    monkeypatch.setattr(inputs, "READ_BATCH", 128)
    src = tmp_path / "parts"
    src.mkdir()
    for i, (lo, hi) in enumerate([(0, 1234), (1234, 1250), (1250, N)]):
        pq.write_table(items.slice(lo, hi - lo), src / f"part-{i}.parquet", row_group_size=300)
    inp = inputs.open_input(str(src), "id", "vector")
    assert inputs.hold_vectors(inp, Progress(False), threads=threads)
    firsts = [first for first, _ in inp.held]
    assert firsts == sorted(firsts) and firsts[0] == 0
    assert all(a + len(x) == b for (a, x), b in zip(inp.held, firsts[1:]))
    assert np.array_equal(np.concatenate([x for _, x in inp.held]), items_matrix(items))

    vectors = items.column("vector").to_pylist()
    vectors[2600] = vectors[2600][:-1]  # a later row group of the last file
    vectors[1700] = vectors[1700] + [1.0]  # and an earlier one
    bad = pa.table({"id": items.column("id"), "vector": pa.array(vectors, pa.list_(pa.float32()))})
    for i, (lo, hi) in enumerate([(0, 1234), (1234, 1250), (1250, N)]):
        pq.write_table(bad.slice(lo, hi - lo), src / f"part-{i}.parquet", row_group_size=300)
    inp = inputs.open_input(str(src), "id", "vector")
    with pytest.raises(DataError, match=r"row 1700 has 25 values"):
        inputs.hold_vectors(inp, Progress(False), threads=threads)
    assert inp.held is None


# --------------------------------------------------------------------------- build / query
def test_build_query_and_info(items, items_file, tmp_path):
    index = str(tmp_path / "items.snn")
    jobs.build(items_file, index, spec=FLAT)
    assert not os.path.exists(index + jobs.IDS_SUFFIX)  # int64 ids live in the index
    facts = jobs.info(index)
    assert {k: facts[k] for k in ("kind", "metric", "dim", "count")} == \
        {"kind": "flat", "metric": "cosine", "dim": DIM, "count": N}
    assert facts["file_size"] == os.path.getsize(index) and facts["format_version"] >= 1

    queries = make_queries(300, DIM, clusters=30, seed=3)
    qfile = tmp_path / "q.parquet"
    pq.write_table(queries, qfile)
    out = str(tmp_path / "out.parquet")
    res = jobs.query(index, str(qfile), out, k=8)
    assert (res.rows, res.neighbors) == (300, 8)
    got = neighbor_lists(pq.read_table(out))
    _, ref = exact_knn(items_matrix(items), items_matrix(queries), 8, "cosine")
    np.testing.assert_allclose(np.array([got[i][1] for i in range(300)]), ref, rtol=1e-4, atol=1e-4)


def test_string_ids_are_stored_beside_the_index(items, tmp_path):
    labels = pa.array([f"doc/{i}" for i in range(N)])
    src = tmp_path / "items.parquet"
    pq.write_table(vector_table(labels, items_matrix(items)), src)
    index = str(tmp_path / "items.snn")
    jobs.build(str(src), index, spec=FLAT)
    assert os.path.exists(index + jobs.IDS_SUFFIX)
    assert "ids.parquet" in jobs.info(index)["ids"]

    qfile = tmp_path / "q.parquet"
    pq.write_table(vector_table(pa.array(["q0", "q1"]), items_matrix(items)[[5, 17]]), qfile)
    out = str(tmp_path / "out.parquet")
    jobs.query(index, str(qfile), out, k=3)
    got = neighbor_lists(pq.read_table(out))
    assert got["q0"][0][0] == "doc/5" and got["q1"][0][0] == "doc/17"  # each query is an item: nearest is itself

    # An ids file that belongs to another build is refused, not silently misapplied.
    other = str(tmp_path / "other.snn")
    pq.write_table(items.slice(0, 100), tmp_path / "small.parquet")
    jobs.build(str(tmp_path / "small.parquet"), other, spec=FLAT)
    os.replace(other, index)
    with pytest.raises(DataError, match="does not belong"):
        jobs.query(index, str(qfile), str(tmp_path / "out2.parquet"), k=3)

    # Rebuilding with integer ids removes the now meaningless ids file.
    jobs.build(str(tmp_path / "small.parquet"), index, spec=FLAT, overwrite=True)
    assert not os.path.exists(index + jobs.IDS_SUFFIX)


# --------------------------------------------------------------------------- writing
def _failing_batches(schema, good: int, error: BaseException):
    for i in range(good):
        yield pa.RecordBatch.from_arrays([pa.array([i], pa.int64())], schema=schema)
    raise error


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
@pytest.mark.parametrize("error", [DataError("row 7 is bad"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failed_write_leaves_nothing(tmp_path, fmt, error):
    schema = pa.schema([("id", pa.int64())])
    out = str(tmp_path / "out")
    with pytest.raises(type(error)) as raised:  # the original error, also through deltalake
        write_batches(out, schema, _failing_batches(schema, 3, error), fmt)
    assert raised.value is error
    assert os.listdir(tmp_path) == []


def test_overwrite_rules(tmp_path):
    from deltalake import DeltaTable

    schema = pa.schema([("id", pa.int64())])
    out = str(tmp_path / "out")
    one = [pa.RecordBatch.from_arrays([pa.array([1, 2], pa.int64())], schema=schema)]
    write_batches(out, schema, one, "parquet")
    with pytest.raises(UsageError, match="already exists"):
        write_batches(out, schema, one, "parquet")
    write_batches(out, schema, one, "delta", overwrite=True)  # a Parquet file replaced by a Delta table
    assert DeltaTable(out).version() == 0
    write_batches(out, schema, one, "delta", overwrite=True)  # a Delta table overwritten in place: history kept
    table = DeltaTable(out)
    assert table.version() == 1 and table.to_pyarrow_table().column("id").to_pylist() == [1, 2]
    write_batches(out, schema, one, "parquet", overwrite=True)  # and back to a single file
    assert os.path.isfile(out) and pq.read_table(out).num_rows == 2
    assert leftovers(tmp_path) == []
    with pytest.raises(UsageError, match="does not exist"):
        write_batches(str(tmp_path / "no" / "such" / "dir.parquet"), schema, one)


def test_example_data_is_fixed():
    a, b = make_items(500, 8, clusters=5, seed=1), make_items(500, 8, clusters=5, seed=1)
    assert a.equals(b) and not a.equals(make_items(500, 8, clusters=5, seed=2))
    assert a.schema == pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32()))])
    assert items_matrix(a).shape == (500, 8)
    q = make_queries(50, 8, clusters=5, seed=1)
    assert not np.allclose(items_matrix(q), items_matrix(a)[:50])


def test_a_command_reuses_the_memory_it_frees():
    """The command line sets glibc to keep freed memory for reuse (machine.reuse_freed_memory);
    an environment that sets it itself wins."""
    import subprocess
    import sys
    code = "from sparknn.machine import reuse_freed_memory; print(reuse_freed_memory())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"
    run = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_TRIM_THRESHOLD_": "131072"},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_a_command_takes_its_buffers_on_small_pages():
    """The command line asks numpy and Arrow for 4 KiB pages (machine.buffers_on_small_pages:
    huge pages from memory a VM handed back to its host are slow to touch); an environment
    that sets NUMPY_MADVISE_HUGEPAGE or ARROW_DEFAULT_MEMORY_POOL wins."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, pyarrow as pa\n"
            "from sparknn import cli\n"
            "sys.argv = ['sparknn', '--version']\n"
            "cli.main()\n"
            "print(pa.default_memory_pool().backend_name, np._core.multiarray._set_madvise_hugepage(True))")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "ARROW_DEFAULT_MEMORY_POOL")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2:] == ["system", "False"]
    run = subprocess.run([sys.executable, "-c", code],
                         env={**env, "NUMPY_MADVISE_HUGEPAGE": "1", "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"},
                         capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2:] == ["jemalloc", "True"]


def test_an_ivf_self_join_keeps_the_input_as_its_lists(items, items_file, tmp_path, monkeypatch):
    """A held input of an ivf index with float32 lists is one RowBlock that the index adopts
    (no copy of the vectors) and the search takes its queries from the lists in place."""
    calls = {"adopt": 0, "in place": 0}
    adopt, in_place = Index.adopt_rows, Index.rows_in_list_order

    def spy_adopt(self, *args, **kwargs):
        calls["adopt"] += 1
        return adopt(self, *args, **kwargs)

    def spy_in_place(self):
        view = in_place(self)
        calls["in place"] += view is not None
        return view

    monkeypatch.setattr(Index, "adopt_rows", spy_adopt)
    monkeypatch.setattr(Index, "rows_in_list_order", spy_in_place)
    out = str(tmp_path / "out.parquet")
    jobs.similar(items_file, out, k=5, spec=IndexSpec(kind="ivf", metric="l2", nlist=16, nprobe=16))
    assert calls == {"adopt": 1, "in place": 1}
    assert_exact_similar(pq.read_table(out), items, 5, metric="l2")


@pytest.mark.parametrize("kind,adopted", [("flat", 1), ("hnsw", 0)])
def test_a_flat_self_join_keeps_the_input_as_its_vectors(items, items_file, tmp_path, monkeypatch, kind, adopted):
    """flat adopts the held input too (its vectors are the block, the queries slices of them in
    place); hnsw adds it batch by batch, so its long build moves the progress bar."""
    calls = []
    adopt = Index.adopt_rows

    def spy_adopt(self, block, *args, **kwargs):
        calls.append(block.rows)
        return adopt(self, block, *args, **kwargs)

    monkeypatch.setattr(Index, "adopt_rows", spy_adopt)
    out = str(tmp_path / "out.parquet")
    jobs.similar(items_file, out, k=5, spec=IndexSpec(kind=kind, metric="cosine", ef_search=200))
    assert calls == [N] * adopted
    if kind == "flat":
        assert_exact_similar(pq.read_table(out), items, 5, metric="cosine")
        return
    # hnsw, built on several threads, is approximate: its answers against the exact self-join
    true = distance_matrix(items_matrix(items), "cosine")
    np.fill_diagonal(true, np.inf)
    position = {v: i for i, v in enumerate(items.column("id").to_pylist())}
    got = neighbor_lists(pq.read_table(out), "id")
    found = np.array([[position[j] for j in got[i][0]] for i in items.column("id").to_pylist()])
    assert recall(found, np.argsort(true, axis=1)[:, :5]) >= 0.98
