"""Neighbours within groups, in-process: sparknn.grouped against a Python loop building one
sparknn index per group (what a user does today), on the same data, one run.

    python bench/bench_grouped.py --n 1000000 --dim 64 --groups 100000

Data: Gaussian clusters, group sizes Zipf-distributed over ``--groups`` groups (the largest
>= n / 10), rows shuffled. Recall@k of both against per-group exact search on a sample of rows.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sparknn.grouped import within_groups
from sparknn.index import IndexSpec


def zipf_sizes(n: int, groups: int, exponent: float = 1.0) -> np.ndarray:
    """``groups`` sizes summing to n, proportional to 1 / rank^exponent, each at least 1."""
    weights = 1.0 / np.arange(1, groups + 1) ** exponent
    sizes = np.maximum(1, np.floor(weights / weights.sum() * (n - groups)).astype(np.int64) + 1)
    sizes[0] += n - sizes.sum()
    return sizes


def data(n: int, dim: int, groups: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    codes = np.repeat(np.arange(groups), zipf_sizes(n, groups))
    rng.shuffle(codes)
    return x, codes


def loop_baseline(x, codes, k, spec: IndexSpec):
    """One index per group, built and searched in a Python loop."""
    rows = np.full((len(x), k), -1, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(x)]])
    for lo, hi in zip(starts[:-1], starts[1:]):
        members = order[lo:hi]
        if len(members) < 2:
            continue
        index = spec.for_items(len(members)).create(x.shape[1])
        index.add(x[members])
        found, _ = index.search(x[members], min(k + 1, len(members)))
        for i, f in enumerate(found):
            f = f[(f >= 0) & (f != i)][:k]
            rows[members[i], :len(f)] = members[f]
    return rows


def sample_recall(x, codes, rows, sample, k):
    hits = total = 0
    for r in sample:
        members = np.flatnonzero(codes == codes[r])
        members = members[members != r]
        if not len(members):
            continue
        d = ((x[members] - x[r]) ** 2).sum(1)
        want = set(members[np.argsort(d, kind="stable")[:k]].tolist())
        hits += len(want & set(rows[r].tolist()))
        total += len(want)
    return hits / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--skip-loop", action="store_true")
    args = ap.parse_args()
    x, codes = data(args.n, args.dim, args.groups)
    sizes = np.bincount(codes)
    print(json.dumps({"n": args.n, "dim": args.dim, "groups": int((sizes > 0).sum()), "largest": int(sizes.max()),
                      "median_size": float(np.median(sizes))}))
    sample = np.random.default_rng(1).choice(args.n, args.sample, replace=False)
    spec = IndexSpec(kind="ivf", metric="l2", nprobe=16)
    runs = {"sparknn.grouped (exact up to 4096 items, ivf above)": lambda: within_groups(x, codes, args.k, spec)[0]}
    if not args.skip_loop:
        runs["loop: one sparknn ivf index per group"] = lambda: loop_baseline(x, codes, args.k, spec)
        runs["loop: one sparknn flat index per group"] = lambda: loop_baseline(
            x, codes, args.k, spec.replace(kind="flat"))
    for name, run in runs.items():
        t = time.perf_counter()
        rows = run()
        seconds = time.perf_counter() - t
        print(json.dumps({"engine": name, "seconds": round(seconds, 2),
                          "recall": round(sample_recall(x, codes, rows, sample, args.k), 4)}), flush=True)


if __name__ == "__main__":
    main()
