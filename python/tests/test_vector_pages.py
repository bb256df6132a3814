"""The page decoder of dense vector columns (sparknn.vector_pages) against Arrow's reader: the same
floats for every page layout Arrow writes, and every row group it does not cover (or whose bytes
are damaged) left to Arrow, never decoded differently."""
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparknn import vector_pages
from sparknn.inputs import hold_vectors, open_input
from sparknn.output import DataError
from sparknn.progress import Progress

ROWS, DIM = 300, 12


def vectors(rows=ROWS, dim=DIM, distinct=None, seed=0) -> np.ndarray:
    """float32 [rows, dim]: ``distinct`` values drawn again and again (dictionary pages), else all
    different (a dictionary outgrows its limit and the writer falls back to plain pages)."""
    rng = np.random.default_rng(seed)
    if distinct:
        return rng.choice(rng.standard_normal(distinct).astype(np.float32), size=(rows, dim))
    return rng.standard_normal((rows, dim)).astype(np.float32)


def write(path, x, list_type="list", row_group_size=None, **options) -> None:
    flat = pa.array(x.reshape(-1))
    if list_type == "fixed":
        column = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        offsets = pa.array(np.arange(0, x.size + 1, x.shape[1]), pa.int64() if list_type == "large" else pa.int32())
        column = (pa.LargeListArray if list_type == "large" else pa.ListArray).from_arrays(offsets, flat)
    pq.write_table(pa.table({"id": np.arange(len(x)), "vector": column}), path,
                   row_group_size=row_group_size, **options)


def decode(path, rows_per_group, dim=DIM) -> tuple[list[bool], np.ndarray]:
    """Every row group of the file decoded by the page decoder into one matrix."""
    out = np.full((sum(rows_per_group), dim), np.nan, np.float32)
    sources, outs, first = [], [], 0
    for group, rows in enumerate(rows_per_group):
        sources.append(vector_pages.ChunkSource(str(path), "vector", group))
        outs.append(out[first:first + rows])
        first += rows
    return vector_pages.decode_row_groups(sources, outs, 2), out


def arrow_rows(path) -> np.ndarray:
    column = pq.read_table(path, columns=["vector"]).column("vector").combine_chunks()
    return np.asarray(column.flatten()).reshape(len(column), -1)


def groups_of(path) -> list[int]:
    meta = pq.read_metadata(path)
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


LAYOUTS = list(itertools.product(
    ["none", "snappy", "zstd"],  # compression
    ["1.0", "2.0"],  # data page version
    [("dictionary", 7), ("dictionary", None), ("plain", None), ("byte_stream_split", None)],
))


@pytest.mark.parametrize("compression,page_version,values", LAYOUTS)
def test_every_layout_arrow_writes_decodes_to_arrows_floats(tmp_path, compression, page_version, values):
    """Pages of ~1 KB (a row split across pages, many pages a group), three row groups, page
    checksums: each compression, page version and value encoding (dictionary of 7 values, a
    dictionary that outgrows its limit and falls back to plain pages, plain, byte stream split)."""
    encoding, distinct = values
    x = vectors(distinct=distinct)
    path = tmp_path / "v.parquet"
    options = {"use_dictionary": encoding == "dictionary", "dictionary_pagesize_limit": 512}
    if encoding == "byte_stream_split":
        options["column_encoding"] = {"vector.list.element": "BYTE_STREAM_SPLIT", "id": "PLAIN"}
    write(path, x, row_group_size=120, compression=compression, data_page_version=page_version,
          data_page_size=1000, write_page_checksum=True, **options)
    done, got = decode(path, groups_of(path))
    assert done == [True, True, True]
    assert np.array_equal(got, arrow_rows(path)) and np.array_equal(got, x)


@pytest.mark.parametrize("list_type", ["list", "large", "fixed"])
def test_each_arrow_list_type_of_float32(tmp_path, list_type):
    x = vectors(dim=1) if list_type == "list" else vectors()  # one value a row: every value starts a row
    path = tmp_path / "v.parquet"
    write(path, x, list_type, data_page_size=200)
    done, got = decode(path, groups_of(path), dim=x.shape[1])
    assert done == [True] and np.array_equal(got, x)


@pytest.mark.parametrize("compression", ["gzip", "brotli", "lz4"])
def test_codecs_whose_data_declares_no_length_are_left_to_arrow(tmp_path, compression):
    """pyarrow's Codec.decompress hands back the buffer it was asked for however much it wrote:
    only codecs that declare their length (snappy, zstd) are decompressed here."""
    x = vectors()
    path = tmp_path / "v.parquet"
    write(path, x, compression=compression)
    assert decode(path, [ROWS])[0] == [False]
    inp = open_input(str(path), "id", "vector")
    assert hold_vectors(inp, Progress(False), threads=2)
    assert np.array_equal(np.concatenate([v for _, v in inp.held]), x)


def refused(path, rows, dim=DIM) -> bool:
    done, _ = decode(path, [rows], dim)
    return done == [False]


def test_what_is_not_dense_rows_of_float32_is_left_to_arrow(tmp_path):
    rows = [[1.0, 2.0, 3.0]] * 4
    cases = {
        "null vector": pa.array(rows[:3] + [None], pa.list_(pa.float32())),
        "null element": pa.array(rows[:3] + [[1.0, None, 3.0]], pa.list_(pa.float32())),
        "ragged": pa.array(rows[:3] + [[1.0, 2.0]], pa.list_(pa.float32())),
        "empty": pa.array(rows[:3] + [[]], pa.list_(pa.float32())),
        "double": pa.array(rows, pa.list_(pa.float64())),
        "half": pa.array([np.float16([1, 2, 3])] * 4, pa.list_(pa.float16())),
        "vector struct": pa.array([{"type": 1, "values": r} for r in rows]),
        "two lists deep": pa.array([[r] for r in rows], pa.list_(pa.list_(pa.float32()))),
    }
    for what, column in cases.items():
        path = tmp_path / f"{what}.parquet"
        pq.write_table(pa.table({"vector": column}), path)
        assert refused(path, 4, 3), what
    # the same file as it should be decodes
    path = tmp_path / "dense.parquet"
    pq.write_table(pa.table({"vector": pa.array(rows, pa.list_(pa.float32()))}), path)
    assert not refused(path, 4, 3)
    # a matrix of another shape than the file's rows
    assert refused(path, 4, 2) and refused(path, 4, 4)
    done = vector_pages.decode_row_groups([vector_pages.ChunkSource(str(path), "vector", 0)],
                                          [np.empty((3, 3), np.float32)], 1)
    assert done == [False]


def test_a_page_whose_checksum_differs_is_left_to_arrow_which_refuses_it(tmp_path):
    x = vectors()
    path = tmp_path / "v.parquet"
    write(path, x, compression="none", use_dictionary=False, write_page_checksum=True, data_page_size=2000)
    data = bytearray(path.read_bytes())
    meta = pq.read_metadata(path).row_group(0).column(1)
    value = x[ROWS // 2, 3].tobytes()
    at = data.index(value, meta.data_page_offset)  # a value in a page in the middle of the chunk
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    assert refused(path, ROWS)
    inp = open_input(str(path), "id", "vector")
    with pytest.raises((DataError, OSError), match="(?i)crc|checksum"):
        hold_vectors(inp, Progress(False), threads=2)


@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
def test_damaged_chunks_decode_as_arrow_reads_them_or_are_left_to_it(tmp_path, page_version):
    """Bytes of the vector column's chunk changed one at a time (no checksums: a changed value is
    a different float to both readers): whenever the page decoder answers, Arrow reads the file and
    finds the same floats; else Arrow's reader has the file to itself."""
    x = vectors(rows=64, dim=6, distinct=5)
    path = tmp_path / "v.parquet"
    write(path, x, compression="snappy", data_page_version=page_version, data_page_size=300)
    good = path.read_bytes()
    meta = pq.read_metadata(path).row_group(0).column(1)
    start = min(meta.dictionary_page_offset or meta.data_page_offset, meta.data_page_offset)
    rng = np.random.default_rng(1)
    answered = 0
    for at in rng.integers(start, start + meta.total_compressed_size, size=400):
        damaged = bytearray(good)
        damaged[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        done, got = decode(path, [64], 6)
        if done == [True]:
            answered += 1
            assert np.array_equal(got, arrow_rows(path), equal_nan=True), f"byte {at}"
    assert answered  # some changes (in values) still decode


def test_a_read_counts_every_row_once_whichever_reader_decoded_it(tmp_path):
    """hold_vectors over a directory whose files take both paths (snappy: page by page; gzip:
    Arrow's reader): the rows in order and the progress bar told each row once."""
    from sparknn.progress import _Silent

    class Counted(Progress):
        def bar(self, total, desc, unit="rows"):
            self.last = _Silent()
            return self.last

    x = vectors(rows=900)
    (tmp_path / "d").mkdir()
    for i, compression in enumerate(["snappy", "gzip", "zstd"]):
        write(tmp_path / "d" / f"part-{i}.parquet", x[i * 300:(i + 1) * 300], row_group_size=100,
              compression=compression)
    for one_block in (True, False):
        inp, progress = open_input(str(tmp_path / "d"), "id", "vector"), Counted(False)
        assert hold_vectors(inp, progress, threads=2, one_block=one_block)
        assert progress.last.n == 900
        assert np.array_equal(np.concatenate([v for _, v in inp.held]), x)
