"""A/B timing of flat and ivf search between two builds of sparknn, run alternately.

Usage: python bench/ab_search.py BEFORE_DIR [--rounds 7]

BEFORE_DIR holds a copy of the ``sparknn`` package with its built ``_core`` extension (e.g.
``cp -r python/sparknn DIR/ && cp <site-packages>/sparknn/_core*.so DIR/sparknn/``); the other
side is the sparknn this interpreter imports. Each round runs one subprocess per side, before
and after alternating (so load on a shared machine hits both alike); each subprocess builds the
same indexes and reports the median of several searches. The table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
before = sys.argv[1]
if before:
    # An editable install redirects `import sparknn` to the working tree: bypass it.
    sys.meta_path = [f for f in sys.meta_path if "Scikit" not in type(f).__name__]
    sys.path.insert(0, before)
import numpy as np
import sparknn

def timed(fn, reps=5):
    out = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2]

rng = np.random.default_rng(0)
res = {}
x = rng.standard_normal((100_000, 64), dtype=np.float32)
q = rng.standard_normal((2_000, 64), dtype=np.float32)
for metric in ("l2", "ip"):
    idx = sparknn.Index(64, metric, "flat", threads=2)
    idx.add(x)
    res[f"flat {metric} 100k x 64, 2k queries, k=10"] = timed(lambda: idx.search(q, k=10))
    res[f"flat {metric} 100k x 64, 20 queries, k=100"] = timed(lambda: idx.search(q[:20], k=100))
x2 = rng.standard_normal((200_000, 32), dtype=np.float32)
q2 = rng.standard_normal((20_000, 32), dtype=np.float32)
for storage in ("float32", "sq8"):
    idx = sparknn.Index(32, "l2", "ivf", nlist=512, nprobe=16, storage=storage, threads=2)
    idx.add(x2)
    res[f"ivf {storage} l2 200k x 32, 20k queries, k=10"] = timed(lambda: idx.search(q2, k=10), reps=3)
# Many exact ties: small-integer vectors.
xi = rng.integers(-2, 3, size=(100_000, 16)).astype(np.float32)
qi = rng.integers(-2, 3, size=(2_000, 16)).astype(np.float32)
idx = sparknn.Index(16, "l2", "flat", threads=2)
idx.add(xi)
res["flat l2 100k x 16 integer (ties), 2k queries, k=10"] = timed(lambda: idx.search(qi, k=10))
print(json.dumps(res))
"""


def run(before: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, before], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    a: dict[str, list[float]] = {}
    b: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for side, store in ((args.before, a), ("", b)) if r % 2 == 0 else (("", b), (args.before, a)):
            for name, t in run(side).items():
                store.setdefault(name, []).append(t)
    print(f"{'case':<55} {'before ms':>10} {'after ms':>10} {'after/before':>12}")
    for name in a:
        ma, mb = statistics.median(a[name]) * 1e3, statistics.median(b[name]) * 1e3
        print(f"{name:<55} {ma:>10.1f} {mb:>10.1f} {mb / ma:>12.3f}")


if __name__ == "__main__":
    main()
