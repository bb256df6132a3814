"""Neighbours within groups on Spark (local[2], loopback only): KNN(groupCol=...) against what a user
can do today, on the same data, one run.

    python bench/bench_grouped_spark.py --n 1000000 --dim 64 --groups 100000 --sample-groups 200
    python bench/bench_grouped_spark.py --n 50000 --dim 16 --groups 5000 --sample-groups 20   # minutes

Data: bench_grouped.data (Gaussian clusters, Zipf group sizes, the largest >= n / 10), ids 0..n-1
(bigint), group (int), vector (array<float>), written once as Parquet; every contender reads that
file with spark.read.parquet and writes id + neighbors as Parquet, timed from the read to the
written output. Squared L2 everywhere (KNN metric="l2"), k = 10, self excluded.

- sparknn: KNN(groupCol="group").fit(df).similarItems(), on all the data.
- loop: one KNN per group (df.where(group == g), fit, similarItems, append): run on a stratified
  sample of groups (every G/sample-th by size rank, the middle group of each power-of-2 size class,
  the largest); EXTRAPOLATED = sum over size classes of mean measured s per group x groups in class.
- join: the items equi-joined with themselves on the group, self excluded, distance by Spark's
  vector_l2_distance (pyspark >= 4.3) or aggregate(zip_with(...)), row_number() over (partition by
  id order by distance) <= k: run on every round(1/join-fraction)-th group by size rank among
  groups of at most --join-max-size items; EXTRAPOLATED by pairs: measured s x sum(s(s-1)) over all
  groups / over the groups run.
- nearestByJoin: DataFrame.nearestByJoin (pyspark >= 4.2, exact mode); it takes no join key, so it
  ranks the cross product with a distance that is NULL across groups: run on whole groups of the
  join sample up to --nbj-rows rows; EXTRAPOLATED by pairs: measured s x n^2 / rows^2.

Recall@k against per-group exact search (numpy) on a fixed-seed sample of the items each
contender processed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_grouped import data  # noqa: E402


def write_items(path: str, x: np.ndarray, codes: np.ndarray) -> None:
    n, dim = x.shape
    assert n * dim < 2**31, "int32 list offsets"
    vector = pa.ListArray.from_arrays(np.arange(0, n * dim + 1, dim, dtype=np.int32), x.reshape(-1))
    table = pa.table({"id": np.arange(n, dtype=np.int64), "group": codes.astype(np.int32), "vector": vector})
    pq.write_table(table, path, row_group_size=25_000)  # row groups let Spark split the file among its cores


def size_class(sizes: np.ndarray) -> np.ndarray:
    return np.floor(np.log2(sizes)).astype(np.int64)


def stratified(sizes: np.ndarray, count: int, cap: int | None = None) -> np.ndarray:
    """Group codes: every (G / count)-th by size rank (largest first, rank 0 included) and the middle
    group of each power-of-2 size class, among groups of at most ``cap`` items."""
    order = np.argsort(-sizes, kind="stable")
    if cap is not None:
        order = order[sizes[order] <= cap]
    ranks = set(range(0, len(order), max(1, len(order) // max(count, 1))))
    classes = size_class(sizes[order])
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        ranks.add(int(members[len(members) // 2]))
    return order[sorted(ranks)]


def pairs(sizes: np.ndarray) -> float:
    return float((sizes.astype(np.float64) * (sizes - 1)).sum())


def neighbors_column(df, left: str, right: str, distance: str, k: int):
    """(left id, distance, right id) rows -> id, neighbors: array<struct<id, distance>>, nearest first."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy(left).orderBy(distance, right))
    top = df.withColumn("rank", rank).where(F.col("rank") <= k)
    nb = F.sort_array(F.collect_list(F.struct("rank", F.col(right).alias("id"), F.col(distance).alias("distance"))))
    return top.groupBy(left).agg(nb.alias("nb")).select(
        F.col(left).alias("id"), F.transform("nb", lambda s: F.struct(s["id"], s["distance"])).alias("neighbors"))


def sides(df):
    from pyspark.sql import functions as F

    return [df.select(*[F.col(c).alias(f"{p}_{c}") for c in ("id", "group", "vector")]) for p in ("l", "r")]


def distance(how: str):
    from pyspark.sql import functions as F

    if how == "builtin":  # Euclidean, not squared: the same order
        return F.vector_l2_distance("l_vector", "r_vector")
    squares = F.zip_with("l_vector", "r_vector", lambda a, b: (a - b) * (a - b))
    return F.aggregate(squares, F.lit(0.0).cast("float"), lambda acc, v: acc + v)


def equi_join(df, k: int, how: str):
    from pyspark.sql import functions as F

    left, right = sides(df)
    joined = left.join(right, (F.col("l_group") == F.col("r_group")) & (F.col("l_id") != F.col("r_id")))
    return neighbors_column(joined.select("l_id", "r_id", distance(how).alias("d")), "l_id", "r_id", "d", k)


def nearest_by_join(df, k: int):
    from pyspark.sql import functions as F

    left, right = sides(df)
    same = (F.col("l_group") == F.col("r_group")) & (F.col("l_id") != F.col("r_id"))
    joined = left.nearestByJoin(right, F.when(same, distance("builtin")), k, "exact", "distance")
    return neighbors_column(joined.select("l_id", "r_id", distance("builtin").alias("d")), "l_id", "r_id", "d", k)


def exact(x: np.ndarray, codes: np.ndarray, k: int):
    """item -> its k exact neighbours in its group (squared L2, self excluded)."""
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(codes))])

    def truth(item: int) -> set:
        members = order[starts[codes[item]]:starts[codes[item] + 1]]
        members = members[members != item]
        return set(members[np.argsort(((x[members] - x[item]) ** 2).sum(1), kind="stable")[:k]].tolist())

    return truth


def recall(out: str, processed: np.ndarray, truth, sample: int) -> tuple[float, int, int]:
    items = np.random.default_rng(1).choice(processed, min(sample, len(processed)), replace=False)
    table = pq.read_table(out, columns=["id", "neighbors"])
    rows = len(table)
    table = table.filter(pc.is_in(table.column("id"), pa.array(items)))
    found = {i: {nb["id"] for nb in row} for i, row in zip(table.column("id").to_pylist(),
                                                              table.column("neighbors").to_pylist())}
    hits = total = 0
    for item in items.tolist():
        want = truth(item)
        hits += len(want & found.get(item, set()))
        total += len(want)
    return (hits / total if total else float("nan")), len(items), rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--index", choices=["flat", "ivf", "hnsw"], default=None, help="indexType (default: KNN's)")
    ap.add_argument("--sample-groups", type=int, default=200, help="groups the loop runs (plus one per size class)")
    ap.add_argument("--join-fraction", type=float, default=0.01, help="fraction of groups the equi-join runs")
    ap.add_argument("--join-max-size", type=int, default=4096, help="largest group the equi-join runs")
    ap.add_argument("--join-distance", nargs="*", default=["builtin", "hof"], choices=["builtin", "hof"],
                    help="equi-join variants: vector_l2_distance, aggregate(zip_with(...)); none to skip")
    ap.add_argument("--nbj-rows", type=int, default=2000, help="rows nearestByJoin runs (0: skip)")
    ap.add_argument("--sample", type=int, default=2000, help="items whose recall is checked, per contender")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args(argv)
    command = "python bench/bench_grouped_spark.py " + " ".join(argv if argv is not None else sys.argv[1:])

    x, codes = data(args.n, args.dim, args.groups)
    sizes = np.bincount(codes)
    truth = exact(x, codes, args.k)
    work = tempfile.mkdtemp(prefix="sparknn-bench-grouped-spark-")
    path = os.path.join(work, "items.parquet")
    write_items(path, x, codes)
    info = {"n": args.n, "dim": args.dim, "groups": len(sizes), "largest": int(sizes.max()),
            "median_size": float(np.median(sizes)), "pairs": pairs(sizes), "master": args.master,
            "parquet_mb": round(os.path.getsize(path) / 1e6, 1)}
    print(json.dumps(info), flush=True)

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import functions as F

    from sparknn.spark import KNN
    from sparknn.spark.session import local_session  # spark.driver.host / bindAddress = 127.0.0.1

    spark = local_session(args.master, "bench_grouped_spark", **{"spark.driver.memory": args.driver_memory})
    spark.sparkContext.setLogLevel("ERROR")
    # Warm-up: the JVM's and the Python workers' start is no contender's time.
    spark.read.parquet(path).where("id < 100").count()
    spark.sparkContext.parallelize(range(4), 2).map(lambda v: v).count()
    knn = {"k": args.k, "metric": "l2", "featuresCol": "vector", "idCol": "id"}
    if args.index:
        knn["indexType"] = args.index
    rows = []

    def timed(name: str, run, processed: np.ndarray, extrapolate, **extra) -> dict:
        out, load = os.path.join(work, f"out-{len(rows)}"), os.getloadavg()[0]
        t = time.perf_counter()
        run(out)
        seconds = time.perf_counter() - t
        rec, checked, out_rows = recall(out, processed, truth, args.sample)
        row = {"contender": name, "measured_s": round(seconds, 2), "items": len(processed),
               "groups_run": int(len(np.unique(codes[processed]))), "extrapolated_s": extrapolate(seconds),
               "recall": round(rec, 4), "recall_items": checked, "output_rows": out_rows,
               "load_1min_before_after": [round(load, 2), round(os.getloadavg()[0], 2)], **extra}
        print(json.dumps(row), flush=True)
        rows.append(row)
        return row

    everything = np.arange(args.n)
    index_name = args.index or KNN().getIndexType()
    timed(f"sparknn KNN(groupCol), {index_name}", lambda out: KNN(groupCol="group", **knn).fit(
        spark.read.parquet(path)).similarItems().write.mode("overwrite").parquet(out), everything, lambda s: None)

    # (a) one model per group, as a user writes it today.
    chosen = stratified(sizes, args.sample_groups)
    per_group = {}

    def loop(out: str) -> None:
        for g in chosen.tolist():
            t = time.perf_counter()
            df = spark.read.parquet(path).where(F.col("group") == g)
            KNN(**knn).fit(df).similarItems().write.mode("append").parquet(out)
            per_group[g] = time.perf_counter() - t

    def loop_total(_: float) -> float:
        classes, total = size_class(sizes), 0.0
        for c in np.unique(classes):
            measured = [s for g, s in per_group.items() if classes[g] == c]
            total += float(np.mean(measured)) * int((classes == c).sum())
        return round(total, 1)

    timed(f"loop: one KNN ({index_name}) per group", loop, np.flatnonzero(np.isin(codes, chosen)), loop_total)
    rows[-1]["s_per_group_median"] = round(float(np.median(list(per_group.values()))), 3)

    # (b) Spark itself: an equi-join on the group, and nearestByJoin (a cross product).
    joined = stratified(sizes, max(1, round(args.join_fraction * len(sizes))), args.join_max_size)
    join_items = np.flatnonzero(np.isin(codes, joined))
    join_pairs = pairs(sizes[joined])
    for how in args.join_distance:
        if how == "builtin" and not hasattr(F, "vector_l2_distance"):
            print("pyspark has no vector_l2_distance: skipping the builtin join", flush=True)
            continue
        label = "vector_l2_distance" if how == "builtin" else "aggregate(zip_with)"
        row = timed(f"Spark equi-join on group, {label}", lambda out, how=how: equi_join(
            spark.read.parquet(path).where(F.col("group").isin(joined.tolist())), args.k, how)
            .write.mode("overwrite").parquet(out), join_items,
            lambda s: round(s * info["pairs"] / join_pairs, 1), pairs_run=join_pairs)
        row["pairs_per_s"] = round(join_pairs / row["measured_s"])
    shuffled = np.random.default_rng(2).permutation(joined)
    nbj = shuffled[np.cumsum(sizes[shuffled]) <= args.nbj_rows]  # whole groups, at most --nbj-rows rows
    m = int(sizes[nbj].sum())
    if not hasattr(spark.read.parquet(path), "nearestByJoin"):
        print("pyspark has no DataFrame.nearestByJoin: skipped", flush=True)
    elif m:
        row = timed("Spark nearestByJoin (cross product, NULL across groups)", lambda out: nearest_by_join(
            spark.read.parquet(path).where(F.col("group").isin(nbj.tolist())), args.k)
            .write.mode("overwrite").parquet(out), np.flatnonzero(np.isin(codes, nbj)),
            lambda s: round(s * (args.n / m) ** 2, 1), pairs_run=float(m) ** 2)
        row["pairs_per_s"] = round(m**2 / row["measured_s"])
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)

    base = rows[0]["measured_s"]
    lines = [f"n={args.n} dim={args.dim} groups={len(sizes)} largest={info['largest']} k={args.k} {args.master}",
             "", "| contender | measured s (groups, items run) | extrapolated full-data s | recall@k | "
             "ratio vs sparknn (full data) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        full = r["extrapolated_s"] if r["extrapolated_s"] is not None else r["measured_s"]
        extra = "(measured: all data)" if r["extrapolated_s"] is None else f"{full:.1f} (extrapolated)"
        lines.append(f"| {r['contender']} | {r['measured_s']:.1f} ({r['groups_run']}, {r['items']}) | {extra} | "
                     f"{r['recall']:.4f} | {full / base:.1f}x |")
    print("\n" + "\n".join(lines) + "\n\ncommand: " + command)
    print(json.dumps({"command": command.strip(), **info, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
