"""A/B of whole benchmarks between two checkouts of sparknn, run alternately in one session.

Usage:
    python bench/ab_builds.py BEFORE_ROOT AFTER_ROOT [--rounds 3] [--only selfjoin spark]

Each ROOT is a checkout whose ``python/sparknn`` holds a built ``_core`` extension (e.g. a
``git worktree`` with the ``_core*.so`` of a Release build of that commit copied in). Run it
with a Python that has no sparknn installed: an editable install's import hook comes before
``PYTHONPATH``, and both sides would run the installed package. Each
round runs every benchmark once per side, before and after alternating (a shared machine's
load hits both alike), with ``PYTHONPATH=ROOT/python`` so that the process, its children and
Spark's Python workers all import that side's package. Benchmarks (their own scripts, this
checkout's copies, so both sides run the same benchmark code):

- ``selfjoin``: bench/bench_selfjoin.py, sparknn ivf at 1M x 128 (nprobe 16): build and total s;
- ``spark``: bench/bench_spark.py, the sparknn pipeline on 500k x 100 with KNN's defaults on
  local[2]: wall s (read Parquet to written Parquet), build and query phases;
- ``routed``: bench/bench_scale.py, the routed ivf self-join at 1M x 100 on local[2] (nprobe 8,
  1 GiB JVM): wall s.

Prints a Markdown table of medians over rounds and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _selfjoin(out: str) -> tuple[list[str], callable]:
    cmd = [sys.executable, os.path.join(HERE, "bench_selfjoin.py"), "--n", "1000000", "--dim", "128",
           "--engines", "sparknn-ivf", "--nprobe", "16", "--threads", "2", "--out", out]

    def read() -> dict:
        with open(out) as f:
            row = json.load(f)[0]
        return {"build s": row["build_s"], "total s": row["total_s"], "recall@10": row["recall"]}

    return cmd, read


def _spark(out: str) -> tuple[list[str], callable]:
    cmd = [sys.executable, os.path.join(HERE, "bench_spark.py"), "--datasets", "500k-100", "--pipelines", "sparknn",
           "--no-engine-reference", "--out", out]

    def read() -> dict:
        with open(out + ".json") as f:
            row = json.load(f)["median_rows"][0]
        if row["status"] != "ok":
            raise RuntimeError(f"bench_spark failed: {row.get('log_tail', '')[-2000:]}")
        return {"wall s": row["wall_s"], "build s": row.get("build_s"), "query + write s": row.get("query_write_s"),
                "recall@10": row["recall"]}

    return cmd, read


def _routed(out: str) -> tuple[list[str], callable]:
    cmd = [sys.executable, os.path.join(HERE, "bench_scale.py"), "--sizes", "1000000", "--dim", "100", "--modes",
           "routed", "--sample", "1000", "--out", out, "--workdir", "/tmp/sparknn-bench-scale-100"]

    def read() -> dict:
        with open(out) as f:
            row = json.load(f)[0]
        if row["status"] != "ok":
            raise RuntimeError(f"bench_scale failed: {row.get('cause')}")
        return {"wall s": row["wall_s"], "recall@10": row["recall"]}

    return cmd, read


BENCHES = {"selfjoin": _selfjoin, "spark": _spark, "routed": _routed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    args = ap.parse_args(argv)
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    results = {(b, s): [] for b in args.only for s in sides}
    tmp = tempfile.mkdtemp(prefix="sparknn-ab-")
    for r in range(args.rounds):
        for bench in args.only:
            for side, root in (sides.items() if r % 2 == 0 else reversed(list(sides.items()))):
                cmd, read = BENCHES[bench](os.path.join(tmp, f"{bench}-{side}-{r}"))
                env = {**os.environ, "PYTHONPATH": os.path.join(root, "python"), "SPARK_LOCAL_IP": "127.0.0.1"}
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=os.path.dirname(HERE))
                results[(bench, side)].append(read())
                print(json.dumps({"round": r, "bench": bench, "side": side, **results[(bench, side)][-1]}),
                      flush=True)
    print(f"\n| benchmark | measure | before (median of {args.rounds}) | after | after / before |")
    print("|---|---|---|---|---|")
    for bench in args.only:
        for measure in results[(bench, "before")][0]:
            b = [x[measure] for x in results[(bench, "before")] if x[measure] is not None]
            a = [x[measure] for x in results[(bench, "after")] if x[measure] is not None]
            if not a or not b:
                continue
            mb, ma = statistics.median(b), statistics.median(a)
            print(f"| {bench} | {measure} | {mb:.4g} | {ma:.4g} | {ma / mb:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
