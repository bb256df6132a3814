"""The all-items self-join (top-10 of every item, itself excluded) in-process, in one run:
sparknn ivf (list-batched GEMM search) and hnsw against hnswlib and faiss IndexIVFFlat on the
same data. Wall time includes the build (for sparknn ivf: k-means on a sample of
16 x nlist, 10 iterations, and each item's nprobe lists, computed once for add and search).
Recall@10 on a fixed sample of items against exact
search (sparknn flat).

    python bench/bench_selfjoin.py --n 1000000            # issue 4's speed run
    python bench/bench_selfjoin.py --dataset fashion-mnist --metric cosine --engines sparknn-ivf sparknn-hnsw
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets

K = 10


def recall(found: np.ndarray, truth: np.ndarray, sample: np.ndarray) -> float:
    hits = 0
    for row, i in enumerate(sample):
        got = [j for j in found[row] if j != i][:K]
        hits += len(set(got) & set(truth[row].tolist()))
    return hits / (len(sample) * K)


def run_sparknn_ivf(x, threads, nlist, nprobe, metric="l2"):
    """As `sparknn similar` runs it: train, each item's nprobe lists computed once for add and search."""
    import sparknn

    t = time.perf_counter()
    index = sparknn.Index(x.shape[1], metric, "ivf", nlist=nlist, nprobe=nprobe, threads=threads)
    index.train(x)
    lists = index.nearest_lists(x, nprobe)
    index.add(x, lists=lists)
    build = time.perf_counter() - t
    found, _ = index.search(x, K + 1, lists=lists)
    return build, time.perf_counter() - t, found


def run_sparknn_hnsw(x, threads, ef, metric="l2"):
    import sparknn

    t = time.perf_counter()
    index = sparknn.Index(x.shape[1], metric, "hnsw", threads=threads)
    index.add(x)
    build = time.perf_counter() - t
    found, _ = index.search(x, K + 1, ef=ef)
    return build, time.perf_counter() - t, found


def run_hnswlib(x, threads, ef):
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(x, np.arange(len(x)))
    build = time.perf_counter() - t
    index.set_ef(ef)
    found, _ = index.knn_query(x, k=K + 1)
    return build, time.perf_counter() - t, found.astype(np.int64)


def run_faiss_ivf(x, threads, nlist, nprobe):
    import faiss

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    quantizer = faiss.IndexFlatL2(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist)
    rng = np.random.default_rng(0)
    index.train(x[rng.choice(len(x), min(len(x), 64 * nlist), replace=False)])
    index.add(x)
    build = time.perf_counter() - t
    index.nprobe = nprobe
    _, found = index.search(x, K + 1)
    return build, time.perf_counter() - t, found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dataset", default="clustered", choices=["clustered", "fashion-mnist"],
                   help="fashion-mnist: its 60k base vectors (Debian's dataset-fashion-mnist)")
    p.add_argument("--metric", default="l2", choices=["l2", "cosine"], help="sparknn engines only")
    p.add_argument("--engines", nargs="+", default=["sparknn-ivf", "faiss-ivf", "sparknn-hnsw", "hnswlib"],
                   choices=["sparknn-ivf", "faiss-ivf", "sparknn-hnsw", "hnswlib"])
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--out", default=None, help="JSON results (default: bench/results/selfjoin[-DATASET].json)")
    args = p.parse_args(argv)
    if args.dataset == "fashion-mnist":
        x = datasets.fashion_mnist(1).base
        args.n, args.dim = x.shape
    else:
        x = datasets.clustered(args.n, args.dim, 1, seed=5).base
    if args.metric != "l2" and {"faiss-ivf", "hnswlib"} & set(args.engines):
        p.error("--metric cosine runs the sparknn engines only")
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   "selfjoin" + ("" if args.dataset == "clustered" else f"-{args.dataset}") + ".json")
    sample = np.random.default_rng(1).choice(args.n, args.sample, replace=False)
    import sparknn

    flat = sparknn.Index(args.dim, args.metric, "flat", threads=args.threads)
    flat.add(x)
    truth_raw, _ = flat.search(x[sample], K + 1)
    truth = np.array([[j for j in row if j != i][:K] for row, i in zip(truth_raw, sample)])
    nlist = int(round(4 * args.n**0.5))
    runs = []
    for nprobe in args.nprobe:
        if "sparknn-ivf" in args.engines:
            runs.append(("sparknn ivf float32", f"nlist={nlist} nprobe={nprobe}",
                         lambda nprobe=nprobe: run_sparknn_ivf(x, args.threads, nlist, nprobe, args.metric)))
    for nprobe in args.nprobe:
        if "faiss-ivf" in args.engines:
            runs.append(("faiss IndexIVFFlat", f"nlist={nlist} nprobe={nprobe}",
                         lambda nprobe=nprobe: run_faiss_ivf(x, args.threads, nlist, nprobe)))
    if "sparknn-hnsw" in args.engines:
        runs.append(("sparknn hnsw", "M=16 efC=200 ef=32", lambda: run_sparknn_hnsw(x, args.threads, 32, args.metric)))
    if "hnswlib" in args.engines:
        runs.append(("hnswlib", "M=16 efC=200 ef=32", lambda: run_hnswlib(x, args.threads, 32)))
    rows = []
    print(f"self-join top-{K}, {args.dataset} {args.n} x {args.dim}, {args.metric}, {args.threads} threads")
    print("| engine | parameters | build s | total s (build + join) | recall@10 |\n|---|---|---|---|---|")
    for name, params, fn in runs:
        build, total, found = fn()
        r = recall(found[sample], truth, sample)
        rows.append({"engine": name, "params": params, "build_s": round(build, 1), "total_s": round(total, 1),
                     "recall": round(r, 4)})
        print(f"| {name} | {params} | {build:.1f} | {total:.1f} | {r:.4f} |", flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
