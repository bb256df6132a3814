"""The floor of any Spark pipeline of the self-join's shape, with no kNN work at all.

In a fresh local[2] session (as bench_spark.py runs each pipeline): spark.read.parquet of the
items file, then one Python job (mapInArrow) that emits n rows of (id, 10 x (id, distance))
from arrays made on the spot, written as Parquet. Whatever a kNN pipeline does on top (index
build, search) comes on top of this; timing starts at the read, as in bench_spark.py.

    python bench/spark_floor.py /tmp/sparknn-bench-spark/items-200k-128.parquet --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

K = 10
SLICES = 8


def emit_neighbours(n: int):
    """A mapInArrow function: slice s of n rows of ids and K made-up neighbours each, built with
    pyarrow alone: with sparknn.arrow.neighbors_array (importing sparknn in the workers) the floor
    measured 0.9 s higher, sparknn's cost rather than Spark's."""
    import numpy as np
    import pyarrow as pa

    def emit(batches):
        per = n // SLICES
        offsets = pa.array(np.arange(0, K * per + 1, K, dtype=np.int32))
        for batch in batches:
            for s in batch.column(0).to_numpy():
                ids = np.arange(s * per, (s + 1) * per, dtype=np.int64)
                near = pa.array(np.repeat(ids, K))
                pairs = pa.StructArray.from_arrays([near, pa.array(np.ones(K * per, np.float32))], ["id", "distance"])
                yield pa.RecordBatch.from_arrays([pa.array(ids), pa.ListArray.from_arrays(offsets, pairs)],
                                                 ["id", "neighbors"])
    return emit


def one_run(items: str, n: int, output: str) -> None:
    from sparknn.spark.session import local_session

    spark = local_session("local[2]", "floor", **{"spark.driver.memory": "8g"})
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.perf_counter()
    spark.read.parquet(items)
    t1 = time.perf_counter()
    schema = "id long, neighbors array<struct<id: long, distance: float>>"
    spark.range(SLICES, numPartitions=SLICES).mapInArrow(emit_neighbours(n), schema) \
        .write.mode("overwrite").parquet(output)
    t2 = time.perf_counter()
    print(f"read {t1 - t0:.2f} python_job_write {t2 - t1:.2f} total {t2 - t0:.2f}", flush=True)
    spark.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("items", help="an items Parquet file written by bench_spark.py")
    ap.add_argument("--rows", type=int, default=0, help="rows to emit (default: the file's rows)")
    ap.add_argument("--repeats", type=int, default=3, help="runs, each in a fresh process and JVM")
    ap.add_argument("--output", default="/tmp/sparknn-bench-spark/floor-out.parquet")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single run, in this process
    args = ap.parse_args(argv)
    if args.rows == 0:
        import pyarrow.parquet as pq

        args.rows = pq.read_metadata(args.items).num_rows
    if args.one:
        one_run(args.items, args.rows, args.output)
        return 0
    totals = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, args.items, "--rows", str(args.rows), "--output",
                              args.output, "--one"], capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("read "))
        print(line)
        totals.append(float(line.split()[-1]))
    runs = ", ".join(f"{t:.1f}" for t in totals)
    print(f"{args.rows} rows: floor median {statistics.median(totals):.2f} s (runs {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
