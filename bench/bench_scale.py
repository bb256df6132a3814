"""Issue 4's scale run: the all-items self-join (top-10) on Spark local[2] with capped memory,
at growing N, from Parquet generated chunk by chunk; time per item, peak memory per process
(the kernel's VmHWM of the JVM, the Python driver and each Python worker), recall@10 on a fixed
sample of items against exact search.

    python bench/bench_scale.py --sizes 1000000 2000000 5000000 10000000
    python bench/bench_scale.py --sizes 1000000 --modes routed driver   # beside the single index

Data: Gaussian clusters (1000 centres, spread 0.35, float32), written as one Parquet file per
million rows (ids 0..N-1), so the N-item data set is the first N/1M files: generated once,
never held in memory whole. Each run is a fresh process (own JVM) under bench/spark_memory.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from spark_memory import TreeMemory  # noqa: E402

CHUNK = 1_000_000
K = 10
# Lines of a failed run's log that say why it failed (the JVM's or ours), in order of preference.
CAUSES = ("OutOfMemoryError", "InvalidArgumentError", "TaskMemoryError", "maxResultSize", "MemoryError", "Killed")


def generate(workdir: str, n: int, dim: int, seed: int = 7) -> list[str]:
    """The first ceil(n / 1M) chunk files (written if missing): same centres for every chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(workdir, exist_ok=True)
    centres = np.random.default_rng(seed).standard_normal((1000, dim), dtype=np.float32)
    files = []
    for c in range((n + CHUNK - 1) // CHUNK):
        path = os.path.join(workdir, f"items-{dim}d-{c:03d}.parquet")
        files.append(path)
        if os.path.exists(path):
            continue
        rng = np.random.default_rng(seed * 1000 + c)
        x = centres[rng.integers(0, 1000, CHUNK)] + 0.35 * rng.standard_normal((CHUNK, dim), dtype=np.float32)
        ids = np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.int64)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim).cast(pa.list_(pa.float32()))
        tmp = path + ".tmp"
        pq.write_table(pa.table({"id": ids, "vector": vectors}), tmp, row_group_size=50_000)
        os.replace(tmp, path)
        print(f"  wrote {path}", flush=True)
    return files


def read_vectors(path: str, rows: np.ndarray | None = None) -> np.ndarray:
    import pyarrow.parquet as pq

    from sparknn.arrow import vectors_to_numpy

    col = pq.read_table(path, columns=["vector"]).column("vector")
    x = vectors_to_numpy(col, "vector")
    return x if rows is None else x[rows]


def exact_truth(files: list[str], sample: np.ndarray, metric: str) -> np.ndarray:
    """Exact top-(k+1) of the sample items over all chunks, one chunk in memory at a time."""
    import sparknn

    queries = np.concatenate([read_vectors(f, sample[(sample // CHUNK) == c] % CHUNK)
                              for c, f in enumerate(files)])
    assert np.all(np.diff(sample) > 0), "the sample must be sorted: queries are read chunk by chunk"
    best_ids = best_d = None
    for c, f in enumerate(files):
        index = sparknn.Index(queries.shape[1], metric, "flat")
        index.add(read_vectors(f), np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.int64))
        ids, d = index.search(queries, K + 1)
        if best_ids is None:
            best_ids, best_d = ids, d
        else:
            ids, d = np.concatenate([best_ids, ids], 1), np.concatenate([best_d, d], 1)
            o = np.argsort(d, axis=1, kind="stable")[:, :K + 1]
            best_ids, best_d = np.take_along_axis(ids, o, 1), np.take_along_axis(d, o, 1)
    return np.array([[j for j in row if j != i][:K] for i, row in zip(sample, best_ids)])


def recall_of(output: str, sample: np.ndarray, truth: np.ndarray) -> tuple[float, int, int]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    data = ds.dataset(output, format="parquet")
    rows = data.count_rows()
    table = data.to_table(filter=pc.field("id").isin(sample.tolist()))
    got = {r["id"]: [n["id"] for n in r["neighbors"]] for r in table.to_pylist()}
    hits = sum(len(set(got.get(int(i), [])) & set(t.tolist())) for i, t in zip(sample, truth))
    fewest = min((len(v) for v in got.values()), default=0)
    return hits / (len(sample) * K), rows, fewest


def run_job(args) -> int:
    """In the child process: the Spark job itself."""
    from sparknn.spark import KNN
    from sparknn.spark.session import local_session

    t = time.perf_counter()
    spark = local_session("local[2]", "bench-scale", **{
        "spark.driver.memory": args.jvm_memory,
        "spark.sql.shuffle.partitions": "200",
        **dict(kv.split("=", 1) for kv in args.conf),
    })
    spark.sparkContext.setLogLevel("ERROR")
    times = {"session_s": time.perf_counter() - t}
    if args.mode == "annoy":  # the seed's recipe (bench/spark_pipelines.py), on the same files
        from spark_pipelines import run_annoy

        names = [os.path.basename(f)[:-len(".parquet")] for f in args.files]
        pattern = os.path.join(os.path.dirname(args.files[0]), "{" + ",".join(names) + "}.parquet")
        times.update(run_annoy(spark, pattern, args.output, args.workdir))
        times["fit_s"], times["similar_write_s"] = times["build_s"], times["query_write_s"]
        spark.stop()
        with open(args.result, "w") as f:
            json.dump(times, f)
        return 0
    t0 = time.perf_counter()
    df = spark.read.parquet(*args.files)
    where = {"indexPath": os.path.join(args.workdir, "index")}
    mode = args.mode
    if mode == "routed-returned":  # as on nodes that share no disk: the parts come back through Spark
        import sparknn.spark.estimator as estimator

        estimator.executors_see = lambda spark, root: False
        mode, where = "routed", {}
    mode = "routed" if mode == "routed-uri" else mode
    knn = KNN(k=K, metric=args.metric, indexType="ivf", ivfMode=mode, nprobe=args.nprobe,
              featuresCol="vector", idCol="id", **where)
    model = knn.fit(df)
    times["fit_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.similarItems().write.mode("overwrite").parquet(args.output)
    times["similar_write_s"] = time.perf_counter() - t1
    times["wall_s"] = time.perf_counter() - t0
    if args.mode == "routed-uri":  # the same self-join from the model saved at a URI only Spark resolves
        times.update(from_uri(spark, model, args))
    times["index_bytes"] = model.indexSizeBytes
    times["parts"] = len(model.layout.shards)
    spark.stop()
    with open(args.result, "w") as f:
        json.dump(times, f)
    return 0


def from_uri(spark, model, args) -> dict:
    """Save at a viewfs URI (Python cannot open it), load, and run the self-join twice from there:
    a routed model's parts then reach the tasks as chunk rows (the second run finds them cached)."""
    from sparknn.spark import KNNModel

    backing = os.path.join(args.workdir, "store")
    os.makedirs(backing, exist_ok=True)
    spark.sparkContext._jsc.hadoopConfiguration().set("fs.viewfs.mounttable.bench.link./store", f"file://{backing}")
    times, uri = {}, "viewfs://bench/store/model"
    t = time.perf_counter()
    model.write().overwrite().save(uri)
    times["uri_save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = KNNModel.load(uri)
    times["uri_load_s"] = time.perf_counter() - t
    for key in ("uri_similar_write_s", "uri_similar_again_s"):
        t = time.perf_counter()
        loaded.similarItems().write.mode("overwrite").parquet(args.output + "-uri")
        times[key] = time.perf_counter() - t
    times["uri_rows"] = spark.read.parquet(args.output + "-uri").count()
    return times


def measure(n: int, mode: str, files: list[str], args) -> dict:
    output = os.path.join(args.workdir, f"out-{mode}-{n}")
    result = output + ".json"
    subprocess.run(["rm", "-rf", output, result, os.path.join(args.workdir, "index")], check=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--run", "--mode", mode, "--output", output,
           "--result", result, "--workdir", args.workdir, "--metric", args.metric, "--nprobe", str(args.nprobe),
           "--jvm-memory", args.jvm_memory, "--conf", *args.conf, "--files", *files]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mem = TreeMemory(proc.pid).start()
    try:
        log, _ = proc.communicate(timeout=args.timeout_min * 60)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)])
        log, status = b"", f"did not finish in {args.timeout_min} min"
    mem.stop()
    row = {"n": n, "mode": mode, "status": status, "jvm_memory": args.jvm_memory, "conf": args.conf,
           "process_s": round(time.perf_counter() - t, 1),
           "raw_vector_bytes": n * args.dim * 4, "jvm_peak": mem.jvm_hwm, "py_driver_peak": mem.driver_hwm,
           "py_worker_peak": mem.worker_hwm, "py_workers_sum_rss_peak": mem.workers_rss,
           "load_1min_median": round(float(np.median(mem.loads)), 2)}
    if status == "ok":
        with open(result) as f:
            row.update(json.load(f))
    else:
        text = log.decode(errors="replace")
        row["log_tail"] = text[-2000:]
        lines = text.splitlines()
        row["cause"] = next((line.strip()[:400] for c in CAUSES for line in lines if f"{c}:" in line), None)
        print(row["log_tail"], file=sys.stderr)
    return row


def plot(rows: list, path: str) -> None:
    """Time per item against N (log x), one line per mode: flat is what the issue asks for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for mode in sorted({r["mode"] for r in rows}):
        ok = sorted((r["n"], r["us_per_item"]) for r in rows if r["mode"] == mode and r.get("us_per_item"))
        if ok:
            ax.plot([n / 1e6 for n, _ in ok], [u for _, u in ok], marker="o", label=f"sparknn ivf ({mode})")
    failed = sorted({r["mode"] for r in rows if r["status"] != "ok"} - {r["mode"] for r in rows if r["status"] == "ok"})
    if failed:
        names = {"driver": "single index on the driver", "annoy": "Annoy recipe"}
        ax.text(0.02, 0.04, "failed at every N: " + ", ".join(names.get(m, m) for m in failed),
                transform=ax.transAxes, fontsize=8, color="firebrick")
    ax.set_xscale("log")
    ax.set_xlabel("items N (millions), 128-d float32")
    ax.set_ylabel("wall time per item (us)")
    ax.set_ylim(bottom=0)
    ax.set_title("Spark local[2] self-join top-10, wall / N")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    out = ["| N | mode | status | wall s | us / item | fit s | similarItems + write s | parts | JVM peak GiB | "
           "Python driver peak GiB | largest Python worker peak GiB | raw vectors GiB | recall@10 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["mode"], r["n"])):
        ok = r["status"] == "ok"
        out.append(f"| {r['n']:,} | {r['mode']} | {r['status']} | {r['wall_s']:.0f} | {r['us_per_item']} | "
                   f"{r['fit_s']:.0f} | {r['similar_write_s']:.0f} | {r.get('parts', '-')} | " if ok else
                   f"| {r['n']:,} | {r['mode']} | {r['status']}: {r.get('cause') or 'see log_tail'} | "
                   f"- | - | - | - | - | ")
        out[-1] += (f"{gib(r['jvm_peak'])} | {gib(r['py_driver_peak'])} | {gib(r['py_worker_peak'])} | "
                    f"{gib(r['raw_vector_bytes'])} | {r.get('recall', '-')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    ap.add_argument("--modes", nargs="+", default=["routed"],
                    choices=["routed", "routed-returned", "routed-uri", "driver", "annoy"],
                    help="routed / driver: sparknn KNN(indexType='ivf', ivfMode=...); routed-uri: routed, then the "
                         "self-join again from the model saved at a URI; annoy: the seed's recipe")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--metric", default="l2")
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--jvm-memory", default="1g", help="spark.driver.memory (local mode: driver and executor)")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Spark settings of the measured jobs (e.g. spark.shuffle.io.preferDirectBufs=false)")
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--timeout-min", type=int, default=60)
    ap.add_argument("--workdir", default="/tmp/sparknn-bench-scale")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scale.json"))
    ap.add_argument("--report", action="store_true", help="only print the table and redraw the plot from --out")
    # child-process arguments
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="routed", help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        return run_job(args)
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    if args.report:
        print(table(rows))
        plot(rows, os.path.splitext(args.out)[0] + ".png")
        return 0
    for n in args.sizes:
        files = generate(args.workdir, n, args.dim)
        sample = np.sort(np.random.default_rng(3).choice(n, min(args.sample, n), replace=False))
        truth = None
        for mode in args.modes:
            row = measure(n, mode, files, args)
            if row["status"] == "ok" and mode == "annoy":
                row["us_per_item"] = round(row["wall_s"] / n * 1e6, 1)  # recall: see bench_spark.py
            elif row["status"] == "ok":
                if truth is None:
                    t = time.perf_counter()
                    truth = exact_truth(files, sample, args.metric)
                    print(f"  exact truth for {len(sample)} items: {time.perf_counter() - t:.0f} s", flush=True)
                row["recall"], row["rows"], row["fewest_neighbours"] = recall_of(
                    os.path.join(args.workdir, f"out-{mode}-{n}"), sample, truth)
                row["us_per_item"] = round(row["wall_s"] / n * 1e6, 1)
            print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
            rows = [r for r in rows if (r["n"], r["mode"]) != (n, mode)] + [row]
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
