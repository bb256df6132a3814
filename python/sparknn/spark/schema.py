"""Driver-side checks of input columns, type mapping, and Arrow collection.

Everything here runs before any job is launched (except ``collect_arrow``), so
bad input fails in milliseconds with a message naming the column to fix.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparknn.errors import InvalidArgumentError
from sparknn.spark.worker import ARROW_ID_TYPES

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
