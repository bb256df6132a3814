"""Row groups of a dense vector column decoded page by page into float32 matrices.

Arrow's Parquet reader decodes a list column on one core per column chunk and spends most of it
on the levels of every value (list offsets, validity bitmaps, a copy): a 50k-row group of
Fashion-MNIST (784 floats a row) took 0.45-0.7 s, a quarter of the whole self-join. Here the
chunk's pages are decompressed by Arrow's codecs and decoded by the engine
(``_core.decode_vector_page_*``), which only checks the levels against the matrix's shape and puts
each page's values where their position says, so the pages of one row group are decoded on every
core side by side.

Only what that covers takes this path: a list of float32 (physical FLOAT, one level of
repetition), no null vector or element, every row the same length, pages v1 or v2 with PLAIN,
dictionary or BYTE_STREAM_SPLIT values and a codec Arrow has. Anything else, and any page that
does not decode or whose checksum differs, leaves that row group to Arrow's reader, whose errors
say what is wrong: the two paths give the same floats (tests/test_vector_pages.py)."""
from __future__ import annotations

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


@dataclass(frozen=True)
class ChunkSource:
    """Where one row group's vector column is: a file (on ``filesystem``, None: the local one),
    the top-level column's name and the row group."""

    path: str
    column: str
    group: int
    filesystem: object = None


def _leaf(parquet: pq.ParquetFile, column: str):
    """The Parquet leaf column of a list<float32> column and its index, else None."""
    meta = parquet.metadata
    leaves = [i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == column]
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


def _open(source: ChunkSource, out: np.ndarray) -> tuple | None:
    """The chunk of ``source`` read and its pages listed, or None when it is not one this path
    decodes into ``out`` (rows x dim)."""
    rows, dim = out.shape
    with pq.ParquetFile(source.path, filesystem=source.filesystem) as parquet:
        found = _leaf(parquet, source.column)
        if found is None or source.group >= parquet.metadata.num_row_groups:
            return None
        index, leaf = found
        group = parquet.metadata.row_group(source.group)
        chunk = group.column(index)
        if group.num_rows != rows or chunk.num_values != rows * dim or chunk.compression not in _CODECS:
            return None
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        size = chunk.total_compressed_size
        codec_name = _CODECS[chunk.compression]
    opener = source.filesystem.open_input_file if source.filesystem is not None else pa.OSFile
    with opener(source.path) as f:
        buffer = f.read_at(size, start)
    data = np.frombuffer(buffer, dtype=np.uint8)
    headers = _core.parquet_page_headers(data) if len(data) == size else None
    if headers is None:
        return None
    codec = pa.Codec(codec_name) if codec_name else None
    dictionary, pages, firsts, values = None, [], [], 0
    for page in headers:
        if page.type == _DICTIONARY_PAGE:
            if dictionary is not None or pages or page.encoding not in (_PLAIN, _PLAIN_DICTIONARY):
                return None
            body = _decompress(codec, _page_bytes(data, page), page.uncompressed_size)
            if body is None or len(body) < 4 * page.num_values:
                return None
            dictionary = np.frombuffer(body, dtype=np.float32, count=page.num_values)
            if page.has_crc and zlib.crc32(_page_bytes(data, page)) != page.crc:
                return None
        elif page.type in (_DATA_PAGE, _DATA_PAGE_V2):
            pages.append(page)
            firsts.append(values)
            values += page.num_values
    if values != rows * dim:
        return None
    return data, pages, firsts, codec, dictionary, leaf.max_definition_level


def _page_bytes(data: np.ndarray, page) -> np.ndarray:
    return data[page.offset:page.offset + page.compressed_size]


def _decode_page(opened: tuple, page, first: int, out: np.ndarray) -> bool:
    data, _, _, codec, dictionary, max_def = opened
    raw = _page_bytes(data, page)
    if page.has_crc and zlib.crc32(raw) != page.crc:
        return False  # Arrow's reader says which page of which column
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


def decode_row_groups(sources: list[ChunkSource | None], outs: list[np.ndarray], threads: int) -> list[bool]:
    """Decodes each source's row group into its ``out`` (float32 [rows, dim], C-contiguous, rows
    the group's), the pages of each on ``threads`` threads side by side; the next group's chunk is
    read while a group's pages are decoded, so at most two chunks' bytes are held. Answers which
    were decoded: an ``out`` not decoded may hold some of its values and is to be read with
    Arrow. A source None is skipped."""
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
            opened = future.result()
            pending = open_next(i + 1)
            if opened is None:
                continue
            pages, firsts = opened[1], opened[2]
            decoded = [pool.submit(_quietly, _decode_page, opened, page, first, outs[i])
                       for page, first in zip(pages, firsts)]
            done[i] = all([f.result() is True for f in decoded])
    return done
