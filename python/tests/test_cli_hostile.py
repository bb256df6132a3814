"""The ``sparknn`` command against a hostile user (issue 16): damaged or missing side files, mixed
directories, absurd k, outputs that are inputs, full disks. Every case either gives exactly the
right answer or one clear line on stderr with nothing written and nothing of the input lost."""

import os
import random
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sparknn
from sparknn import jobs
from sparknn.cli import main
from sparknn.datasets import make_items, vector_table
from test_jobs import items_matrix, leftovers, neighbor_lists

N, DIM = 40, 8


def one_error_line(err: str, command: str) -> str:
    """The single line a failing command printed; fails if there is a traceback or more lines."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"sparknn {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def items():
    return make_items(N, DIM, clusters=4, seed=11)


@pytest.fixture
def string_index(items, tmp_path):
    """A flat index over string ids (so it has an ids file), queries that are items, and the right answer."""
    src = tmp_path / "items.parquet"
    pq.write_table(vector_table(pa.array([f"item-{i}" for i in range(N)]), items_matrix(items)), src)
    index = str(tmp_path / "items.snn")
    assert main(["build", str(src), "-o", index, "--index", "flat", "--metric", "l2", "-q"]) == 0
    queries = str(tmp_path / "queries.parquet")
    pq.write_table(vector_table(pa.array(list(range(N))), items_matrix(items)), queries)
    expected = str(tmp_path / "expected.parquet")
    assert main(["query", index, queries, "-o", expected, "-k", "3", "-q"]) == 0
    table = pq.read_table(expected)
    assert [row[0][0] for row in neighbor_lists(table).values()] == [f"item-{i}" for i in range(N)]
    return index, queries, table


# --------------------------------------------------------------------------- the ids file
def test_every_sampled_bit_flip_of_the_ids_file_is_refused_or_harmless(string_index, tmp_path, capsys):
    """120 single-bit flips across the whole ids file: each run fails naming the file, or is exact.

    Before the index recorded the ids file's CRC-32C, 33 of 120 flips exited 0 with wrong ids
    (item-0 -> itam-0)."""
    index, queries, expected = string_index
    sidecar = index + jobs.IDS_SUFFIX
    with open(sidecar, "rb") as f:
        original = f.read()
    rng = random.Random(16)
    refused = 0
    for trial, bit in enumerate(rng.sample(range(len(original) * 8), 120)):
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with open(sidecar, "wb") as f:
            f.write(damaged)
        out = tmp_path / f"out-{trial}.parquet"
        code = main(["query", index, queries, "-o", str(out), "-k", "3", "-q"])
        err = capsys.readouterr().err
        if code == 0:
            assert pq.read_table(out).equals(expected), f"bit {bit}: exit 0 with a different answer"
        else:
            assert code == 1 and not out.exists(), (bit, err)
            assert repr(sidecar) in one_error_line(err, "query"), err
            refused += 1
    assert refused == 120  # CRC-32C detects every single-bit error
    with open(sidecar, "wb") as f:
        f.write(original)
    assert main(["query", index, queries, "-o", str(tmp_path / "again.parquet"), "-k", "3", "-q"]) == 0


@pytest.mark.parametrize("damage", ["deleted", "truncated", "extended", "another build's"])
def test_a_missing_or_foreign_ids_file_is_an_error_naming_it(string_index, items, tmp_path, capsys, damage):
    """Before: a deleted ids file made `query` exit 0 with row positions as int64 ids."""
    index, queries, _ = string_index
    sidecar = index + jobs.IDS_SUFFIX
    if damage == "deleted":
        os.remove(sidecar)
    elif damage == "truncated":
        os.truncate(sidecar, os.path.getsize(sidecar) - 1)
    elif damage == "extended":
        with open(sidecar, "ab") as f:
            f.write(b"\0")
    else:  # same row count and type, other ids: a well-formed Parquet file from another build
        other = tmp_path / "other.parquet"
        pq.write_table(vector_table(pa.array([f"other-{i}" for i in range(N)]), items_matrix(items)), other)
        assert main(["build", str(other), "-o", str(tmp_path / "other.snn"), "--index", "flat", "-q"]) == 0
        shutil.copyfile(str(tmp_path / "other.snn") + jobs.IDS_SUFFIX, sidecar)
    out = tmp_path / "out.parquet"
    assert main(["query", index, queries, "-o", str(out), "-q"]) == 1
    line = one_error_line(capsys.readouterr().err, "query")
    assert repr(sidecar) in line and not out.exists()
    assert ("missing" in line) if damage == "deleted" else ("bytes" in line or "checksum" in line)
    with pytest.raises(sparknn.IndexFileError, match="ids file"):
        jobs.load_with_ids(index)
    assert main(["info", index]) == 1
    assert repr(sidecar) in one_error_line(capsys.readouterr().err, "info")


def test_info_says_the_ids_file_is_verified(string_index, capsys):
    index = string_index[0]
    capsys.readouterr()
    assert main(["info", index]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and index + jobs.IDS_SUFFIX in out
    facts = jobs.info(index)
    assert facts["ids_file"]["verified"] is True
    assert facts["ids_file"]["bytes"] == os.path.getsize(index + jobs.IDS_SUFFIX)


def test_an_index_built_before_side_files_keeps_its_fingerprint_check(string_index, tmp_path):
    """An index without a SideFiles record and an ids file stamped with its fingerprint (the earlier
    layout) still works; an ids file that does not match the fingerprint is still refused."""
    index, queries, expected = string_index
    sidecar = index + jobs.IDS_SUFFIX
    ids = pq.read_table(sidecar)
    sparknn.load(index).save(index)  # saving a loaded index again records no side files
    assert sparknn.load(index).side_files == {}
    pq.write_table(ids.replace_schema_metadata({b"sparknn.index": jobs._fingerprint(index)}), sidecar)
    out = tmp_path / "old.parquet"
    assert main(["query", index, queries, "-o", str(out), "-k", "3", "-q"]) == 0
    assert pq.read_table(out).equals(expected)
    assert jobs.info(index)["ids_file"]["verified"] is False
    pq.write_table(ids, sidecar)  # no fingerprint
    with pytest.raises(jobs.DataError, match="does not belong"):
        jobs.load_with_ids(index)


# --------------------------------------------------------------------------- one schema per directory
def _part(path, ids, dim=DIM, vtype=None, rows=4, id_col="id", vector_col="vector"):
    vtype = vtype or pa.float32()
    vectors = np.arange(rows * dim, dtype=np.float64).reshape(rows, dim) + 1
    pq.write_table(pa.table({id_col: ids, vector_col: pa.array(vectors.tolist(), pa.list_(vtype))}), path)


@pytest.mark.parametrize("odd", ["numeric strings", "uncastable strings", "no vector column", "double vectors"])
def test_a_directory_with_mixed_schemas_names_the_odd_files(tmp_path, capsys, odd):
    """Before: the first file's schema won and the rest were cast (numeric strings became int64,
    exit 0), failed with a raw ArrowInvalid, or read as nulls ("null id at row 4")."""
    src = tmp_path / "items"
    src.mkdir()
    _part(src / "part-0.parquet", pa.array([0, 1, 2, 3], pa.int64()))
    _part(src / "part-1.parquet", pa.array([4, 5, 6, 7], pa.int64()))
    if odd == "numeric strings":
        _part(src / "part-2.parquet", pa.array(["8", "9", "10", "11"]))
    elif odd == "uncastable strings":
        _part(src / "part-2.parquet", pa.array(["a", "b", "c", "d"]))
    elif odd == "no vector column":
        _part(src / "part-2.parquet", pa.array([8, 9, 10, 11], pa.int64()), vector_col="embedding")
    else:
        _part(src / "part-2.parquet", pa.array([8, 9, 10, 11], pa.int64()), vtype=pa.float64())
    _part(src / "part-3.parquet", pa.array(["12", "13", "14", "15"]))  # a second odd file, also named
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat"]) == 1
    line = one_error_line(capsys.readouterr().err, "similar")
    assert "do not share one schema" in line and "part-0.parquet has id: int64" in line
    assert "part-2.parquet has" in line and "part-3.parquet has id: string" in line and "part-1" not in line
    assert not out.exists() and leftovers(tmp_path) == []
    index = tmp_path / "items.snn"
    assert main(["build", str(src), "-o", str(index), "-q"]) == 1 and not index.exists()


def test_a_directory_with_one_schema_and_an_empty_file_works(tmp_path):
    src = tmp_path / "items"
    src.mkdir()
    _part(src / "part-0.parquet", pa.array([0, 1, 2, 3], pa.int64()))
    _part(src / "part-1.parquet", pa.array([], pa.int64()), rows=0)
    _part(src / "part-2.parquet", pa.array([4, 5, 6, 7], pa.int64()))
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat", "-k", "2", "-q"]) == 0
    assert pq.read_table(out).num_rows == 8


# --------------------------------------------------------------------------- k
def test_k_is_capped_at_the_item_count_before_any_allocation(items, string_index, tmp_path, monkeypatch):
    """Before: -k 2**40 raised numpy's _ArrayMemoryError; -k 1000000 on 200 items sized a
    [queries, 1000001] buffer. Every search call is now sized by min(k, n)."""
    asked = []
    search = sparknn.Index.search

    def spy(self, queries, k=10, *args, **kwargs):
        asked.append((len(queries), k))
        return search(self, queries, k, *args, **kwargs)

    monkeypatch.setattr(sparknn.Index, "search", spy)
    src = tmp_path / "items.parquet"
    pq.write_table(items, src)
    for index_kind in ("flat", "ivf", "hnsw"):
        out = tmp_path / f"similar-{index_kind}.parquet"
        assert main(["similar", str(src), "-o", str(out), "-k", str(2**40), "--index", index_kind, "-q"]) == 0
        assert [len(row) for row in pq.read_table(out).column("neighbors").to_pylist()] == [N - 1] * N
    assert asked and max(k for _, k in asked) == N  # the row itself and the n - 1 others
    asked.clear()
    index, queries, _ = string_index
    out = tmp_path / "query.parquet"
    assert main(["query", index, queries, "-o", str(out), "-k", str(2**40), "--ef", str(2**40), "-q"]) == 0
    assert [len(row) for row in pq.read_table(out).column("neighbors").to_pylist()] == [N] * N
    assert asked and max(k for _, k in asked) == N


def test_rows_per_search_call_shrink_as_k_grows(monkeypatch, tmp_path):
    """The [rows, k] result matrices of one call stay within RESULT_BYTES even when k = n is large."""
    monkeypatch.setattr(jobs, "RESULT_BYTES", 12 * 64 * 10)  # room for 10 rows of k = 64
    calls = []
    search = sparknn.Index.search
    monkeypatch.setattr(sparknn.Index, "search",
                        lambda self, q, k=10, *a, **kw: calls.append((len(q), k)) or search(self, q, k, *a, **kw))
    src = tmp_path / "items.parquet"
    pq.write_table(make_items(64, 4, clusters=2, seed=1), src)
    assert main(["similar", str(src), "-o", str(tmp_path / "o.parquet"), "-k", "1000", "--index", "flat", "-q"]) == 0
    assert calls and all(rows * k * 12 <= 12 * 64 * 10 for rows, k in calls)
    assert sum(rows for rows, _ in calls) == 64


# --------------------------------------------------------------------------- output never an input
def _snapshot(path):
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    return {name: _snapshot(os.path.join(path, name)) for name in sorted(os.listdir(path))}


def test_the_output_is_never_the_input(items, tmp_path, capsys):
    """Before: -o equal to the input with --overwrite replaced the input."""
    src = tmp_path / "items.parquet"
    pq.write_table(items, src)
    folder = tmp_path / "dir"
    folder.mkdir()
    pq.write_table(items, folder / "part-0.parquet")
    (tmp_path / "link.parquet").symlink_to(src)
    before = {p: _snapshot(p) for p in (str(src), str(folder))}
    flat = ["--index", "flat"]
    index = str(tmp_path / "items.snn")
    cases = [
        ["similar", str(src), "-o", str(src), *flat],
        ["similar", str(src), "-o", str(tmp_path / "link.parquet"), *flat],  # a symbolic link to the input
        ["similar", str(tmp_path / "link.parquet"), "-o", str(src), *flat],
        ["similar", str(folder), "-o", str(folder / "out.parquet"), *flat],  # inside the input directory
        ["similar", str(folder / "part-0.parquet"), "-o", str(folder), *flat],  # the input inside the output
        ["similar", str(folder), "-o", str(folder), "--format", "delta", *flat],
        ["build", str(src), "-o", str(src), *flat],
        ["query", index, str(src), "-o", str(src)],
        ["query", index, str(src), "-o", index],
    ]
    assert main(["build", str(src), "-o", index, *flat, "-q"]) == 0
    index_bytes = _snapshot(index)
    for args in cases:
        capsys.readouterr()
        assert main([*args, "--overwrite"]) == 2, args
        line = one_error_line(capsys.readouterr().err, args[0])
        assert "write it somewhere else" in line, line
    assert {p: _snapshot(p) for p in (str(src), str(folder))} == before
    assert _snapshot(index) == index_bytes
    assert leftovers(tmp_path) == [] and leftovers(folder) == []


def test_overwrite_never_deletes_a_directory_that_is_not_a_table(items_file_small, tmp_path, capsys):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["similar", items_file_small, "-o", str(precious), "--overwrite", "--index", "flat"]) == 2
    assert "does not delete it" in one_error_line(capsys.readouterr().err, "similar")
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.fixture
def items_file_small(items, tmp_path):
    path = str(tmp_path / "small-items.parquet")
    pq.write_table(items, path)
    return path


# --------------------------------------------------------------------------- every error one line
def _run(*args):
    proc = subprocess.run([sys.executable, "-m", "sparknn.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not possible)."""
    where = tmp_path / "disk"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                                        str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("command", ["similar delta", "similar parquet", "build"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_disk, command):
    """Before: --format delta on a full disk printed a Python traceback and a Rust panic."""
    src = tmp_path / "items.parquet"
    pq.write_table(make_items(20_000, 16, clusters=10, seed=2), src)
    if command == "build":
        args = ["build", str(src), "-o", str(tiny_disk / "items.snn"), "--index", "flat", "-q"]
    else:
        args = ["similar", str(src), "-o", str(tiny_disk / "out"), "--index", "flat", "-q",
                "--format", command.split()[1]]
    code, _, err = _run(*args)
    assert code == 1
    line = one_error_line(err, args[0])
    assert "No space left on device" in line or "no space left" in line, line
    assert "panicked" not in err and os.listdir(tiny_disk) == []


def test_a_failing_delta_write_is_one_line_even_if_deltalake_panics(tmp_path, capfd, monkeypatch):
    """The same without a tmpfs: deltalake's error and its Rust runtime's output on fd 2, injected."""
    import deltalake
    from deltalake.exceptions import DeltaError

    def failing(*args, **kwargs):
        os.write(2, b"thread 'tokio-rt-worker' panicked at buffered.rs:369:41:\nAlready shut down\nstack backtrace:\n")
        raise DeltaError("Failed to parse parquet: External: Generic LocalFileSystem error: Unable to copy data "
                         "to file: No space left on device (os error 28)")

    monkeypatch.setattr(deltalake, "write_deltalake", failing)
    src = tmp_path / "items.parquet"
    pq.write_table(make_items(50, 4, clusters=2, seed=1), src)
    out = tmp_path / "out"
    assert main(["similar", str(src), "-o", str(out), "--format", "delta", "--index", "flat", "-q"]) == 1
    err = capfd.readouterr().err
    assert "no space left on the device" in one_error_line(err, "similar") and "panicked" not in err
    assert not out.exists() and leftovers(tmp_path) == []
    assert main(["similar", str(src), "-o", str(out), "--format", "delta", "--index", "flat", "-q", "--debug"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "panicked" in err  # --debug keeps everything


def test_an_unwritable_output_directory_is_refused_up_front(tmp_path, items_file_small, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        assert main(["similar", items_file_small, "-o", str(ro / "out.parquet"), "--index", "flat"]) == 2
        assert "is not writable" in one_error_line(capsys.readouterr().err, "similar")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_damaged_input_page_is_one_line_not_wrong_vectors(tmp_path, capsys):
    """A Parquet file with page checksums (parquet-mr writes them by default) whose footer is intact
    but one byte of vector data is not: before, exit 0 with a wrong vector; now one line naming it."""
    src = tmp_path / "items.parquet"
    table = make_items(2000, 16, clusters=4, seed=3)
    pq.write_table(table, src, compression="none", write_page_checksum=True, use_dictionary=False)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the vector column's values
    src.write_bytes(bytes(data))
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat"]) == 1
    line = one_error_line(capsys.readouterr().err, "similar")
    assert repr(str(src)) in line and "CRC" in line.upper(), line
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("error, code, words", [
    (MemoryError("Unable to allocate 745. GiB for an array"), 1, "out of memory: Unable to allocate 745. GiB"),
    (pa.ArrowInvalid("Could not convert 'a' with type str\n/arrow/cpp/src/arrow/x.cc:12  Convert()"), 1,
     "cannot read the input: Could not convert 'a' with type str"),
    (TypeError("'NoneType' object is not subscriptable"), 3, "unexpected TypeError: 'NoneType' object"),
], ids=["memory", "arrow", "bug"])
def test_any_error_is_one_line_without_debug(items_file_small, tmp_path, capsys, monkeypatch, error, code, words):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(jobs, "similar", fail)
    args = ["similar", items_file_small, "-o", str(tmp_path / "o.parquet")]
    assert main(args) == code
    assert words in one_error_line(capsys.readouterr().err, "similar")
    assert main([*args, "--debug"]) == code
    assert "Traceback" in capsys.readouterr().err


# --------------------------------------------------------------------------- more of the same, found by probing
def test_every_bit_flip_of_the_ids_file_is_refused_by_the_check(string_index):
    """All bits, not a sample, through the check query and info run (the index is loaded once)."""
    index = string_index[0]
    sidecar = index + jobs.IDS_SUFFIX
    recorded = sparknn.load(index).side_files[jobs.IDS_ROLE]
    with open(sidecar, "rb") as f:
        original = f.read()
    assert recorded.size == len(original)
    right = jobs._read_verified_ids(sidecar, recorded, index, N)
    assert right.to_pylist() == [f"item-{i}" for i in range(N)]
    for bit in range(len(original) * 8):
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with open(sidecar, "wb") as f:
            f.write(damaged)
        with pytest.raises(sparknn.IndexFileError, match="fails its checksum") as raised:
            jobs._read_verified_ids(sidecar, recorded, index, N)
        assert repr(sidecar) in str(raised.value)


def test_a_broken_symbolic_link_in_an_input_directory_is_named(tmp_path, capsys):
    """Before: Arrow's listing skipped the dangling link and the job ran on the other files, exit 0."""
    src = tmp_path / "items"
    src.mkdir()
    _part(src / "part-0.parquet", pa.array([0, 1, 2, 3], pa.int64()))
    (src / "part-1.parquet").symlink_to(tmp_path / "moved-away.parquet")
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat"]) == 1
    line = one_error_line(capsys.readouterr().err, "similar")
    assert "broken symbolic link" in line and "part-1.parquet" in line and "moved-away.parquet" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_list_element_names_and_nullability_do_not_count_as_another_schema(tmp_path):
    """Spark writes list<element: float not null>, older pyarrow list<item: float>: the same vectors."""
    src = tmp_path / "items"
    src.mkdir()
    rows = [[1.0, 2.0], [2.0, 1.5]]
    spark_like = pa.list_(pa.field("element", pa.float32(), nullable=False))
    pq.write_table(pa.table({"id": pa.array([1, 2]), "vector": pa.array(rows, spark_like)}), src / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([3, 4]), "vector": pa.array(rows, pa.list_(pa.float32()))}),
                   src / "b.parquet", use_compliant_nested_type=False)
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat", "-k", "1", "-q"]) == 0
    assert pq.read_table(out).num_rows == 4


def test_a_damaged_delta_input_is_one_line(items_file_small, tmp_path, capsys):
    """Before: deltalake's error escaped as a traceback (with a Rust backtrace in its message)."""
    table = tmp_path / "table"
    assert main(["similar", items_file_small, "-o", str(table), "--format", "delta", "--index", "flat", "-q"]) == 0
    log = table / "_delta_log" / "00000000000000000000.json"
    log.write_text("{damaged")
    out = tmp_path / "out.parquet"
    assert main(["similar", str(table), "-o", str(out), "--index", "flat"]) == 1
    line = one_error_line(capsys.readouterr().err, "similar")
    assert f"cannot read the Delta table {str(table)!r}" in line and not out.exists()


def test_threads_are_capped_at_the_cores(items_file_small, tmp_path, monkeypatch):
    """Before: --threads 1000000 reached the engine, which sizes per-thread buffers by it (ivf: 23 GB,
    killed). Extra threads compute nothing faster; the answer is the same."""
    made = []
    real_build, real_load = jobs.build_streaming, jobs.load

    def build(batches, n, spec, **kwargs):
        made.append(spec.threads)
        return real_build(batches, n, spec, **kwargs)

    def load(path, mmap=True, threads=0, **kwargs):
        made.append(threads)
        return real_load(path, mmap=mmap, threads=threads, **kwargs)

    monkeypatch.setattr(jobs, "build_streaming", build)
    monkeypatch.setattr(jobs, "load", load)
    snn = str(tmp_path / "items.snn")
    assert main(["similar", items_file_small, "-o", str(tmp_path / "s.parquet"), "--threads", "1000000",
                 "--index", "flat", "-q"]) == 0
    assert main(["build", items_file_small, "-o", snn, "--threads", "1000000", "--index", "flat", "-q"]) == 0
    assert main(["query", snn, items_file_small, "-o", str(tmp_path / "q.parquet"), "--threads", "1000000",
                 "-q"]) == 0
    assert len(made) == 3 and all(1 <= t <= len(os.sched_getaffinity(0)) for t in made), made


def test_a_single_item_has_no_neighbours_and_no_error(tmp_path):
    src = tmp_path / "one.parquet"
    pq.write_table(vector_table(pa.array(["only"]), np.ones((1, 4), np.float32)), src)
    out = tmp_path / "out.parquet"
    assert main(["similar", str(src), "-o", str(out), "--index", "flat", "-k", str(2**40), "-q"]) == 0
    assert pq.read_table(out).to_pylist() == [{"id": "only", "neighbors": []}]


def test_example_refuses_what_memory_cannot_hold(tmp_path, capsys, monkeypatch):
    """Refused up front with the numbers, instead of being killed half-way through generating."""
    from sparknn import cli

    monkeypatch.setattr(cli, "available_memory", lambda: 64 << 20)
    out = tmp_path / "big.parquet"
    assert main(["example", "-o", str(out), "--n", "1000000", "--dim", "64"]) == 2
    line = one_error_line(capsys.readouterr().err, "example")
    assert "GiB of memory" in line and "0.1 GiB is available" in line and not out.exists()
    assert main(["example", "-o", str(out), "--n", "100", "--dim", "4", "-q"]) == 0  # small ones still work


def test_a_rust_panic_is_one_line(items_file_small, tmp_path, capsys, monkeypatch):
    """pyo3 raises a Rust panic as PanicException, a BaseException: it must not escape as a traceback."""
    class PanicException(BaseException):
        pass

    def fail(*args, **kwargs):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(jobs, "similar", fail)
    assert main(["similar", items_file_small, "-o", str(tmp_path / "o.parquet")]) == 3
    assert "unexpected PanicException: called `Option::unwrap()`" in one_error_line(capsys.readouterr().err,
                                                                                    "similar")


@pytest.mark.parametrize("kind", ["fifo", "link to a device", "fifo as the ids file"])
def test_overwrite_never_replaces_a_device_or_pipe(items_file_small, tmp_path, capsys, kind):
    """Before: `-o /dev/null --overwrite` renamed a Parquet file over /dev/null (and `-o /dev/stdout`
    over the link). Tried here only on paths inside tmp_path: a FIFO, and a link to /dev/null,
    whose replacement would replace the link, never the device."""
    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
        args = ["similar", items_file_small, "-o", str(target)]
    elif kind == "link to a device":
        target = tmp_path / "stdout"
        target.symlink_to("/dev/null")
        args = ["similar", items_file_small, "-o", str(target)]
    else:
        target = tmp_path / "items.snn.ids.parquet"
        os.mkfifo(target)
        args = ["build", items_file_small, "-o", str(tmp_path / "items.snn")]
    assert main([*args, "--overwrite", "--index", "flat"]) == 2
    line = one_error_line(capsys.readouterr().err, args[0])
    assert ("a named pipe" if "fifo" in kind else "a character device") in line, line
    if kind == "link to a device":
        assert target.is_symlink() and os.readlink(target) == "/dev/null"
    else:
        assert target.is_fifo()
    assert leftovers(tmp_path) == [] and not (tmp_path / "items.snn").exists()


@pytest.mark.parametrize("where", ["input", "in the input directory", "index", "queries"])
def test_a_pipe_is_never_opened_or_skipped(items_file_small, tmp_path, capsys, where):
    """Before: a FIFO given as the index hung in open() until killed (then a KeyboardInterrupt
    traceback); a FIFO inside an input directory was skipped by Arrow's listing (exit 0 on fewer
    items); a FIFO as the input gave "cannot read input 'p' as Parquet: p"."""
    pipe = tmp_path / "pipe.parquet"
    snn = str(tmp_path / "items.snn")
    assert main(["build", items_file_small, "-o", snn, "--index", "flat", "-q"]) == 0
    out = str(tmp_path / "out.parquet")
    if where == "in the input directory":
        folder = tmp_path / "items"
        folder.mkdir()
        shutil.copyfile(items_file_small, folder / "part-0.parquet")
        pipe = folder / "part-1.parquet"
        args = ["similar", str(folder), "-o", out, "--index", "flat"]
    elif where == "input":
        args = ["similar", str(pipe), "-o", out, "--index", "flat"]
    elif where == "index":
        args = ["query", str(pipe), items_file_small, "-o", out]
    else:
        args = ["query", snn, str(pipe), "-o", out]
    os.mkfifo(pipe)
    capsys.readouterr()
    with _writer_waiting_on(pipe):  # code that opens the pipe gets an empty stream, not a hang
        assert main(args) == 1
    line = one_error_line(capsys.readouterr().err, args[0])
    assert "is a named pipe" in line and pipe.name in line, line
    assert not os.path.exists(out) and pipe.is_fifo()


@contextmanager
def _writer_waiting_on(pipe):
    """A thread that opens ``pipe`` for writing and closes it at once: a reader that opens the pipe
    sees end-of-file instead of blocking forever. Released at the end by holding the read side open
    until the writer is done: a writer that had not reached its open() when a read side was opened
    and closed at once blocked for ever (a CI run hung here)."""
    thread = threading.Thread(target=lambda: os.close(os.open(pipe, os.O_WRONLY)), daemon=True)
    thread.start()
    try:
        yield
    finally:
        while thread.is_alive():
            try:
                reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting writer go
            except OSError:
                break
            try:
                thread.join(0.05)
            finally:
                os.close(reader)
        thread.join()


def test_an_interrupt_while_an_error_is_reported_is_still_clean(items_file_small, tmp_path, capsys, monkeypatch):
    """SIGTERM interrupts a blocking open (EINTR, an IndexIOError) and its handler then raises
    KeyboardInterrupt inside main's except clause: before, that escaped as two tracebacks."""
    from sparknn import cli

    def fail(*args, **kwargs):
        raise sparknn.IndexIOError("cannot open 'x': Interrupted system call")

    def interrupted(exc):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "similar", fail)
    monkeypatch.setattr(cli, "one_line", interrupted)
    assert main(["similar", items_file_small, "-o", str(tmp_path / "o.parquet")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["similar", "query"])
def test_an_id_column_called_neighbors_is_refused(items, tmp_path, capsys, command):
    """Before: exit 0 and an output with two columns named "neighbors", which pq.read_table refuses."""
    src = tmp_path / "items.parquet"
    pq.write_table(items.rename_columns(["neighbors", "vector"]), src)
    out = tmp_path / "out.parquet"
    if command == "similar":
        args = ["similar", str(src), "-o", str(out), "--index", "flat", "--id-col", "neighbors"]
    else:
        snn = str(tmp_path / "items.snn")
        assert main(["build", str(src), "-o", snn, "--index", "flat", "--id-col", "neighbors", "-q"]) == 0
        args = ["query", snn, str(src), "-o", str(out), "--id-col", "neighbors"]
    assert main(args) == 2
    assert "two columns of that name" in one_error_line(capsys.readouterr().err, command)
    assert not out.exists()
