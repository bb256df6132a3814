"""The Spark self-join with its defaults before and after the recall target (issue 15): a fixed
nprobe 16 against the default target 0.95, on data whose difficulty ``--spread`` sets.

    python bench/bench_recall_target.py --n 500000 --dim 64 --spread 0.9

Data: ``--clusters`` Gaussian centres scaled by ``--spread`` plus unit noise (smaller spread:
harder, less clustered), written once as Parquet. Each run reads it, fits ``KNN`` (cosine, ivf,
driver build) and writes ``similarItems`` as Parquet; recall@10 on 2000 sampled items against
exact search (numpy). The runs share one local[2] session in a fixed order (the first pays the
JVM's warm-up): compare recall, and time only with that in mind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def exact(x: np.ndarray, rows: np.ndarray, k: int) -> list:
    """Each sampled row's k most cosine-similar other rows (100 rows at a time: bounded memory)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for lo in range(0, len(rows), 100):
        part = rows[lo:lo + 100]
        sims = unit[part] @ unit.T
        sims[np.arange(len(part)), part] = -np.inf  # itself excluded
        out += [set(np.argpartition(-s, k)[:k].tolist()) for s in sims]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from sparknn.spark import KNN
    from sparknn.spark.session import local_session

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    x = centres[rng.integers(0, args.clusters, args.n)] * args.spread + rng.standard_normal(
        (args.n, args.dim)).astype(np.float32)
    work = tempfile.mkdtemp(prefix="sparknn-recall-target-")
    path = os.path.join(work, "items.parquet")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim)
    pq.write_table(pa.table({"id": np.arange(args.n), "vector": vectors}), path, row_group_size=50_000)
    sample = np.sort(rng.choice(args.n, 2000, replace=False))
    want = exact(x, sample, 10)
    spark = local_session("local[2]", "recall-target", **{"spark.driver.memory": "8g"})
    try:
        for label, params in (("nprobe 16 (before)", {"nprobe": 16}), ("default: recall target 0.95", {})):
            t0 = time.perf_counter()
            model = KNN(featuresCol="vector", **params).fit(spark.read.parquet(path))
            out = os.path.join(work, f"out-{len(params)}")
            model.similarItems().write.mode("overwrite").parquet(out)
            seconds = time.perf_counter() - t0
            table = pq.read_table(out)
            found = dict(zip(table.column("id").to_pylist(), table.column("neighbors").to_pylist()))
            hits = [len({nb["id"] for nb in found[i]} & w) / 10 for i, w in zip(sample.tolist(), want)]
            print(json.dumps({"run": label, "spread": args.spread, "seconds": round(seconds, 1),
                              "recall@10": round(float(np.mean(hits)), 4), "nprobe": model.getNprobe(),
                              "tuning": model.tuning.describe() if model.tuning else None}), flush=True)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
