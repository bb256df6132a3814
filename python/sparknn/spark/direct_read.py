"""Reading a DataFrame's Parquet files on the driver with pyarrow, bypassing the JVM.

A driver build needs every (id, vector) on the driver. Collected through Spark, they are
decoded by a JVM job, converted to Arrow on the JVM heap and sent over a socket: at 500k x 100
that costs ~5 s and the JVM holds the data while it is sent. When the DataFrame is exactly a
scan of local Parquet files (``spark.read.parquet(path)``, at most a selection of columns: no
filter, limit, join or computed column), the same rows are in those files, and pyarrow reads
them in a fraction of that time with no job at all. Anything else, or any doubt (a column that
is not a plain list of numbers, a file pyarrow cannot read, a remote file system), falls back
to Spark's collection: the result is the same either way, only the speed differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame

from sparknn.arrow import PARQUET_READ, decoding_memory, vectors_to_numpy
from sparknn.errors import InvalidArgumentError
from sparknn.index import RowBlock
from sparknn.inputs import decode_side_by_side, row_group_vectors
from sparknn.vector_pages import ChunkSource, leaf_columns
from sparknn.spark import runtime
from sparknn.spark.layout import ARROW_ID_TYPES

log = logging.getLogger(__name__)

_PARQUET_FORMAT = "org.apache.spark.sql.execution.datasources.parquet.ParquetFileFormat"
# A file index that lists files and partition directories, nothing more (Delta's and other
# table formats' indexes apply deletion vectors or snapshots the files alone do not show).
_FILE_INDEXES = ("org.apache.spark.sql.execution.datasources.InMemoryFileIndex",)


@dataclass(frozen=True)
class ParquetScan:
    """Local Parquet files holding exactly the rows of a DataFrame, and its two columns' names."""

    paths: tuple[str, ...]
    id_col: str
    features: str
    rows: int


def _plain_columns(plan, names: set[str]) -> bool:
    """True when the projection passes each of ``names`` through unchanged (no alias, no cast)."""
    exprs = plan.projectList()
    passed = {exprs.apply(i).name() for i in range(exprs.size())
              if exprs.apply(i).getClass().getSimpleName() == "AttributeReference"}
    return names <= passed


def _relation_files(df: DataFrame, names: set[str]) -> list[str] | None:
    """The files of a DataFrame that is a Parquet file scan (perhaps projected), else None (also on
    Spark Connect: its plan is not at hand, and the client need not see the driver's files)."""
    if runtime.is_connect(df.sparkSession):
        return None
    plan = df._jdf.queryExecution().optimizedPlan()
    if plan.getClass().getSimpleName() == "Project":
        if not _plain_columns(plan, names):
            return None
        plan = plan.child()
    if plan.getClass().getSimpleName() != "LogicalRelation":
        return None
    relation = plan.relation()
    if relation.getClass().getSimpleName() != "HadoopFsRelation":
        return None
    if relation.fileFormat().getClass().getName() != _PARQUET_FORMAT:
        return None
    if relation.location().getClass().getName() not in _FILE_INDEXES:
        return None
    if names & set(relation.partitionSchema().fieldNames()):
        return None  # a value from the directory name, not the file
    return list(df.inputFiles())


def _local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else None


def _readable_types(schema: pa.Schema, id_col: str, features: str, id_type: str) -> bool:
    """The file has both columns by exact name, as types whose read equals Spark's."""
    if schema.get_field_index(id_col) < 0 or schema.get_field_index(features) < 0:
        return False  # missing, or the name appears twice
    ids = schema.field(id_col).type
    want = ARROW_ID_TYPES[id_type]
    if not (ids == want or (id_type == "string" and ids == pa.large_string())):
        return False
    vec = schema.field(features).type
    if not (pa.types.is_list(vec) or pa.types.is_large_list(vec) or pa.types.is_fixed_size_list(vec)):
        return False  # fixed_size_list: a file pyarrow wrote from a numpy matrix
    return pa.types.is_floating(vec.value_type) or pa.types.is_integer(vec.value_type)


def find_scan(df: DataFrame, id_col: str, features: str, id_type: str) -> ParquetScan | None:
    """A ParquetScan when ``df``'s rows can be read from its files directly, else None.

    Reads only the files' footers. Never raises: whatever cannot be proven the same as
    Spark's read (Spark Connect, another source, a remote file system, an odd type) is None.
    """
    try:
        uris = _relation_files(df, {id_col, features})
    except Exception as e:  # noqa: BLE001 - no JVM plan (Spark Connect) or an unfamiliar one
        log.debug("no direct Parquet read: %s", e)
        return None
    if uris is None:
        return None
    paths = [_local_path(u) for u in uris]
    if not paths or None in paths:
        return None
    rows, types = 0, set()
    try:
        for path in paths:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
            if not _readable_types(schema, id_col, features, id_type):
                return None
            types.add((schema.field(id_col).type, schema.field(features).type))
            rows += meta.num_rows
    except (OSError, pa.ArrowException) as e:
        log.debug("no direct Parquet read of %s: %s", paths, e)
        return None
    if len(types) > 1:
        return None  # files of different types: Spark's schema merging decides, not us
    return ParquetScan(tuple(paths), id_col, features, rows)


def first_dim(scan: ParquetScan) -> int:
    """The length of the first non-null vector (0 if none): reads one row group's vectors."""
    for path in scan.paths:
        pf = pq.ParquetFile(path)
        for group in range(pf.num_row_groups):
            column = pf.read_row_group(group, columns=[scan.features]).column(0)
            for chunk in column.chunks:
                valid = chunk.drop_null()
                if len(valid):
                    return len(valid[0])
    return 0


def _vector_chunk(path: str, features: str, group: int, rows: int, into=None,
                  decoded: bool = False) -> pa.FixedSizeListArray:
    """One row group's vectors as float32, in one array (``into``: its rows' slice of a block, else
    one of its own; a reader of its own, inputs.row_group_vectors): Parquet's list decoder reserves
    up to twice the values it holds, and a driver build holds every vector at once. Raises
    InvalidArgumentError on a vector the engine does not take (null, ragged, empty) and ValueError
    on a length other than the group's first (or the block's). ``decoded``: ``into`` holds them
    already (decode_side_by_side's page decoder)."""
    if decoded:
        out = into
    else:
        with pq.ParquetFile(path, **PARQUET_READ) as parquet:
            out = row_group_vectors(parquet, features, group, rows,
                                    lambda column, _: vectors_to_numpy(column, features), into)
    if out is None:
        raise OSError(f"{path!r} changed while it was read")
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), out.shape[1])  # zero-copy


def _dim_from_footers(metas: list, features: str) -> int:
    """The vectors' length when the footers show one (every row group's values of the column a
    whole multiple of its rows, the same multiple), else 0. A null vector also counts one value:
    such files fail the compact read's decoding anyway."""
    dims = set()
    for meta in metas:
        leaf = leaf_columns(meta, features)
        if len(leaf) != 1:
            return 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows:
                values = group.column(leaf[0]).num_values
                dims.add(values // group.num_rows if values % group.num_rows == 0 else 0)
    return dims.pop() if len(dims) == 1 else 0


def _compact_read(scan: ParquetScan, id_type: str) -> tuple[pa.Table, RowBlock | None]:
    """Every file's ids, and its vectors decoded row group by row group on every core into one
    RowBlock in file order (``_vector_chunk``; the table's chunks are views of it, returned with
    it so an ivf build can adopt it), or arrays of their own when the footers do not show one
    length."""
    ids, groups, metas = [], [], []
    for path in scan.paths:
        meta = pq.read_metadata(path)
        metas.append(meta)
        groups += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                   if meta.row_group(g).num_rows]
        ids.append(pq.read_table(path, columns=[scan.id_col], **PARQUET_READ).column(0).cast(ARROW_ID_TYPES[id_type]))
    dim = _dim_from_footers(metas, scan.features)
    total = sum(rows for *_, rows in groups)
    block = RowBlock(total, dim) if dim and total else None
    chunks = [chunk for _, chunk in decode_side_by_side(
        groups, [rows for *_, rows in groups], block, 0,
        lambda unit, into, decoded: _vector_chunk(unit[0], scan.features, unit[1], unit[2], into, decoded),
        lambda unit: ChunkSource(unit[0], scan.features, unit[1]))]
    if len({c.type for c in chunks}) > 1:
        raise ValueError("vectors of different lengths")
    vectors = pa.chunked_array(chunks, type=chunks[0].type) if chunks else pa.chunked_array([], pa.list_(pa.float32()))
    return pa.table({"id": pa.chunked_array([c for i in ids for c in i.chunks], type=ARROW_ID_TYPES[id_type]),
                     "v": vectors}), block


def _arrow_read(scan: ParquetScan, id_type: str) -> pa.Table:
    """Columns ``id`` and ``v`` of every file as Parquet decodes them (chunks kept apart)."""
    tables = []
    for path in scan.paths:
        t = pq.read_table(path, columns=[scan.id_col, scan.features], use_threads=True, **PARQUET_READ)
        tables.append(pa.table({"id": t.column(scan.id_col).cast(ARROW_ID_TYPES[id_type]),
                                "v": t.column(scan.features)}))
    return pa.concat_tables(tables)


def read_scan(scan: ParquetScan, id_type: str) -> tuple[pa.Table | None, RowBlock | None]:
    """Columns ``id`` and ``v`` of every file, the vectors as compact float32 chunks (one per row
    group, no combined copy), and the RowBlock they are views of (None when they are not one);
    (None, None) if pyarrow fails on a file (Spark then reads it, with its own settings for
    corrupt files). Vectors the engine would refuse (null, ragged, empty) are read as they are
    instead, for the build to report as it reports them from Spark's collection."""
    try:
        with decoding_memory():
            try:
                return _compact_read(scan, id_type)
            except (InvalidArgumentError, ValueError) as e:
                log.debug("sparknn: %s: reading the vectors as they are (%s)", scan.paths, e)
                return _arrow_read(scan, id_type), None
    except (OSError, pa.ArrowException) as e:
        log.warning("sparknn: reading %s with pyarrow failed (%s); collecting through Spark", scan.paths, e)
        return None, None
