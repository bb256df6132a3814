"""sparknn hnsw against hnswlib, side by side in one run on the same data.

Builds both graphs with the same M / ef_construction / threads, then measures
single-thread queries per second and recall@10 at several ef. Ground truth is
sparknn's exact flat index. Timings are medians of --repeat runs, interleaved
between the libraries. Both wall-clock and CPU time are reported: on a shared
machine wall time mostly measures the neighbours' load, while CPU time (of the
calling thread for queries, of the process for builds) stays comparable.

    python bench/hnsw_vs_hnswlib.py                      # 200k x 128, M=16, efc=200, 2 threads
    python bench/hnsw_vs_hnswlib.py --n 50000 --repeat 3 # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time

import hnswlib
import numpy as np
import sparknn


def clustered(
    n: int, nq: int, dim: int, clusters: int, new_query_clusters: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed Gaussian clusters: centres ~ N(0, 3^2), points ~ centre + N(0, 1).

    Queries are further draws from the same clusters, or (harder: their
    neighbours are spread over several clusters) from clusters of their own.
    """
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * 3
    base = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim), dtype=np.float32)
    if new_query_clusters:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32) * 3
    queries = centres[rng.integers(0, clusters, nq)] + rng.standard_normal((nq, dim), dtype=np.float32)
    return base, queries


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth))
    return hits / truth.size


def timed(fn, clock=time.thread_time):
    """(wall seconds, CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), clock()
    fn()
    return time.perf_counter() - w0, clock() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument(
        "--queries", default="same", choices=["same", "new"], help="query clusters: the base's or new ones"
    )
    ap.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="build threads (queries run on one thread)")
    ap.add_argument("--ef", default="10,16,24,32,48,64,96,128,256")
    ap.add_argument("--repeat", type=int, default=5, help="query timing repetitions (median)")
    ap.add_argument("--builds", type=int, default=1, help="build timing repetitions (median)")
    args = ap.parse_args()
    efs = [int(e) for e in args.ef.split(",")]

    base, queries = clustered(args.n, args.nq, args.dim, args.clusters, args.queries == "new")
    print(
        f"data: {args.n} x {args.dim} clustered ({args.clusters} clusters), "
        f"{args.nq} queries ({args.queries} clusters), metric={args.metric}"
    )
    print(
        f"M={args.M} ef_construction={args.ef_construction} build threads={args.threads}, "
        f"sparknn simd={sparknn._core.simd_level()}"
    )

    flat = sparknn.Index(args.dim, metric=args.metric, kind="flat")
    flat.add(base)
    truth, _ = flat.search(queries, k=10)

    # Builds alternate between the libraries so both see the same machine load.
    builds = {"hnswlib": [], "sparknn": []}
    indexes = {}
    for _ in range(args.builds):
        h = hnswlib.Index(space=args.metric, dim=args.dim)
        h.init_index(max_elements=args.n, M=args.M, ef_construction=args.ef_construction, random_seed=42)
        h.set_num_threads(args.threads)
        builds["hnswlib"].append(timed(lambda h=h: h.add_items(base), time.process_time))
        indexes["hnswlib"] = h

        s = sparknn.Index(
            args.dim,
            metric=args.metric,
            kind="hnsw",
            M=args.M,
            ef_construction=args.ef_construction,
            seed=42,
            threads=args.threads,
        )
        builds["sparknn"].append(timed(lambda s=s: s.add(base), time.process_time))
        indexes["sparknn"] = s
    h, s = indexes["hnswlib"], indexes["sparknn"]
    h.set_num_threads(1)
    s.threads = 1

    def run_hnswlib(ef):
        h.set_ef(max(ef, 10))
        return h.knn_query(queries, k=10)[0]

    def run_sparknn(ef):
        return s.search(queries, k=10, ef=ef)[0]

    def med(samples, i):
        return statistics.median(x[i] for x in samples)

    bh, bs = builds["hnswlib"], builds["sparknn"]
    print(
        f"\nbuild ({args.threads} threads)  wall s: hnswlib {med(bh, 0):.1f}  sparknn {med(bs, 0):.1f}"
        f"  ({med(bh, 0) / med(bs, 0):.2f}x)"
    )
    print(
        f"build ({args.threads} threads)   CPU s: hnswlib {med(bh, 1):.1f}  sparknn {med(bs, 1):.1f}"
        f"  ({med(bh, 1) / med(bs, 1):.2f}x)"
    )
    print("\nsingle-thread queries per second (by thread CPU time; wall-clock in brackets)")
    print(f"{'ef':>5} | {'hnswlib QPS':>19} {'recall':>7} | {'sparknn QPS':>19} {'recall':>7} | {'ratio':>6}")
    print("-" * 72)
    for ef in efs:
        r_h = recall(run_hnswlib(ef), truth)
        r_s = recall(run_sparknn(ef), truth)
        t_h, t_s = [], []
        for _ in range(args.repeat):  # interleaved
            t_h.append(timed(lambda ef=ef: run_hnswlib(ef)))
            t_s.append(timed(lambda ef=ef: run_sparknn(ef)))
        q_h, q_s = args.nq / med(t_h, 1), args.nq / med(t_s, 1)
        w_h, w_s = args.nq / med(t_h, 0), args.nq / med(t_s, 0)
        print(
            f"{ef:>5} | {q_h:>8.0f} ({w_h:>8.0f}) {r_h:>7.4f} | {q_s:>8.0f} ({w_s:>8.0f}) {r_s:>7.4f} |"
            f" {q_s / q_h:>5.2f}x"
        )


if __name__ == "__main__":
    main()
