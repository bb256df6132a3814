"""sparknn.integrity: the CRC-32C digests that side files are checked against."""

import numpy as np
import pytest

from sparknn import integrity
from sparknn.errors import IndexFileError


def test_crc32c_known_value_and_chunking(monkeypatch):
    assert integrity.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    whole = integrity.crc32c(data)
    monkeypatch.setattr(integrity, "_CHUNK", 7)
    assert integrity.crc32c(data) == whole
    assert integrity.crc32c(data[500:], integrity.crc32c(data[:500])) == whole


def test_verify_names_the_file(tmp_path):
    path = tmp_path / "ids-0.arrow"
    path.write_bytes(b"abcdef" * 100)
    good = integrity.digest(str(path))
    assert integrity.FileDigest.from_json(good.to_json()) == good
    integrity.verify(str(path), good, "id file")
    raw = bytearray(path.read_bytes())
    raw[17] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="id file .*ids-0.arrow.* checksum"):
        integrity.verify(str(path), good, "id file")
    path.write_bytes(bytes(raw[:-1]))
    with pytest.raises(IndexFileError, match="truncated"):
        integrity.verify(str(path), good, "id file")
    path.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        integrity.verify(str(path), good, "id file")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    integrity.verify(str(empty), integrity.digest(str(empty)), "empty file")
