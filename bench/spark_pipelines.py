"""One measured pipeline in a fresh Spark session (run by bench_spark.py, one process per run).

    python bench/spark_pipelines.py annoy   items.parquet out.parquet --result r.json --workdir DIR
    python bench/spark_pipelines.py sparknn items.parquet out.parquet --result r.json [--index-type ivf]
                                    [--nlist N] [--nprobe N] [--rerank R] [--first-pass DIMS]

`annoy` is the recipe of the user's article (../shared/context/000_ddb8ab0dc6e00d61.txt) as
written: the vectors reach the driver as a pandas Series (toPandas), an AnnoyIndex(dim,
'angular') is filled item by item in a Python loop and built with 100 trees, saved, shipped with
sc.addFile and queried with get_nns_by_item in mapPartitions over sc.parallelize(annoy ids)
with a functools.partial; the result is collected, put in a pandas DataFrame, its Annoy ids are
mapped back to the real ids by hand, and pandas is converted to Spark and written as Parquet.
`sparknn` is the one call KNN(...).fit(df).similarItems().write.parquet(...).

Timings start at spark.read.parquet (the session start-up is reported apart) and end when the
Parquet output is written. The result JSON holds the phase timings in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

# The recipe's functions, as the article writes them (only `SparkFiles` imported here). ----------


def build_annoy_index(vectors, dim: int, num_trees: int = 100):
    from annoy import AnnoyIndex

    t = AnnoyIndex(dim, metric="angular")
    for index, vector in vectors.items():
        t.add_item(index, vector)
    t.build(num_trees)
    return t


def load_annoy_index(index_file: str, dim: int):
    from annoy import AnnoyIndex
    from pyspark import SparkFiles

    index = AnnoyIndex(dim, metric="angular")
    index.load(SparkFiles.get(index_file))
    return index


def find_neighbours(index_file, top_n, dim, item_batch):
    index = load_annoy_index(index_file, dim)

    # get similar items
    sim_items = []
    for item in item_batch:
        top_n_items = index.get_nns_by_item(i=item, n=top_n)
        sim_items.append((item, list(enumerate(top_n_items))))
    return sim_items


# ------------------------------------------------------------------------------------------------


def run_annoy(spark, input_path: str, output_path: str, workdir: str, top_n: int = 11) -> dict:
    import pandas as pd

    sc = spark.sparkContext
    times = {}
    t0 = time.perf_counter()
    vector_df = spark.read.parquet(input_path).toPandas()  # all vectors on the driver
    dim = len(vector_df.vector.iloc[0])
    times["collect_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    index = build_annoy_index(vector_df.vector, dim)  # Python loop of add_item, then build(100)
    times["annoy_build_s"] = time.perf_counter() - t
    index_file = os.path.join(workdir, f"annoy-{len(vector_df)}-{dim}.ann")
    index.save(index_file)
    del index  # the article's build_save_annoy_index returns only the path
    times["build_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    sc.addFile(index_file)
    sparkvector_ids = sc.parallelize(vector_df.index.values)
    # The article passes the path it built; SparkFiles.get needs the file's name to find the
    # copy that addFile shipped (with an absolute path it would open the driver's file).
    find_neighbours_ = partial(find_neighbours, os.path.basename(index_file), top_n, dim)
    similar_items = sparkvector_ids.mapPartitions(find_neighbours_).collect()
    times["query_s"] = time.perf_counter() - t1

    # "Map ALL the Annoy index ids with the actual item ids", including every neighbour's.
    t = time.perf_counter()
    real_ids = vector_df["id"].to_numpy()
    sim_df = pd.DataFrame(similar_items, columns=["annoy_id", "similar"])
    sim_df["id"] = real_ids[sim_df["annoy_id"].to_numpy(dtype="int64")]
    sim_df["similar"] = [[[rank, int(real_ids[item])] for rank, item in pairs] for pairs in sim_df["similar"]]
    times["map_ids_s"] = time.perf_counter() - t

    t = time.perf_counter()
    spark.createDataFrame(sim_df[["id", "similar"]]).write.parquet(output_path)
    times["to_spark_write_s"] = time.perf_counter() - t
    end = time.perf_counter()
    times["query_write_s"] = end - t1
    times["wall_s"] = end - t0
    return times


def run_sparknn(spark, input_path: str, output_path: str, index_type: str, nlist: int = 0, nprobe: int = 0,
                ivf_mode: str = "auto", rerank: int = -1, first_pass: str = "") -> dict:
    from sparknn.spark import KNN

    times = {}
    t0 = time.perf_counter()
    df = spark.read.parquet(input_path)
    knn = KNN(k=10, metric="cosine", indexType=index_type, featuresCol="vector", idCol="id", ivfMode=ivf_mode)
    if nlist:  # otherwise KNN's defaults
        knn.setNlist(nlist)
    if nprobe:
        knn.setNprobe(nprobe)
    if rerank >= 0:  # otherwise KNN's default (2 for float32 ivf lists)
        knn.setRerank(rerank)
    if first_pass:  # otherwise KNN's default ("auto")
        knn.setFirstPassDims(first_pass)
    model = knn.fit(df)
    times["build_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.similarItems().write.parquet(output_path)  # `model` stays referenced while writing
    end = time.perf_counter()
    times["query_write_s"] = end - t1
    times["wall_s"] = end - t0
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline", choices=["annoy", "sparknn"])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--result", required=True, help="JSON file for the timings")
    ap.add_argument("--workdir", default="/tmp", help="where the Annoy index file is saved")
    ap.add_argument("--index-type", default="ivf", choices=["hnsw", "flat", "ivf"])
    ap.add_argument("--ivf-mode", default="auto", choices=["auto", "driver", "routed"], help="KNN's ivfMode")
    ap.add_argument("--nlist", type=int, default=0, help="ivf lists (0: KNN's default, about sqrt(n))")
    ap.add_argument("--nprobe", type=int, default=0, help="ivf lists searched per item (0: KNN's default)")
    ap.add_argument("--rerank", type=int, default=-1, help="KNN's rerank (-1: its default)")
    ap.add_argument("--first-pass", default="", help="KNN's firstPassDims: auto, off or a count (default: KNN's)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args(argv)

    from sparknn.spark.session import local_session

    t = time.perf_counter()
    spark = local_session(args.master, f"bench-{args.pipeline}", **{
        "spark.driver.memory": args.driver_memory,
        "spark.driver.maxResultSize": "4g",
    })
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.perf_counter() - t
    if args.pipeline == "annoy":
        times = run_annoy(spark, args.input, args.output, args.workdir)
    else:
        times = run_sparknn(spark, args.input, args.output, args.index_type, args.nlist, args.nprobe,
                            args.ivf_mode, args.rerank, args.first_pass)
    times["session_s"] = session_s
    spark.stop()
    with open(args.result, "w") as f:
        json.dump({k: round(v, 3) for k, v in times.items()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
