"""The user's job on Spark: the article's Annoy recipe versus KNN(...).fit(df).similarItems().

In one run, on the same fixed-seed data and the same local[2] Spark (loopback only): for each
data set, both pipelines read the same Parquet file with spark.read.parquet and write their
every-item-to-its-10-nearest table as Parquet. Each pipeline runs in its own process with a
fresh JVM (bench/spark_pipelines.py), so its memory peaks are its own:

- wall time from reading the Parquet to the written Parquet, split into build (read + index)
  and query + write;
- peak memory from the kernel's accounting (bench/spark_memory.py): the Python driver and the
  JVM (driver and executor in local mode) by VmHWM, the Python workers by their summed RSS;
- recall@10 against exact cosine search (sparknn flat) on a fixed sample of items, the item
  itself excluded (the recipe keeps it at rank 0 of its top 11).

    python bench/bench_spark.py                              # 50k x 128, 200k x 128, 500k x 100
    python bench/bench_spark.py --datasets 50k-128 --annoy-timeout-min 5
    python bench/bench_spark.py --variants 0:0 2:3            # KNN's defaults; nlist = 2 sqrt(n), nprobe=3
    python bench/bench_spark.py --datasets 1m-100 --annoy-timeout-min 30 --out bench/results/spark_1m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import datasets  # noqa: E402
from spark_memory import TreeMemory  # noqa: E402

# name -> (n, dim, seed): Gaussian clusters (1000 centres) from bench/datasets.py; seed None:
# Fashion-MNIST's 60k training images (Debian's dataset-fashion-mnist)
DATASETS = {"50k-128": (50_000, 128, 3), "200k-128": (200_000, 128, 1), "500k-100": (500_000, 100, 4),
            "1m-100": (1_000_000, 100, 5), "200k-768": (200_000, 768, 6), "500k-768": (500_000, 768, 7),
            "fmnist-60k": (60_000, 784, None)}
DEFAULT_DATASETS = ["50k-128", "200k-128", "500k-100"]  # 1m-100 on request: the recipe takes ~7 min a run
K = 10


def write_items(name: str, workdir: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Writes the data set as Parquet (id int64, vector array<float>); returns (path, ids, vectors)."""
    n, dim, seed = DATASETS[name]
    vectors = datasets.clustered(n, dim, 0, seed=seed).base if seed is not None else datasets.fashion_mnist(0).base
    # Real ids are not Annoy's 0..n-1 positions, so the recipe's id mapping does real work.
    ids = 10_000_000 + np.random.default_rng(seed or 0).permutation(n).astype(np.int64)
    path = os.path.join(workdir, f"items-{name}.parquet")
    vector_col = pa.ListArray.from_arrays(np.arange(0, n * dim + 1, dim, dtype=np.int32), vectors.reshape(-1))
    table = pa.table({"id": ids, "vector": vector_col})
    # Row groups of 25k rows let Spark split the file among its 2 cores.
    pq.write_table(table, path, row_group_size=25_000)
    return path, ids, vectors


def exact_neighbours(ids: np.ndarray, vectors: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The K exact cosine neighbours (ids) of vectors[sample], the item itself excluded."""
    import sparknn

    index = sparknn.Index(vectors.shape[1], metric="cosine", kind="flat")
    index.add(vectors, ids=ids)
    found, _ = index.search(vectors[sample], k=K + 1)
    out = np.empty((len(sample), K), dtype=np.int64)
    for row, (self_id, cand) in enumerate(zip(ids[sample], found)):
        out[row] = cand[cand != self_id][:K]
    return out


def engine_reference(ids: np.ndarray, vectors: np.ndarray) -> dict:
    """The engine alone, no Spark: HNSW build (KNN's defaults, all threads) and every item's search."""
    import sparknn

    t = time.perf_counter()
    index = sparknn.Index(vectors.shape[1], metric="cosine", kind="hnsw")
    index.add(vectors, ids=ids)
    build = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, len(vectors), 65_536):
        index.search(vectors[start:start + 65_536], k=K + 1)
    return {"engine_build_s": round(build, 2), "engine_search_all_s": round(time.perf_counter() - t, 2)}


def read_neighbours(pipeline: str, output: str, wanted: np.ndarray) -> tuple[dict, int, int]:
    """({id: neighbour ids, nearest first} for the wanted ids, rows, fewest neighbours in any row)."""
    table = pq.read_table(output)
    column = table.column("similar" if pipeline == "annoy" else "neighbors")
    fewest = pc.min(pc.list_value_length(column)).as_py() if len(table) else 0
    table = table.filter(pc.is_in(table.column("id"), pa.array(wanted)))
    if pipeline == "annoy":  # similar: [[rank, id], ...] in rank order
        lists = [[pair[1] for pair in row] for row in table.column("similar").to_pylist()]
    else:  # neighbors: [{id, distance}, ...] nearest first
        lists = [[x["id"] for x in row] for row in table.column("neighbors").to_pylist()]
    return dict(zip(table.column("id").to_pylist(), lists)), column.length(), fewest


def recall(found: dict, ids: np.ndarray, sample: np.ndarray, truth: np.ndarray) -> float:
    hits = 0
    for self_id, exact in zip(ids[sample].tolist(), truth):
        got = [int(x) for x in found.get(self_id, []) if int(x) != self_id][:K]
        hits += len(set(got) & set(exact.tolist()))
    return hits / truth.size


def kill_tree(proc: subprocess.Popen, pids: set) -> None:
    """Ends the run we started: its process group, then any of its recorded processes left over."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_pipeline(pipeline: str, items: str, args, nlist: int = 0, nprobe: int = 0, rerank: int = -1,
                 first_pass: str = "") -> dict:
    output = os.path.join(args.workdir, f"out-{pipeline}-{nlist}-{nprobe}-{rerank}-{first_pass}-"
                                        f"{os.path.basename(items)}")
    result = output + ".json"
    shutil.rmtree(output, ignore_errors=True)
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, os.path.join(HERE, "spark_pipelines.py"), pipeline, items, output,
           "--result", result, "--workdir", args.workdir, "--index-type", args.index_type, "--ivf-mode", args.ivf_mode,
           "--master", args.master, "--driver-memory", args.driver_memory,
           "--nlist", str(nlist), "--nprobe", str(nprobe), "--rerank", str(rerank), "--first-pass", first_pass]
    timeout = 60 * (args.annoy_timeout_min if pipeline == "annoy" else args.sparknn_timeout_min)
    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mem = TreeMemory(proc.pid).start()
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        mem.stop()
        kill_tree(proc, mem.pids)
        log, status = b"", f"did not finish in {timeout // 60} min"
    mem.stop()
    row = {"pipeline": pipeline, "status": status, "process_s": round(time.perf_counter() - t, 1),
           "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in os.getloadavg()],
           "load_1min_during": {"min": round(min(mem.loads), 2), "max": round(max(mem.loads), 2),
                                "median": round(float(np.median(mem.loads)), 2)},
           "py_driver_peak_bytes": mem.driver_hwm, "jvm_peak_bytes": mem.jvm_hwm,
           "py_workers_peak_rss_bytes": mem.workers_rss, "py_workers_peak_pss_bytes": mem.workers_pss}
    if status == "ok":
        with open(result) as f:
            row.update(json.load(f))
        row["output"] = output
    else:
        tail = log.decode(errors="replace")[-3000:]
        row["log_tail"] = tail
        print(tail, file=sys.stderr)
    return row


def median_run(runs: list) -> dict:
    """The run with the median wall time (the lower middle one of an even count); a failure if none ran."""
    ok = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: r["wall_s"])
    if not ok:
        return runs[0]
    row = dict(ok[(len(ok) - 1) // 2])
    row["runs_ok"] = f"{len(ok)}/{len(runs)}"
    row["wall_s_all"] = [r["wall_s"] for r in ok]
    row["failed_runs"] = [r["status"] for r in runs if r["status"] != "ok"]
    return row


def gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes else "-"


def table(rows: list) -> str:
    head = ("| dataset | pipeline | wall s (median run) | all walls s | build s | query+write s "
            "| Python driver peak | JVM peak (driver+executor) | Python workers peak (sum RSS / PSS) "
            "| recall@10 | speedup |")
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        memory = (f"{gib(r['py_driver_peak_bytes'])} | {gib(r['jvm_peak_bytes'])} | "
                  f"{gib(r['py_workers_peak_rss_bytes'])} / {gib(r['py_workers_peak_pss_bytes'])}")
        if r["status"] != "ok":
            lines.append(f"| {r['dataset']} | {r['label']} | {r['status']} | | | | {memory} | | |")
            continue
        speed = f"{r['speedup']:.1f}x" if r.get("speedup") else ""
        walls = ", ".join([f"{w:.0f}" for w in r["wall_s_all"]] + r["failed_runs"])
        lines.append(f"| {r['dataset']} | {r['label']} | {r['wall_s']:.1f} | {walls} | {r['build_s']:.1f} | "
                     f"{r['query_write_s']:.1f} | {memory} | {r['recall']:.4f} | {speed} |")
    return "\n".join(lines)


def phases(rows: list) -> str:
    """Where the time goes: each pipeline's phases, and the engine alone on the same vectors."""
    lines = ["| dataset | pipeline | phase seconds |", "| --- | --- | --- |"]
    names = {"session_s": "session start (not in wall)", "collect_s": "read + toPandas",
             "annoy_build_s": "add_item loop + build(100)", "query_s": "addFile + mapPartitions + collect",
             "map_ids_s": "pandas + id mapping", "to_spark_write_s": "createDataFrame + write",
             "build_s": "read + fit", "query_write_s": "similarItems + write",
             "engine_build_s": "engine alone: HNSW build", "engine_search_all_s": "engine alone: search all"}
    for r in rows:
        if r["status"] != "ok":
            continue
        if r["pipeline"] == "annoy":
            keys = ["collect_s", "annoy_build_s", "query_s", "map_ids_s", "to_spark_write_s"]
        else:
            keys = ["build_s", "query_write_s", "engine_build_s", "engine_search_all_s"]
        parts = [f"{names[k]} {r[k]:.1f}" for k in ["session_s", *keys] if k in r]
        lines.append(f"| {r['dataset']} | {r['label']} | {'; '.join(parts)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=list(DATASETS))
    ap.add_argument("--pipelines", nargs="+", default=["annoy", "sparknn"], choices=["annoy", "sparknn"])
    ap.add_argument("--index-type", default="ivf", choices=["hnsw", "flat", "ivf"], help="sparknn's indexType")
    ap.add_argument("--ivf-mode", default="auto", choices=["auto", "driver", "routed"], help="sparknn's ivfMode")
    ap.add_argument("--variants", nargs="+", default=["0:0"], metavar="SCALE:NPROBE[:RERANK[:FIRSTPASS]]",
                    help="sparknn ivf runs, one row each: nlist = SCALE x sqrt(n) lists (0: KNN's default, "
                         "sqrt(n) since 2026-12-05, 4 sqrt(n) before), NPROBE lists searched per item "
                         "(0: KNN's default) and, when given, KNN's rerank (0: float32 scan; unset: 2 for "
                         "float32 lists, a bf16 scan re-ranked exactly; -1: unset) and KNN's firstPassDims "
                         "(auto, off or a count; unset: KNN's default, auto)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each pipeline, interleaved; the table shows the median run "
                         "(use 3 on a quiet machine)")
    ap.add_argument("--sample", type=int, default=2000, help="items whose recall@10 is checked")
    ap.add_argument("--annoy-timeout-min", type=int, default=20)
    ap.add_argument("--sparknn-timeout-min", type=int, default=20)
    ap.add_argument("--no-engine-reference", dest="engine_reference", action="store_false",
                    help="skip timing the engine alone (no Spark) on the same vectors")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--workdir", default="/tmp/sparknn-bench-spark", help="data, index and output files")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "spark"),
                    help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    command = "python bench/bench_spark.py " + " ".join(argv if argv is not None else sys.argv[1:])

    rows, all_runs = [], []
    for name in args.datasets:
        n, dim, _ = DATASETS[name]
        items, ids, vectors = write_items(name, args.workdir)
        sample = np.sort(np.random.default_rng(7).choice(n, min(args.sample, n), replace=False))
        truth = exact_neighbours(ids, vectors, sample)
        reference = engine_reference(ids, vectors) if args.engine_reference else {}
        del vectors
        print(f"\n## clustered {name}: {n} x {dim}, Parquet {os.path.getsize(items) / 1e6:.0f} MB; "
              f"engine alone: {reference}", flush=True)
        runs = []
        variants = [("annoy", 0, 0, -1, "")] if "annoy" in args.pipelines else []
        for v in args.variants if "sparknn" in args.pipelines else []:
            fields = v.split(":")
            fields += ["-1", ""][len(fields) - 2:]  # RERANK and FIRSTPASS unset when not given (or empty)
            scale, nprobe, rerank, first_pass = float(fields[0]), float(fields[1]), float(fields[2] or -1), fields[3]
            variants.append(("sparknn", round(scale * n**0.5), int(nprobe), int(rerank), first_pass))
        for repeat in range(args.repeats):  # interleaved, so every pipeline sees the same background load
            for pipeline, nlist, nprobe, rerank, first_pass in variants:
                row = run_pipeline(pipeline, items, args, nlist, nprobe, rerank, first_pass)
                key = (f"{pipeline}-{nlist}-{nprobe}" + (f"-{rerank}" if rerank >= 0 else "")
                       + (f"-{first_pass}" if first_pass else ""))
                row.update(dataset=f"{n // 1000}k x {dim}", repeat=repeat, variant=key, nlist=nlist, nprobe=nprobe)
                row.update(reference if pipeline == "sparknn" else {})
                settings = ", ".join([f"nlist={nlist}"] * bool(nlist) + [f"nprobe={nprobe}"] * bool(nprobe)
                                     + [f"rerank={rerank}"] * (rerank >= 0)
                                     + [f"firstPassDims={first_pass}"] * bool(first_pass))
                mode = f" {args.ivf_mode}" if args.ivf_mode != "auto" else ""
                settings = f", {settings}" if settings else " (defaults)"
                row["label"] = ("Annoy recipe (100 trees)" if pipeline == "annoy" else
                                f"sparknn KNN {args.index_type}{mode}{settings}")
                if row["status"] == "ok":
                    found, nrows, fewest = read_neighbours(pipeline, row.pop("output"), ids[sample])
                    row.update(recall=round(recall(found, ids, sample, truth), 4), rows=nrows,
                               fewest_neighbours=fewest)
                print(json.dumps({k: v for k, v in row.items() if k != "log_tail"}), flush=True)
                runs.append(row)
        all_runs += runs
        chosen = {key: median_run([r for r in runs if r["variant"] == key])
                  for key in dict.fromkeys(r["variant"] for r in runs)}
        annoy = chosen.get("annoy-0-0")
        for key, row in chosen.items():
            if key != "annoy-0-0" and annoy and annoy["status"] == "ok" and row["status"] == "ok":
                row["speedup"] = round(annoy["wall_s"] / row["wall_s"], 3)
        rows += chosen.values()

    md = table(rows) + "\n\n" + phases(rows)
    print("\n" + md + "\n\ncommand: " + command)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(md + "\n\nCommand: `" + command.strip() + "`\n")
    with open(args.out + ".json", "w") as f:
        json.dump({"command": command.strip(), "master": args.master, "driver_memory": args.driver_memory,
                   "index_type": args.index_type, "ivf_mode": args.ivf_mode, "sample": args.sample,
                   "repeats": args.repeats,
                   "median_rows": rows, "runs": all_runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
