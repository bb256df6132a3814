"""Saving and loading index files: round trips, sharing, and damaged files.

The byte layout these tests poke at is the one docs/FORMAT.md documents; a
small reader written from that document checks that the two agree.
"""

import multiprocessing
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sparknn

METRICS = ["l2", "ip", "cosine"]
FIXTURES = Path(__file__).resolve().parents[2] / "cpp" / "tests" / "data"

# Header fields, as docs/FORMAT.md lists them.
VERSION_AT, KIND_AT, METRIC_AT, SECTIONS_AT, DIM_AT, COUNT_AT, SIZE_AT, TABLE_AT, CRC_AT = (
    8,
    12,
    16,
    20,
    24,
    32,
    40,
    48,
    60,
)
SECTION_IDS, SECTION_VECTORS = 3, 2


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) as FORMAT.md specifies it, bit by bit."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def sections(raw: bytes) -> dict:
    """{type: (offset, size, crc)} from the section table."""
    n = struct.unpack_from("<I", raw, SECTIONS_AT)[0]
    out = {}
    for i in range(n):
        kind, _, offset, size, crc, _ = struct.unpack_from("<IIQQII", raw, 64 + 32 * i)
        out[kind] = (offset, size, crc)
    return out


def reseal(raw: bytearray) -> None:
    n = struct.unpack_from("<I", raw, SECTIONS_AT)[0]
    struct.pack_into("<I", raw, CRC_AT, crc32c(bytes(raw[64 : 64 + 32 * n]), crc32c(bytes(raw[:CRC_AT]))))


def build(metric="l2", n=200, dim=12, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    index = sparknn.Index(dim, metric=metric, kind="flat", threads=1)
    index.add(rng.standard_normal((n, dim)).astype(np.float32), ids=ids)
    return index


def queries(dim=12, nq=15, seed=1):
    return np.random.default_rng(seed).standard_normal((nq, dim)).astype(np.float32)


@pytest.fixture
def saved(tmp_path):
    index = build(ids=np.arange(200, dtype=np.int64) * 5 + 3)
    path = tmp_path / "index.snn"
    index.save(path)
    return index, path


# ------------------------------------------------------------------- round trips


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_gives_identical_results(tmp_path, metric, mmap):
    index = build(metric, ids=np.arange(200) * 2 + 7)
    path = tmp_path / f"{metric}.snn"
    index.save(str(path))
    loaded = sparknn.load(path, mmap=mmap, threads=1)
    assert (loaded.dim, loaded.metric, loaded.kind, len(loaded)) == (12, metric, "flat", 200)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    q = queries()
    ids0, d0 = index.search(q, k=10)
    ids1, d1 = loaded.search(q, k=10)
    np.testing.assert_array_equal(ids1, ids0)
    np.testing.assert_array_equal(d1, d0)


def test_mmap_maps_the_file_and_read_mode_does_not(saved):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc (Linux)")
    _, path = saved
    copy = path.with_name("copy.snn")
    copy.write_bytes(path.read_bytes())
    mapped = sparknn.load(path, mmap=True)
    read = sparknn.load(copy, mmap=False)
    text = maps.read_text()
    assert str(path) in text
    assert str(copy) not in text
    assert len(mapped) == len(read) == 200


def test_ids_of_a_mapped_index_are_read_only(saved):
    loaded = sparknn.load(saved[1], mmap=True)
    with pytest.raises(ValueError):
        loaded.ids[0] = 1


def test_load_add_save_copies_on_write(saved, tmp_path):
    index, path = saved
    before = path.read_bytes()
    loaded = sparknn.load(path, mmap=True, threads=1)
    extra = queries(nq=20, seed=9)
    loaded.add(extra)
    assert path.read_bytes() == before, "adding to a mapped index must not write to its file"
    np.testing.assert_array_equal(loaded.ids[200:], np.arange(20) + index.ids.max() + 1)
    loaded.save(path)  # over the file it was mapped from
    again = sparknn.load(path)
    index.add(extra)
    q = queries(seed=4)
    np.testing.assert_array_equal(again.search(q, k=7)[0], index.search(q, k=7)[0])
    assert len(again) == 220


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "index.snn"
    build(n=50).save(path)
    reader = sparknn.load(path, mmap=True, threads=1)
    expected = reader.search(queries(), k=5)
    build(n=10, seed=3).save(path)
    assert len(sparknn.load(path)) == 10
    # The reader mapped the old file; the replacement did not touch it.
    np.testing.assert_array_equal(reader.search(queries(), k=5)[0], expected[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.snn"]


def test_save_without_sync_writes_the_same_file(tmp_path):
    """sync=False (scratch files) skips only the flush to disk: same bytes, same atomic rename."""
    index = build(n=50)
    index.save(tmp_path / "synced.snn")
    index.save(tmp_path / "scratch.snn", sync=False)
    assert (tmp_path / "synced.snn").read_bytes() == (tmp_path / "scratch.snn").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch.snn", "synced.snn"]


def test_save_into_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(OSError, match="cannot create"):
        build(n=5).save(tmp_path / "missing" / "index.snn")
    assert list(tmp_path.iterdir()) == []


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index file"):
        sparknn.load(tmp_path / "nope.snn")
    with pytest.raises(OSError, match="not a regular file"):
        sparknn.load(tmp_path)


def test_bytes_paths_and_nul_bytes(tmp_path):
    index = build(n=5)
    index.save(bytes(tmp_path / "b.snn"))  # os.fsencode'd paths, as open() takes them
    assert len(sparknn.load(bytes(tmp_path / "b.snn"))) == 5
    # the engine's C string would end at the NUL: the save would land at tmp_path / "a"
    with pytest.raises(ValueError, match="NUL byte"):
        index.save(str(tmp_path / "a") + "\0b.snn")
    with pytest.raises(ValueError, match="NUL byte"):
        sparknn.load(str(tmp_path / "b.snn") + "\0x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.snn"]


def test_load_of_a_named_pipe_fails_without_waiting(tmp_path):
    # open() of a FIFO waits for a writer: load hung forever (the CLI refuses pipes itself)
    os.mkfifo(tmp_path / "pipe.snn")
    code = f"import sparknn; sparknn.load({str(tmp_path / 'pipe.snn')!r})"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 1 and "is not a regular file" in child.stderr


def test_save_never_replaces_a_pipe_or_a_directory(tmp_path):
    # save renames over its path: as root, index.save("/dev/null") replaced the device with a file
    index = build(n=5)
    os.mkfifo(tmp_path / "pipe.snn")
    (tmp_path / "dir.snn").mkdir()
    for name, what in [("pipe.snn", "a device, pipe or socket"), ("dir.snn", "a directory")]:
        with pytest.raises(sparknn.IndexIOError, match=f"exists and is not a regular file \\({what}\\)"):
            index.save(tmp_path / name)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.snn").st_mode) and (tmp_path / "dir.snn").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.snn", "pipe.snn"]
    os.symlink(tmp_path / "pipe.snn", tmp_path / "link.snn")  # a link is replaced, its target kept
    index.save(tmp_path / "link.snn")
    assert len(sparknn.load(tmp_path / "link.snn")) == 5 and stat.S_ISFIFO(os.lstat(tmp_path / "pipe.snn").st_mode)


def _search_in_child(path, q):
    index = sparknn.load(path, mmap=True, threads=1)
    return index.search(q, k=8)


def test_processes_share_one_mapped_file(saved):
    index, path = saved
    q = queries()
    expected = index.search(q, k=8)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_search_in_child, [(str(path), q)] * 2)
    for ids, dist in results:
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(dist, expected[1])


# ------------------------------------------------------------------- the documented layout


def test_layout_matches_format_md(saved):
    index, path = saved
    raw = path.read_bytes()
    assert raw[:8] == b"SPARKNN\0"
    version, kind, metric, nsec = struct.unpack_from("<IIII", raw, VERSION_AT)
    dim, count, size = struct.unpack_from("<QQQ", raw, DIM_AT)
    assert (version, kind, metric) == (sparknn.FORMAT_VERSION, 1, 1)
    assert (dim, count, size) == (12, 200, len(raw))
    assert struct.unpack_from("<I", raw, TABLE_AT)[0] == 64
    header_crc = crc32c(raw[64 : 64 + 32 * nsec], crc32c(raw[:CRC_AT]))
    assert struct.unpack_from("<I", raw, CRC_AT)[0] == header_crc
    table = sections(raw)
    for offset, length, crc in table.values():
        assert offset % 64 == 0
        assert crc32c(raw[offset : offset + length]) == crc
    off, length, _ = table[SECTION_IDS]
    np.testing.assert_array_equal(np.frombuffer(raw, "<i8", count, off), index.ids)
    off, length, _ = table[SECTION_VECTORS]
    assert length == 200 * 12 * 4
    stored = np.frombuffer(raw, "<f4", 200 * 12, off).reshape(200, 12)
    np.testing.assert_array_equal(
        stored, np.random.default_rng(0).standard_normal((200, 12)).astype(np.float32)
    )


def read_expected(path):
    """The .expected file beside a fixture (format: cpp/tests/data/README.md)."""
    fields, params, qs, results = {}, {}, [], []
    for line in path.read_text().splitlines():
        key, *rest = line.split()
        if key == "query":
            qs.append([float(v) for v in rest])
        elif key == "result":
            results.append(rest)
        elif key == "param":
            params[rest[0]] = rest[1]
        elif key != "#":
            fields[key] = rest[0]
    ids = [[int(v) for v in r[0::2]] for r in results]
    dist = [[float(v) for v in r[1::2]] for r in results]
    return fields, params, np.array(qs, dtype=np.float32), ids, dist


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.snn")), ids=lambda p: p.name)
@pytest.mark.parametrize("mmap", [True, False])
def test_golden_fixtures_answer_as_recorded(fixture, mmap):
    fields, params, qs, ids, dist = read_expected(fixture.with_suffix(".expected"))
    index = sparknn.load(fixture, mmap=mmap)
    kind = fixture.name.split("_")[0]  # flat_..., hnsw_..., ivf_...
    assert (index.kind, index.metric, index.dim, len(index)) == (
        kind,
        fields["metric"],
        int(fields["dim"]),
        int(fields["count"]),
    )
    reported = {**index.params, "first_pass_dims": index.first_pass_dims}  # (a setting, not a build parameter)
    assert {name: str(reported[name]) for name in params} == params
    got_ids, got_dist = index.search(qs, k=int(fields["k"]))
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got_dist, dist, rtol=1e-5, atol=1e-5)


def test_golden_fixtures_cover_every_kind():
    kinds = {(p.name.split("_")[0], sparknn.load(p).storage) for p in FIXTURES.glob("*.snn")}
    assert kinds >= {(kind, storage) for kind in ("flat", "hnsw", "ivf") for storage in ("float32", "fp16", "bf16")}
    assert kinds >= {("ivf", "sq8"), ("ivf", "pq")}


# One small index of every kind and storage: (kind, options).
KINDS = {
    "flat": {},
    "flat-fp16": {"storage": "fp16"},
    "hnsw": {"M": 8, "ef_construction": 40, "ef_search": 20},
    "hnsw-bf16": {"M": 8, "ef_construction": 40, "ef_search": 20, "storage": "bf16"},
    "ivf-fp16": {"nlist": 8, "nprobe": 3, "storage": "fp16"},
    "ivf-float32": {"nlist": 8, "nprobe": 3},
    "ivf-sq8": {"nlist": 8, "nprobe": 3, "storage": "sq8"},
    "ivf-pq": {"nlist": 8, "nprobe": 3, "storage": "pq", "pq_m": 4},
    "ivf-pq-rerank": {"nlist": 8, "nprobe": 3, "storage": "pq", "pq_m": 4, "rerank": 3},
}
KIND_CODES = {"flat": 1, "hnsw": 2, "ivf": 3}  # docs/FORMAT.md, header offset 12


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("metric", METRICS)
def test_every_kind_round_trips(tmp_path, name, metric):
    kind = name.split("-")[0]
    rng = np.random.default_rng(3)
    index = sparknn.Index(12, metric=metric, kind=kind, threads=1, **KINDS[name])
    index.add(rng.standard_normal((300, 12)).astype(np.float32), ids=np.arange(300) * 3 + 11)
    path = tmp_path / "index.snn"
    index.save(path)
    raw = path.read_bytes()
    assert struct.unpack_from("<I", raw, KIND_AT)[0] == KIND_CODES[kind]
    q = queries()
    ids0, d0 = index.search(q, k=7)
    for mmap in (True, False):
        loaded = sparknn.load(path, mmap=mmap, threads=1)
        assert (loaded.kind, loaded.metric, loaded.dim, len(loaded)) == (kind, metric, 12, 300)
        assert loaded.params == index.params
        np.testing.assert_array_equal(loaded.ids, index.ids)
        ids1, d1 = loaded.search(q, k=7)
        np.testing.assert_array_equal(ids1, ids0)
        np.testing.assert_array_equal(d1, d0)
        # Saving what was loaded writes the same bytes: nothing is lost or reordered.
        again = tmp_path / f"again-{mmap}.snn"
        loaded.save(again)
        assert again.read_bytes() == raw


# ------------------------------------------------------------------- damaged and foreign files


def expect_file_error(path, match, verify=True):
    for mmap in (True, False):
        with pytest.raises(sparknn.IndexFileError, match=match) as info:
            sparknn.load(path, mmap=mmap, verify=verify)
        assert isinstance(info.value, ValueError)
        assert str(path) in str(info.value)


def test_verify_flag_checks_section_checksums(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    offset, size, _ = sections(raw)[SECTION_VECTORS]
    raw[offset + size // 2] ^= 0x10
    path.write_bytes(raw)
    expect_file_error(path, "checksum mismatch in section")
    # Structure is still validated with verify=False; only the data checksums are skipped.
    assert len(sparknn.load(path, verify=False)) == 200


@pytest.mark.parametrize("length", [0, 10, 63, 64, 100, 200, 1000, -1])
def test_truncated_files(saved, length):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[:length])
    expect_file_error(path, "shorter than the 64-byte header" if 0 <= length < 64 else "truncated")


def test_corrupted_header(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[DIM_AT] ^= 0x01
    path.write_bytes(raw)
    expect_file_error(path, "header checksum mismatch")


def test_trailing_bytes(saved):
    _, path = saved
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    expect_file_error(path, "trailing bytes")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 4096,
        np.random.default_rng(0).standard_normal(1024).astype(np.float32).tobytes(),  # like an Annoy file
        b"\x93NUMPY\x01\x00" + b" " * 120,
        b"id,vector\n" * 20,
    ],
    ids=["empty", "zeros", "raw-floats", "npy", "csv"],
)
def test_foreign_files(tmp_path, content):
    path = tmp_path / "foreign.snn"
    path.write_bytes(content)
    expect_file_error(path, "bad magic" if len(content) >= 64 else "shorter than the 64-byte header")


def test_newer_version_asks_to_upgrade(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, VERSION_AT, sparknn.FORMAT_VERSION + 1)
    path.write_bytes(raw)
    expect_file_error(path, "newer sparknn.*upgrade sparknn")


@pytest.mark.parametrize(
    "field,fmt,value,match",
    [
        (KIND_AT, "<I", 9, "unknown index kind 9"),
        (METRIC_AT, "<I", 7, "unknown metric 7"),
        (DIM_AT, "<Q", 0, "dimension 0"),
        (COUNT_AT, "<Q", 2**62, "more than a"),
        (COUNT_AT, "<Q", 201, "Ids section has"),
        (SIZE_AT, "<Q", 2**40, "truncated"),
    ],
)
def test_inconsistent_header_fields(saved, field, fmt, value, match):
    _, path = saved
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, field, value)
    reseal(raw)
    path.write_bytes(raw)
    expect_file_error(path, match)


def test_side_file_digests_round_trip(tmp_path):
    from sparknn import integrity

    index = sparknn.Index(dim=4, metric="l2", kind="flat")
    index.add(np.random.default_rng(0).standard_normal((10, 4), dtype=np.float32))
    ids = tmp_path / "x.snn.ids.parquet"
    ids.write_bytes(b"user ids" * 10)
    index.save(tmp_path / "x.snn", side_files={"ids": ids, "items": integrity.FileDigest(3, 0xABC)})
    loaded = sparknn.load(tmp_path / "x.snn")
    assert loaded.side_files == {"ids": integrity.digest(str(ids)), "items": integrity.FileDigest(3, 0xABC)}
    integrity.verify(str(ids), loaded.side_files["ids"], "id file")
    assert index.side_files == {}  # a new index was not loaded from a file
    with pytest.raises(sparknn.InvalidArgumentError, match="role"):
        index.save(tmp_path / "y.snn", side_files={"": ids})
    assert not (tmp_path / "y.snn").exists()
    fixture = FIXTURES / "flat_l2_sidefiles_v1.snn"
    assert sparknn.load(fixture).side_files == {"ids": integrity.FileDigest(1234, 0x0BADCAFE),
                                                "items": integrity.FileDigest(0, 0)}
