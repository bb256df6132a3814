"""Side-by-side benchmark of the core engine against its peers, in one run.

For each data set: build time (all threads), index file size, and for each
search knob recall@k (against sparknn flat, which is exact) and queries/second
on one thread and on all threads. Prints a markdown table, writes JSON and a
recall-vs-QPS plot.

    python bench/bench_core.py                       # every data set, every engine
    python bench/bench_core.py --datasets clustered-50k-128 --engines sparknn-hnsw hnswlib
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets
import engines

DEFAULT_DATASETS = ["clustered-200k-128", "clustered-100k-768", "fashion-mnist"]
DEFAULT_ENGINES = ["sparknn-flat", "faiss-flat", "sparknn-hnsw", "hnswlib", "faiss-hnsw", "annoy"]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = 0
    for f, t in zip(found, truth):
        hits += len(np.intersect1d(f[f >= 0], t, assume_unique=False))
    return hits / truth.size


def timed(fn, fn_args: tuple, repeats: int):
    """(result, median seconds) of fn(*fn_args) over `repeats` runs (one run when it is slow)."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(*fn_args)
        times.append(time.perf_counter() - t)
        if times[-1] > 5:
            break
    return result, statistics.median(times)


def run_dataset(name: str, engine_names, args) -> list:
    ds = datasets.get(name, args.queries)
    print(f"\n## {ds.name}: {ds.base.shape[0]} x {ds.base.shape[1]}, {len(ds.queries)} queries, "
          f"metric {ds.metric}", flush=True)
    truth_engine = engines.make("sparknn-flat")
    truth_engine.build(ds.base, ds.metric, args.threads)
    truth = truth_engine.search(ds.queries, args.k, None, args.threads)
    rows = []
    for ename in engine_names:
        eng = engines.make(ename)
        t = time.perf_counter()
        eng.build(ds.base, ds.metric, args.threads)
        build_s = time.perf_counter() - t
        size = eng.size_bytes()
        for knob in eng.knobs:
            nq1 = min(len(ds.queries), args.single_queries)
            q1 = ds.queries[:nq1]
            _, t1 = timed(eng.search, (q1, args.k, knob, 1), args.repeats)
            found, tn = timed(eng.search, (ds.queries, args.k, knob, args.threads), args.repeats)
            row = {
                "dataset": ds.name, "engine": ename, "knob": knob, "build_s": round(build_s, 2),
                "size_mb": round(size / 1e6, 1), "recall": round(recall_at_k(found, truth), 4),
                "qps_1t": round(nq1 / t1, 1), f"qps_{args.threads}t": round(len(ds.queries) / tn, 1),
            }
            rows.append(row)
            print(f"| {ename:13s} | {knob!s:>6s} | {build_s:8.2f} | {size / 1e6:8.1f} | "
                  f"{row['recall']:.4f} | {row['qps_1t']:10.1f} | {row[f'qps_{args.threads}t']:10.1f} |", flush=True)
            if ename == "annoy" and t1 * len(ds.queries) / nq1 > 120:
                break  # Annoy's slow knobs would take minutes more
    return rows


def plot(rows, path, threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], names):
        for eng in dict.fromkeys(r["engine"] for r in rows):
            pts = sorted((r["recall"], r["qps_1t"]) for r in rows if r["dataset"] == ds and r["engine"] == eng)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=eng, markersize=3)
        ax.set_title(ds)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries/s (1 thread)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES, choices=list(engines.ENGINES))
    p.add_argument("--queries", type=int, default=2000, help="queries per data set (all-threads timing)")
    p.add_argument("--single-queries", type=int, default=1000, help="queries timed on one thread")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "core"))
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    print(f"| engine        |   knob |  build s |  size MB | recall | QPS 1 thread | QPS {args.threads} threads |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for ds in args.datasets:
        rows += run_dataset(ds, args.engines, args)
        with open(args.out + ".json", "w") as f:
            json.dump(rows, f, indent=1)
    plot(rows, args.out + ".png", args.threads)
    print(f"\nwrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
