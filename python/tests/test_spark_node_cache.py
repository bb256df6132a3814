"""The executors' cache of files received as chunk rows (node_cache) and the chunk assembly under
it (chunk_files): content keys, verification, any arrival order, the size bound."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyspark")
from sparknn import integrity
from sparknn.errors import IndexFileError
from sparknn.spark import chunk_files, node_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    return tmp_path / "sparknn-cache"


def _file(tmp_path, name, size, seed):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / name).write_bytes(data)
    return data, integrity.digest(str(tmp_path / name))


def _chunks(data, size=1000):
    return [(o, data[o:o + size]) for o in range(0, max(len(data), 1), size)]


def test_a_file_arriving_in_any_order_is_cached_whole_and_verified(cache, tmp_path):
    data, digest = _file(tmp_path, "src", 4500, 1)
    with node_cache.Receiver({"shard-0.snn": digest}) as receiver:
        chunks = _chunks(data)
        for offset, piece in reversed(chunks[1:]):
            assert receiver.add("shard-0.snn", offset, piece) is None
        assert receiver.missing() == ["shard-0.snn"]
        path = receiver.add("shard-0.snn", *chunks[0])
    assert path == str(cache / f"{digest.crc32c:08x}-4500-shard-0.snn")
    assert Path(path).read_bytes() == data
    assert [n for n in os.listdir(cache) if n.startswith(".")] == [], "no incoming directory is left behind"
    # Another task on the node finds it and takes no chunk.
    with node_cache.Receiver({"shard-0.snn": digest}) as again:
        assert again.missing() == [] and again.add("shard-0.snn", 0, b"ignored") == path


def test_a_damaged_chunk_fails_the_check_and_caches_nothing(cache, tmp_path):
    data, digest = _file(tmp_path, "src", 3000, 2)
    bad = bytearray(data)
    bad[1500] ^= 1
    with node_cache.Receiver({"shard-0.snn": digest}) as receiver:
        for offset, piece in _chunks(bytes(bad))[:-1]:
            receiver.add("shard-0.snn", offset, piece)
        with pytest.raises(IndexFileError, match="checksum"):
            receiver.add("shard-0.snn", *_chunks(bytes(bad))[-1])
    assert node_cache.lookup("shard-0.snn", digest) is None


def test_a_model_saved_again_with_other_bytes_is_never_served_stale(cache, tmp_path):
    old, old_digest = _file(tmp_path, "a", 2000, 3)
    new, new_digest = _file(tmp_path, "b", 2000, 4)
    for data, digest in ((old, old_digest), (new, new_digest)):
        with node_cache.Receiver({"shard-0.snn": digest}) as receiver:
            for offset, piece in _chunks(data):
                receiver.add("shard-0.snn", offset, piece)
    assert Path(node_cache.lookup("shard-0.snn", new_digest)).read_bytes() == new
    assert Path(node_cache.lookup("shard-0.snn", old_digest)).read_bytes() == old


def test_the_cache_keeps_to_its_bound_sparing_recent_files(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKNN_NODE_CACHE_BYTES", "5000")
    monkeypatch.setenv("SPARKNN_NODE_CACHE_GRACE", "0")
    digests = []
    for i in range(4):
        data, digest = _file(tmp_path, f"f{i}", 2000, 10 + i)
        with node_cache.Receiver({f"part-{i}": digest}) as receiver:
            for offset, piece in _chunks(data):
                receiver.add(f"part-{i}", offset, piece)
        digests.append(digest)
        past = time.time() - 100 + i  # older files were used earlier
        os.utime(node_cache.path_of(f"part-{i}", digest), (past, past))
    node_cache.evict()
    kept = [i for i, d in enumerate(digests) if os.path.exists(node_cache.path_of(f"part-{i}", d))]
    assert kept == [2, 3], "least recently used files go first, down to the bound"
    # Files used within the grace period stay even over the bound.
    assert node_cache.evict(limit=0, grace=3600) == []


def test_the_assembler_names_what_is_not_whole(tmp_path):
    with chunk_files.Assembler(str(tmp_path), {"a": 10, "b": 0}) as files:
        files.add("a", 0, b"01234")
        assert not files.whole("a") and "a has 5 of 10 bytes" in files.problem()
        files.add("a", 5, b"56789")
        assert files.whole("a") and "b has 0 of 0 bytes" in files.problem(), "an empty file needs its chunk"
        files.add("b", 0, b"")
        assert files.problem() is None
        files.add("a", 8, b"xyz")
        assert "outside" in files.problem()
    with pytest.raises(IndexFileError, match="not a plain file name"):
        chunk_files.Assembler(str(tmp_path), {}).add("../x", 0, b"", 0)
