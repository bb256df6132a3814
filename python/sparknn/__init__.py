"""sparknn: fast k-nearest-neighbour search, from numpy to Spark.

>>> import numpy as np, sparknn
>>> index = sparknn.Index(dim=4, metric="l2", kind="flat")
>>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13])
>>> ids, dist = index.search(np.eye(4, dtype=np.float32)[:1], k=2)
>>> int(ids[0, 0])
10
"""

from sparknn._blas import preload_openblas

preload_openblas()

from sparknn._core import FORMAT_VERSION, cpu_simd_level, simd_level  # noqa: E402
from sparknn.errors import IndexFileError, IndexIOError, InvalidArgumentError, UnsupportedError  # noqa: E402
from sparknn.index import KINDS, METRICS, Index, IndexSpec, load  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "METRICS",
    "Index",
    "IndexSpec",
    "IndexFileError",
    "IndexIOError",
    "InvalidArgumentError",
    "UnsupportedError",
    "cpu_simd_level",
    "load",
    "simd_level",
]
