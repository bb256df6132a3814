"""sparknn: fast k-nearest-neighbour search, from numpy to Spark.

>>> import numpy as np, sparknn
>>> index = sparknn.Index(dim=4, metric="l2", kind="flat")
>>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13])
>>> ids, dist = index.search(np.eye(4, dtype=np.float32)[:1], k=2)
>>> int(ids[0, 0])
10
"""

from sparknn._core import FORMAT_VERSION, cpu_simd_level, simd_level
from sparknn.errors import IndexFileError, IndexIOError, InvalidArgumentError, UnsupportedError
from sparknn.index import KINDS, METRICS, Index, load

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "METRICS",
    "Index",
    "IndexFileError",
    "IndexIOError",
    "InvalidArgumentError",
    "UnsupportedError",
    "cpu_simd_level",
    "load",
    "simd_level",
]
