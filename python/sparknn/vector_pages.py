"""Row groups of a dense vector column decoded page by page into float32 matrices.

Arrow's Parquet reader decodes a list column on one core per column chunk and spends most of it
on the levels of every value (list offsets, validity bitmaps, a copy): a 50k-row group of
Fashion-MNIST (784 floats a row) took 0.45-0.7 s, a quarter of the whole self-join. Here each
page is read by the thread that decodes it, decompressed by Arrow's codecs and decoded by the
engine (``_core.decode_vector_page_*``), which only checks the levels against the matrix's shape
and puts the page's values where their position says: the pages of one row group are decoded on
every core side by side (0.07-0.1 s).

Only what that covers takes this path: a local file, a list of float32 (physical FLOAT, one
level of repetition), no null vector or element, every row the same length, pages v1 or v2 with
PLAIN, dictionary or BYTE_STREAM_SPLIT values, uncompressed, snappy or zstd. Anything else, and
any page that does not decode or whose checksum differs, leaves that row group to Arrow's
reader, whose errors say what is wrong: the two paths give the same floats
(tests/test_vector_pages.py)."""
from __future__ import annotations

import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparknn import _core

# Parquet's codec names (ColumnChunkMetaData.compression) decompressed here by Arrow's codecs:
# those whose data says how long it decompresses to (_declared_size), since pyarrow's
# Codec.decompress returns the buffer it was asked for however much of it was written. The
# others (GZIP, BROTLI, LZ4, whose two Parquet framings pyarrow names alike) are Arrow's to read.
_CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "ZSTD": "zstd"}
_DICTIONARY_PAGE, _DATA_PAGE, _DATA_PAGE_V2 = 2, 0, 3
_PLAIN, _PLAIN_DICTIONARY = 0, 2
_HEADER_BYTES = 1024  # read for a page header, and 64 times that when it is longer


@dataclass(frozen=True)
class ChunkSource:
    """Where one row group's vector column is: a file (on ``filesystem``, None: the local one),
    the top-level column's name and the row group."""

    path: str
    column: str
    group: int
    filesystem: object = None


def leaf_columns(meta: pq.FileMetaData, column: str) -> list[int]:
    """The indexes of the Parquet leaf columns under top-level column ``column``."""
    return [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == column]


def _leaf(parquet: pq.ParquetFile, column: str):
    """The Parquet leaf column of a list<float32> column and its index, else None."""
    meta = parquet.metadata
    leaves = leaf_columns(meta, column)
    if len(leaves) != 1:
        return None
    leaf = meta.schema.column(leaves[0])
    try:
        typ = parquet.schema_arrow.field(column).type
    except KeyError:
        return None
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)):
        return None
    if typ.value_type != pa.float32() or leaf.physical_type != "FLOAT" or leaf.max_repetition_level != 1:
        return None
    return leaves[0], leaf


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at
    return -1, at


def _declared_size(codec: str, head: bytes) -> int:
    """The decompressed length compressed data declares (snappy's preamble, zstd's frame content
    size), -1 when it declares none. Both decompressors then check their output against it."""
    if codec == "snappy":
        return _varint(head, 0)[0]
    if len(head) < 5 or head[:4] != b"\x28\xb5\x2f\xfd":  # a zstd frame
        return -1
    descriptor = head[4]
    single_segment, dictionary_id = descriptor >> 5 & 1, (0, 1, 2, 4)[descriptor & 3]
    size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    at = 5 + (0 if single_segment else 1) + dictionary_id
    if not size_bytes or len(head) < at + size_bytes:
        return -1
    return int.from_bytes(head[at:at + size_bytes], "little") + (256 if size_bytes == 2 else 0)


def _decompress(codec: pa.Codec | None, raw: np.ndarray, size: int) -> np.ndarray | None:
    """``raw`` decompressed, None unless it decompresses to exactly ``size`` bytes."""
    if codec is None:
        return raw if len(raw) == size else None
    if _declared_size(codec.name, bytes(raw[:32])) != size:
        return None
    return np.frombuffer(codec.decompress(raw, decompressed_size=size), dtype=np.uint8)


@dataclass
class _Chunk:
    """A column chunk's data pages, to be read (``fd``) and decoded one by one."""

    fd: int
    pages: list  # (header, the page's offset in the file, its first value in the chunk)
    codec: pa.Codec | None
    dictionary: np.ndarray | None
    max_definition_level: int

    def close(self) -> None:
        os.close(self.fd)


def _local_path(source: ChunkSource) -> str | None:
    """The source's path on the local file system (pread from every thread), else None."""
    if source.filesystem is None:
        return source.path
    from pyarrow.fs import LocalFileSystem

    return source.path if isinstance(source.filesystem, LocalFileSystem) else None


def _header(fd: int, at: int, end: int):
    """The page header at ``at`` (None when there is none before ``end``): most take a few dozen
    bytes, statistics of long binaries more."""
    for window in (_HEADER_BYTES, 64 * _HEADER_BYTES):
        head = os.pread(fd, min(window, end - at), at)
        page = _core.parquet_page_header(np.frombuffer(head, dtype=np.uint8))
        if page is not None or len(head) == end - at:
            return page
    return None


def _open(source: ChunkSource, out: np.ndarray) -> _Chunk | None:
    """The chunk of ``source`` with its pages listed and its dictionary read, or None when it is
    not one this path decodes into ``out`` (rows x dim). Only the page headers are read here."""
    rows, dim = out.shape
    path = _local_path(source)
    if path is None:
        return None
    with pq.ParquetFile(path) as parquet:
        found = _leaf(parquet, source.column)
        if found is None or source.group >= parquet.metadata.num_row_groups:
            return None
        index, leaf = found
        group = parquet.metadata.row_group(source.group)
        meta = group.column(index)
        if group.num_rows != rows or meta.num_values != rows * dim or meta.compression not in _CODECS:
            return None
        at = meta.data_page_offset
        if meta.has_dictionary_page and 0 < meta.dictionary_page_offset < at:
            at = meta.dictionary_page_offset
        end = at + meta.total_compressed_size
        codec_name = _CODECS[meta.compression]
    codec = pa.Codec(codec_name) if codec_name else None
    chunk = _Chunk(os.open(path, os.O_RDONLY), [], codec, None, leaf.max_definition_level)
    try:
        values = 0
        while at < end:
            page = _header(chunk.fd, at, end)
            if page is None or page.offset + page.compressed_size > end - at:
                return None
            body_at, at = at + page.offset, at + page.offset + page.compressed_size
            if page.type == _DICTIONARY_PAGE:
                if chunk.dictionary is not None or chunk.pages or page.encoding not in (_PLAIN, _PLAIN_DICTIONARY):
                    return None
                raw = _page_bytes(chunk.fd, page, body_at)
                body = None if raw is None else _decompress(codec, raw, page.uncompressed_size)
                if body is None or len(body) < 4 * page.num_values:
                    return None
                chunk.dictionary = np.frombuffer(body, dtype=np.float32, count=page.num_values)
            elif page.type in (_DATA_PAGE, _DATA_PAGE_V2):
                chunk.pages.append((page, body_at, values))
                values += page.num_values
        if values != rows * dim:
            return None
        opened, chunk = chunk, None
        return opened
    finally:
        if chunk is not None:
            chunk.close()


def _page_bytes(fd: int, page, at: int) -> np.ndarray | None:
    """A page's bytes as stored, None when the file ends first or its CRC-32 differs (Arrow's
    reader names a page whose checksum differs)."""
    raw = np.frombuffer(os.pread(fd, page.compressed_size, at), dtype=np.uint8)
    if len(raw) != page.compressed_size or (page.has_crc and zlib.crc32(raw) != page.crc):
        return None
    return raw


def _decode_page(chunk: _Chunk, page, at: int, first: int, out: np.ndarray) -> bool:
    raw = _page_bytes(chunk.fd, page, at)
    if raw is None:
        return False
    codec, dictionary, max_def = chunk.codec, chunk.dictionary, chunk.max_definition_level
    if page.type == _DATA_PAGE:
        body = _decompress(codec, raw, page.uncompressed_size)
        return body is not None and _core.decode_vector_page_v1(page, body, first, out, dictionary, max_def)
    levels = page.repetition_levels_bytes + page.definition_levels_bytes
    if levels > len(raw):
        return False
    values = _decompress(codec if page.is_compressed else None, raw[levels:], page.uncompressed_size - levels)
    return values is not None and _core.decode_vector_page_v2(page, raw[:levels], values, first, out, dictionary,
                                                              max_def)


def _quietly(call: Callable, *args):
    """call(*args), or None when it raises: a chunk this path cannot read is Arrow's to read."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - any failure here only means "read it with Arrow"
        return None


def decode_row_groups(sources: list[ChunkSource | None], outs: list[np.ndarray], threads: int,
                      progress: Callable[[int], None] | None = None) -> list[bool]:
    """Decodes each source's row group into its ``out`` (float32 [rows, dim], C-contiguous, rows
    the group's), the pages of each on ``threads`` threads side by side, each page read from the
    file as it is decoded (a page's bytes at a time, not a chunk's; the next group's headers are
    read while a group's pages are decoded). Answers which were decoded: an ``out`` not decoded
    may hold some of its values and is to be read with Arrow. A source None (or not on the local
    file system) is skipped. ``progress(rows)`` is called, in this thread, as each is decoded."""
    done = [False] * len(sources)
    if not sources:
        return done
    with ThreadPoolExecutor(max(1, threads)) as pool:
        def open_next(i: int) -> tuple[int, Future] | None:
            for j in range(i, len(sources)):
                if sources[j] is not None:
                    return j, pool.submit(_quietly, _open, sources[j], outs[j])
            return None

        pending = open_next(0)
        while pending is not None:
            i, future = pending
            chunk = future.result()
            pending = open_next(i + 1)
            if chunk is None:
                continue
            try:
                decoded = [pool.submit(_quietly, _decode_page, chunk, page, at, first, outs[i])
                           for page, at, first in chunk.pages]
                done[i] = all([f.result() is True for f in decoded])
            finally:
                chunk.close()
            if done[i] and progress is not None:
                progress(len(outs[i]))
    return done
