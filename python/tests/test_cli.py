"""The ``sparknn`` command end to end: in this process through main([...]) and as a real subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import exact_knn, recall
from sparknn.cli import main
from sparknn.datasets import make_items, vector_table
from test_jobs import assert_exact_similar, assert_same_neighbors, items_matrix, leftovers, neighbor_lists

N, DIM = 2000, 16


@pytest.fixture(scope="module")
def items():
    return make_items(N, DIM, clusters=20, seed=5)


@pytest.fixture(scope="module")
def items_file(items, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "items.parquet")
    pq.write_table(items, path)
    return path


def run(*args: str):
    """The command as a user runs it: a new interpreter, exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "sparknn.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def read_delta(path) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


# --------------------------------------------------------------------------- happy paths
def test_start_loads_neither_pandas_nor_pyarrow_dataset(items_file):
    """`import sparknn.cli` and opening a lone Parquet file load neither: pyarrow.dataset imports
    pandas, which took 0.24 s of the command's 0.4 s start. Directories and Delta tables load it
    when they are opened."""
    script = ("import sys; import sparknn.cli; from sparknn.inputs import open_input; "
              "heavy = lambda: sorted(m for m in ('pandas', 'pyarrow.dataset') if m in sys.modules); "
              f"print(heavy()); open_input({items_file!r}, 'id', 'vector'); print(heavy())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "[]"], "loaded at start, then by opening a file"


def test_similar_in_process_never_loads_pandas(items_file, tmp_path):
    """The whole `sparknn similar` (ivf, Parquet out) passes its arrays between Arrow and numpy
    through their buffers: the first Array.to_numpy or pa.array(ndarray) of a process imports
    pandas, 0.35-0.5 s of a Fashion-MNIST job. Nor pyarrow.compute (Array.take, flatten; 0.05-0.07
    s) or tqdm (no bar is shown without a terminal) on its way."""
    out = str(tmp_path / "out.parquet")
    script = ("import sys; from sparknn import cli; "
              f"code = cli.main(['similar', {items_file!r}, '-o', {out!r}, '-k', '5', '-q']); "
              "print(code, sorted(m for m in ('pandas', 'pyarrow.dataset', 'pyarrow.compute', 'tqdm') "
              "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
    assert pq.read_table(out).num_rows == pq.read_table(items_file).num_rows


def test_first_commands_as_a_user_runs_them(tmp_path):
    """`sparknn example` then `sparknn similar`: the README's first commands, in a new process."""
    items_path, out = str(tmp_path / "items.parquet"), str(tmp_path / "similar.parquet")
    code, stdout, stderr = run("example", "-o", items_path, "--n", "1500", "--dim", "16")
    assert code == 0, stderr
    code, stdout, stderr = run("similar", items_path, "-o", out, "-k", "5", "--index", "flat")
    assert code == 0, stderr
    assert "1,500 items, 5 neighbours each" in stdout and "neighbors (id: distance)" in stdout
    assert_exact_similar(pq.read_table(out), make_items(1500, 16), 5)


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_similar_flat_is_exact(items, items_file, tmp_path, capsys, fmt):
    out = tmp_path / "similar"
    assert main(["similar", items_file, "-o", str(out), "-k", "10", "--index", "flat", "--format", fmt]) == 0
    table = pq.read_table(out) if fmt == "parquet" else read_delta(out)
    assert table.column_names == ["id", "neighbors"]
    assert_exact_similar(table, items, 10)
    assert "2,000 items, 10 neighbours each" in capsys.readouterr().out


@pytest.mark.parametrize("index", [None, "hnsw"])
def test_similar_default_ivf_and_hnsw(items, items_file, tmp_path, capsys, index):
    out = str(tmp_path / "similar.parquet")
    extra = ["--index", index] if index else []
    assert main(["similar", items_file, "-o", out] + extra) == 0  # defaults: ivf, cosine, k=10
    assert f"({index or 'ivf'}, cosine" in capsys.readouterr().out
    got = neighbor_lists(pq.read_table(out))
    x = items_matrix(items)
    truth, _ = exact_knn(x, x, 11, "cosine")
    truth = np.array([[j for j in row if j != i][:10] for i, row in enumerate(truth)])
    assert all(len(got[i][0]) == 10 and i not in got[i][0] for i in range(N))
    assert recall(np.array([got[i][0] for i in range(N)]), truth) >= 0.95


def test_build_query_info_with_string_ids(items, tmp_path, capsys):
    src, index = tmp_path / "items.parquet", str(tmp_path / "items.snn")
    pq.write_table(vector_table(pa.array([f"sku-{i}" for i in range(N)]), items_matrix(items), id_col="sku"), src)
    assert main(["build", str(src), "-o", index, "--id-col", "sku", "--index", "flat", "--metric", "l2"]) == 0
    assert os.path.exists(index + ".ids.parquet")

    queries = tmp_path / "queries.parquet"
    pq.write_table(vector_table(pa.array([101, 102, 103], pa.int32()), items_matrix(items)[[3, 4, 5]] + 0.01,
                                id_col="qid"), queries)
    out = str(tmp_path / "out.parquet")
    assert main(["query", index, str(queries), "-o", out, "-k", "4", "--id-col", "qid", "--format", "parquet"]) == 0
    table = pq.read_table(out)
    assert table.schema.field("qid").type == pa.int32()  # the query's id column as it came in
    assert table.schema.field("neighbors").type.value_type.field("id").type == pa.string()  # the items' ids
    got = neighbor_lists(table, "qid")
    assert [got[q][0][0] for q in (101, 102, 103)] == ["sku-3", "sku-4", "sku-5"]
    _, ref = exact_knn(items_matrix(items), items_matrix(items)[[3, 4, 5]] + 0.01, 4, "l2")
    np.testing.assert_allclose([got[q][1] for q in (101, 102, 103)], ref, rtol=1e-4, atol=1e-4)

    capsys.readouterr()
    assert main(["info", index]) == 0
    text = capsys.readouterr().out
    for line in ("kind       flat", "metric     l2", f"dim        {DIM}", f"count      {N:,}", "format     version",
                 "ids.parquet"):
        assert line in text
    assert main(["info", index, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["count"] == N and facts["file_size"] == os.path.getsize(index)


def test_overwrite(items_file, tmp_path, capsys):
    out = str(tmp_path / "out.parquet")
    args = ["similar", items_file, "-o", out, "-k", "3", "--index", "flat", "-q"]
    assert main(args) == 0
    before = pq.read_table(out)
    assert main(args) == 2 and "already exists: pass --overwrite" in capsys.readouterr().err
    assert pq.read_table(out).equals(before)
    assert main([*args, "-k", "4", "--overwrite"]) == 0
    assert len(pq.read_table(out).column("neighbors")[0]) == 4
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- bad input
def _table(ids, vectors, vtype=None):
    return pa.table({"id": ids, "vector": pa.array(vectors, vtype or pa.list_(pa.float32()))})


GOOD = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
BAD_INPUTS = {
    "missing file": (None, [], 2, "input '{src}' does not exist"),
    "missing column": (_table([1, 2, 3], GOOD), ["--vector-col", "emb"],
                       2, "has no column 'emb' (--vector-col); its columns are: id, vector"),
    "scalar vectors": (_table([1, 2, 3], [1.0, 2.0, 3.0], pa.float64()), [], 1, "has type double: expected a list"),
    "string vectors": (_table([1, 2, 3], [["a"], ["b"], ["c"]], pa.list_(pa.string())), [], 1,
                       "has type list<element: string>"),
    "null vector": (_table([1, 2, 3], [GOOD[0], None, GOOD[2]]), [], 1, "null vector at row 1"),
    "ragged vector": (_table([1, 2, 3], [*GOOD[:2], [1.0, 2.0, 3.0]]), [], 1, "row 2 has 3 values but row 0 has 2"),
    "nan": (_table([1, 2, 3], [GOOD[0], [float("nan"), 1.0], GOOD[2]]), [], 1, "row 1 has a non-finite value"),
    "duplicate ids": (_table(["a", "b", "b"], GOOD), [], 1, "duplicate ids: 'b' appears 2 times (rows 1, 2)"),
    "null id": (_table([1, None, 3], GOOD), [], 1, "null id at row 1"),
    "empty": (_table(pa.array([], pa.int64()), []), [], 1, "has no rows"),
    "float ids": (_table([1.5, 2.5, 3.5], GOOD), [], 1, "ids must be integers or strings"),
    "k < 1": (_table([1, 2, 3], GOOD), ["-k", "0"], 2, "argument -k/--k: must be an integer >= 1, got '0'"),
    "not parquet": (b"id,vector\n1,2\n", [], 1, "cannot read input '{src}' as Parquet"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, case):
    content, extra, code, message = BAD_INPUTS[case]
    src = str(tmp_path / "items.parquet")
    if isinstance(content, pa.Table):
        pq.write_table(content, src)
    elif content is not None:
        with open(src, "wb") as f:
            f.write(content)
    out = tmp_path / "out.parquet"
    assert main(["similar", src, "-o", str(out), "--index", "flat", *extra]) == code
    err = capsys.readouterr().err
    assert message.format(src=src) in err and "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_query_input(items_file, tmp_path, capsys):
    index = str(tmp_path / "items.snn")
    assert main(["build", items_file, "-o", index, "--index", "flat", "-q"]) == 0
    queries = tmp_path / "q.parquet"
    pq.write_table(_table([1, 2, 3], GOOD), queries)
    out = tmp_path / "out.parquet"
    assert main(["query", index, str(queries), "-o", str(out)]) == 1
    assert f"has vectors of length 2 but the index has dim={DIM}" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "nope.snn"), str(queries), "-o", str(out)]) == 2
    assert "index '" in capsys.readouterr().err
    with open(index, "r+b") as f:  # a damaged index file
        f.seek(100)
        f.write(b"\xff" * 16)
    assert main(["query", index, str(queries), "-o", str(out)]) == 1
    assert "error:" in capsys.readouterr().err and not out.exists()


def test_debug_shows_the_traceback(items_file, tmp_path, capsys):
    args = ["similar", items_file, "-o", str(tmp_path / "o.parquet"), "--id-col", "nope"]
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_error_in_a_real_process(tmp_path):
    src = tmp_path / "items.parquet"
    pq.write_table(_table([1, 2, 2], GOOD), src)
    code, _, stderr = run("similar", str(src), "-o", str(tmp_path / "o.parquet"))
    assert code == 1 and stderr.strip() == \
        "sparknn similar: error: column 'id' has duplicate ids: 2 appears 2 times (rows 1, 2); " \
        "every item needs a distinct id"


# --------------------------------------------------------------------------- --spark
@pytest.mark.spark
def test_spark_job_takes_the_first_pass_and_says_so(spark, items_file, tmp_path, capsys):
    """--first-pass reaches Spark's KNN (firstPassDims) and the summary says what it used."""
    out = tmp_path / "spark.parquet"
    assert main(["similar", items_file, "-o", str(out), "-k", "6", "--metric", "l2", "--first-pass", "4",
                 "--spark", "local[2]"]) == 0
    said = capsys.readouterr().out
    assert f"first pass: scanned in 4 of {DIM} dimensions" in said, said
    assert pq.read_table(out).num_rows == N
    assert main(["similar", items_file, "-o", str(out), "-k", "6", "--first-pass", "off", "--overwrite",
                 "--spark", "local[2]"]) == 0
    assert "first pass" not in capsys.readouterr().out


def test_spark_produces_the_same_table(spark, items_file, tmp_path):
    """--spark local[2] writes the same table as the in-process job, as Parquet and as Delta.

    In this process the command uses the tests' running SparkSession (and leaves it running)."""
    reference = tmp_path / "reference.parquet"
    assert main(["similar", items_file, "-o", str(reference), "-k", "6", "--index", "flat", "-q"]) == 0
    expected = pq.read_table(reference)

    on_spark = tmp_path / "spark.parquet"
    assert main(["similar", items_file, "-o", str(on_spark), "-k", "6", "--index", "flat", "-q",
                 "--spark", "local[2]"]) == 0
    assert_same_neighbors(pq.read_table(on_spark), expected)
    assert spark.sparkContext._jsc is not None  # not stopped: it was not the command's to stop

    delta = tmp_path / "spark-delta"  # as a user runs it: a new process with its own JVM
    code, _, stderr = run("similar", items_file, "-o", str(delta), "-k", "6", "--index", "flat", "-q",
                          "--format", "delta", "--spark", "local[2]")
    assert code == 0, stderr
    assert_same_neighbors(read_delta(delta), expected)
    assert leftovers(tmp_path) == []
