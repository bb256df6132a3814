"""Checks of the input: columns and types, values (``validate``), unique ids; type mapping; Arrow collection.

The column checks run before any job is launched, so bad input fails in
milliseconds with a message naming the column to fix. ``validate`` is one
aggregate pass on the JVM; ``check_unique`` checks ids already collected.
Every build strategy uses these.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn.errors import InvalidArgumentError
from sparknn.spark.layout import ARROW_ID_TYPES

_NUMERIC_ELEMENTS = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType)


def field(df: DataFrame, name: str, role: str) -> T.StructField:
    """The schema field of column ``name``; a clear error listing the columns if absent."""
    for f in df.schema.fields:
        if f.name == name:
            return f
    available = ", ".join(repr(f.name) for f in df.schema.fields) or "none"
    raise InvalidArgumentError(f"{role} {name!r} is not a column of the DataFrame; available columns: {available}")


def check_features(df: DataFrame, name: str) -> T.StructField:
    f = field(df, name, "featuresCol")
    dt = f.dataType
    if isinstance(dt, VectorUDT):
        return f
    if isinstance(dt, T.ArrayType) and isinstance(dt.elementType, _NUMERIC_ELEMENTS):
        return f
    raise InvalidArgumentError(f"featuresCol {name!r} has type {dt.simpleString()}: expected array<float>, "
                               "array<double> or a pyspark.ml.linalg dense vector")


def check_id(df: DataFrame, name: str) -> T.StructField:
    f = field(df, name, "idCol")
    if f.dataType.simpleString() not in ARROW_ID_TYPES:
        raise InvalidArgumentError(f"idCol {name!r} has type {f.dataType.simpleString()}: expected an integer "
                                   "(tinyint, smallint, int, bigint) or string column")
    return f


def features_as_float_array(df: DataFrame, name: str):
    """A Column holding the features as array<float>, converted on the JVM side.

    Doubles are halved in size before they cross to Python, and ML vectors
    become plain arrays, so the Python side sees one layout.
    """
    dt = field(df, name, "featuresCol").dataType
    if isinstance(dt, VectorUDT):
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(F.col(name), "float32")
    return F.col(name).cast("array<float>")


def spark_id_type(spark_type: str) -> T.DataType:
    return {"tinyint": T.ByteType(), "smallint": T.ShortType(), "int": T.IntegerType(), "bigint": T.LongType(),
            "string": T.StringType()}[spark_type]


def neighbors_spark_type(id_spark_type: str) -> T.ArrayType:
    return T.ArrayType(T.StructType([
        T.StructField("id", spark_id_type(id_spark_type)),
        T.StructField("distance", T.FloatType()),
    ]))


def collect_arrow(df: DataFrame) -> pa.Table:
    """The rows of ``df`` on the driver as an Arrow table, never as Python rows.

    ``DataFrame.toArrow`` exists from Spark 4.0; Spark 3.5 has the private
    ``_collect_as_arrow`` returning record batches.
    """
    if hasattr(df, "toArrow"):
        return df.toArrow()
    batches = df._collect_as_arrow()
    if batches:
        return pa.Table.from_batches(batches)
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema).empty_table()


def _example(df: DataFrame, condition, id_col: str) -> str:
    row = df.filter(condition).select(id_col).limit(1).collect()
    return f" (e.g. id {row[0][0]!r})" if row else ""


def validate(df: DataFrame, features: str, id_col: str, integer_ids: bool) -> dict:
    """One aggregate pass on the JVM: counts, vector lengths, bad values, id range.

    Raises a clear error naming the column, a count and an example id. Used
    before a sharded build (hours of executor work), and on the driver path
    to explain a failure found in the collected Arrow data.
    """
    vec = features_as_float_array(df, features)
    bad = F.exists(vec, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf")))
    aggs = [
        F.count(F.lit(1)).alias("rows"),
        F.count(F.col(id_col)).alias("ids"),
        F.count(vec).alias("vectors"),
        F.min(F.size(vec)).alias("min_len"),
        F.max(F.size(vec)).alias("max_len"),
        F.sum(F.when(bad, 1).otherwise(0)).alias("bad"),
    ]
    if integer_ids:
        aggs.append(F.min(F.col(id_col)).alias("min_id"))
    stats = df.agg(*aggs).first().asDict()
    rows = stats["rows"]
    if rows == 0:
        raise InvalidArgumentError("the DataFrame to index is empty: fit needs at least one row")
    if stats["ids"] < rows:
        raise InvalidArgumentError(f"idCol {id_col!r} has {rows - stats['ids']} null values of {rows} rows")
    if stats["vectors"] < rows:
        raise InvalidArgumentError(f"featuresCol {features!r} has {rows - stats['vectors']} null vectors of "
                                   f"{rows} rows" + _example(df, vec.isNull(), id_col))
    if stats["min_len"] != stats["max_len"]:
        shortest = _example(df, F.size(vec) == stats["min_len"], id_col)
        raise InvalidArgumentError(f"featuresCol {features!r} has vectors of different lengths, "
                                   f"{stats['min_len']} to {stats['max_len']}: all must have the same length; "
                                   f"shortest{shortest}")
    if stats["min_len"] == 0:
        raise InvalidArgumentError(f"featuresCol {features!r} has empty vectors" + _example(df, F.size(vec) == 0,
                                                                                              id_col))
    if stats["bad"]:
        raise InvalidArgumentError(f"featuresCol {features!r} has {stats['bad']} vectors with null, NaN or "
                                   "infinite values: remove or impute them" + _example(df, bad, id_col))
    return stats


def check_unique(ids: pa.Array, id_col: str) -> None:
    counts = pc.value_counts(ids)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        example = dup.field("values")[0].as_py()
        raise InvalidArgumentError(f"idCol {id_col!r} has {len(dup)} duplicate ids (e.g. {example!r} appears "
                                   f"{dup.field('counts')[0].as_py()} times): ids must be unique")
