"""Long vectors (issue 15): sparknn against faiss and hnswlib at 784 and 768 dimensions, in one
run on the same data, every engine on --threads threads (2 by default).

Data sets (``--sets``):

- ``fmnist``: Fashion-MNIST from Debian's ``dataset-fashion-mnist``, 784 dims, L2 on raw pixels.
  The self-join takes all 70k images (train + test); the HNSW and storage parts index the 60k
  train images and query the 10k test images. ``--fmnist-n`` subsamples both item sets.
- ``clustered``: ``--n`` x ``--dim`` (500k x 768) Gaussian clusters (``datasets.clustered``:
  sqrt(n) centres ~ N(0, 1), spread 0.35 per coordinate, fixed seed), cosine; the queries are
  ``--queries`` further draws from the same clusters, held out of the items.

Parts (``--parts``):

- ``selfjoin``: every item's top-10 among the others, build included. ``sparknn similar`` with
  its defaults (ivf, recall target 0.95) as a subprocess on a Parquet file of (id, vector)
  written first: its wall clock, and the steps and the recall-target line of its summary.
  Against faiss IndexIVFFlat (nlist = 4 sqrt(n), trained on ``--train-per-list`` x nlist sampled
  items) and hnswlib (M=16, ef_construction=200), in-process: nprobe / ef is the least of the
  ladder 1, 2, 4, 8, ... (ef at least k + 1) whose recall@10 reaches 0.95 on 1000 sampled items,
  chosen on the first round's build; their time is train + add + search of all n at that value,
  the tuning's searches reported apart. Recall@10 on 2000 other sampled items against exact
  search (sparknn flat), the item itself excluded. ``--repeats`` rounds, engines interleaved
  (the order rotates), medians reported. Speedup: the fastest peer reaching recall 0.95 over
  sparknn's wall clock (which also counts process start, Parquet read and write and its tuning).
- ``lists``: why ``sparknn similar`` takes sqrt(n) lists: sparknn ivf in-process at nlist = 1, 2 and 4
  sqrt(n) (k-means on the default sample), each item's nearest lists in one pass, the least nprobe whose
  recall@10 reaches 0.95 on ``--tune-sample`` items (itself excluded), then the search of all n at it:
  the seconds of train, assign (+ add) and search, and their sum.
- ``exact``: exact search at long dimensions: ``--exact-queries`` of the held-out queries against the
  items, sparknn flat against faiss IndexFlat (L2, or inner product on unit vectors for cosine) and
  the floor, numpy's sgemm of the same product without any selection (``queries @ items.T`` into a
  matrix allocated and written before the clock starts):
  queries/s and GFLOP/s (2 n nq dim per search), median of ``--repeats`` interleaved timings, and
  the share of sgemm's rate each reaches; the two engines' top-10 ids agree (reported).
- ``coldstart``: the first call in a fresh process against the second (issue 15's cold start):
  ``--repeats`` new processes each load the data set into memory and run every step twice:
  ``sparknn similar`` with its defaults (``cli.main``: the whole command but the interpreter's start
  and imports) on a Parquet file of the items, an ivf self-join
  in-process (train, assign + add, tune to recall 0.95, search every item), flat add + 1000
  queries, hnsw build on ``--cold-hnsw-n`` items + 1000 queries at ef 32; per step the medians
  of both rounds and their ratio.
- ``hnsw``: sparknn hnsw, hnswlib and faiss IndexHNSWFlat (M=16, ef_construction=200) built on
  the items, then the held-out queries at ef 10 ... 256: recall@10 and queries/s (median of
  ``--repeats`` interleaved timings), the queries/s at recall 0.95 interpolated on each curve
  (linear in recall, geometric in queries/s), and the ratios to sparknn.
- ``storage``: sparknn flat, hnsw and ivf stored as float32, fp16, bf16 (and sq8 for ivf): file
  size of the saved index and recall@10 on the held-out queries (hnsw at ``--storage-ef``, ivf
  at ``--storage-nprobe``), with the difference to float32 of the same kind. A storage the
  build does not know is reported as "not available in this build".

The machine is shared: each part prints the 1-minute load average seen before and after it;
compare rows of one table, not tables of different runs. Markdown tables go to stdout, the
numbers to a JSON file (``--out``, default bench/results/longvec.json; ``--plot`` adds the HNSW
curves as a PNG beside it when matplotlib is importable).

    pip install faiss-cpu hnswlib        # the peers (missing ones are skipped and named)
    python bench/bench_longvec.py                                          # full size
    python bench/bench_longvec.py --sets clustered --n 20000 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datasets
import engines

K = 10
TARGET = 0.95
EFS = (10, 16, 32, 64, 128, 256)
HNSW_M, HNSW_EFC = 16, 200
PEERS = {"faiss": "faiss-cpu", "hnswlib": "hnswlib"}


# --------------------------------------------------------------------------- environment
def missing_peers() -> dict:
    """Peer module -> why it cannot be imported (empty when all are there)."""
    missing = {}
    for module in PEERS:
        try:
            __import__(module)
        except ImportError as e:
            missing[module] = str(e)
    return missing


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_kind() -> str:
    """The CPU's model name, family/model and the engine's SIMD level: results differ by CPU kind."""
    import sparknn

    name, family, model = "?", "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    name = value
                elif key == "cpu family":
                    family = value
                elif key == "model":
                    model = value
                if name != "?" and family != "?" and model != "?":
                    break
    except OSError:
        pass
    return f"{name} (family {family}, model {model}), {sparknn.simd_level()}"


def blas_cores() -> dict:
    """The kernels each OpenBLAS in play picked for this CPU (OPENBLAS_VERBOSE=2 prints them as
    it loads): numpy's, sparknn's and faiss's are three copies of three versions, and an old one
    can fail to recognise a new CPU and fall back to slow generic kernels (faiss-cpu 1.15.1's
    OpenBLAS 0.3.15 runs "Prescott" SSE3 code on the Intel Xeon family 6 model 207 unless
    OPENBLAS_CORETYPE is set), which would make a side-by-side unfair."""
    def cores(code: str) -> list:
        env = {**os.environ, "OPENBLAS_VERBOSE": "2"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        return [line.split(":", 1)[1].strip() for line in (out.stdout + out.stderr).splitlines()
                if line.startswith("Core:")]
    found = {"numpy": cores("import numpy")}
    for name, code in (("sparknn", "import numpy, sparknn"), ("faiss", "import numpy, faiss")):
        extra = cores(code)
        for core in found["numpy"]:
            if core in extra:
                extra.remove(core)
        if extra:
            found[name] = extra[0]
    found["numpy"] = found["numpy"][0] if found["numpy"] else "?"
    return found


def git_head() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def limit_threads(threads: int) -> None:
    """The BLAS and OpenMP pools of this process (faiss) and of the CLI subprocess."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


# --------------------------------------------------------------------------- data
class LongSet:
    """One data set: the self-join's items, and the items / held-out queries of the other parts."""

    def __init__(self, name: str, metric: str, join: np.ndarray, base: np.ndarray, queries: np.ndarray):
        self.name, self.metric, self.join, self.base, self.queries = name, metric, join, base, queries


def subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(x):
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]


def load_fmnist(n: int, nq: int) -> LongSet:
    fm = datasets.fashion_mnist(10_000)
    everything = np.concatenate([fm.base, fm.queries])  # the self-join takes train + test
    return LongSet("fashion-mnist-784", "l2", subsample(everything, n, 1), subsample(fm.base, n, 2),
                   fm.queries[:nq])


def load_clustered(n: int, dim: int, nq: int) -> LongSet:
    ds = datasets.clustered(n, dim, nq, clusters=max(1, round(math.sqrt(n))), seed=15, metric="cosine")
    return LongSet(ds.name, "cosine", ds.base, ds.base, ds.queries)


# --------------------------------------------------------------------------- exact answers, recall
def exact(x: np.ndarray, queries: np.ndarray, metric: str, threads: int, k: int) -> np.ndarray:
    import sparknn

    flat = sparknn.Index(x.shape[1], metric=metric, kind="flat", threads=threads)
    flat.add(x)
    return flat.search(queries, k)[0]


def exact_others(x: np.ndarray, rows: np.ndarray, metric: str, threads: int) -> np.ndarray:
    """The exact top-K of each sampled item among the other items."""
    found = exact(x, x[rows], metric, threads, K + 1)
    return np.array([[j for j in row if j != i][:K] for row, i in zip(found, rows)])


def recall_others(found: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float:
    """Recall@K of a self-join's rows (K + 1 found, the item itself dropped where it is)."""
    hits = 0
    for got, want, i in zip(found, truth, rows):
        hits += len(set([j for j in got if j != i][:K]) & set(want.tolist()))
    return hits / truth.size


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(f[:K], t)) for f, t in zip(found, truth)) / truth.size


# --------------------------------------------------------------------------- self-join: sparknn CLI
def write_items(x: np.ndarray, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"id": np.arange(len(x)), "vector": vectors}), path, row_group_size=50_000)


def cli_command() -> list:
    """The venv's ``sparknn`` script beside this Python, else ``python -m sparknn``."""
    script = os.path.join(os.path.dirname(sys.executable), "sparknn")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "sparknn"]


def parse_summary(stdout: str) -> dict:
    """The steps of the "wrote ..." line and the recall-target line of ``sparknn similar``."""
    out = {"steps": {}, "tuning": None}
    for line in stdout.splitlines():
        m = re.match(r"wrote .* in ([\d.]+) s \((.*)\)$", line)
        if m:
            out["total_s"] = float(m.group(1))
            for step in m.group(2).split(", "):
                name, sec, _ = step.rsplit(" ", 2)
                out["steps"][name] = float(sec)
        if line.startswith("recall target: "):
            out["tuning"] = line[len("recall target: "):]
            m = re.match(r"(\w+) (\d+): recall@\d+ ([\d.]+)", out["tuning"])
            if m:
                out["knob"], out["tune_recall"] = f"{m.group(1)}={m.group(2)}", float(m.group(3))
    return out


def _high_water_kib(pid: int) -> int:
    """VmHWM of a running process (KiB), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def compile_package() -> None:
    """Byte-compiles the sparknn package the CLI imports, as pip does when it installs a wheel: an
    editable install under PYTHONDONTWRITEBYTECODE (this project's machines set it) compiled every
    module of the package at each start, 0.08-0.10 s of the measured command that no installed
    copy pays."""
    import compileall

    import sparknn

    compileall.compile_dir(os.path.dirname(sparknn.__file__), quiet=1)


def run_cli(items: str, work: str, metric: str, threads: int, rows: np.ndarray) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = os.path.join(work, "similar.parquet")
    cmd = cli_command() + ["similar", items, "-o", out, "--metric", metric, "--threads", str(threads), "--overwrite"]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        peak_kib = 0
        done = threading.Event()

        def sample_peak() -> None:  # the command's own high-water mark: VmHWM starts afresh at exec,
            nonlocal peak_kib  # ru_maxrss keeps this forking process's
            while not done.wait(0.05):
                peak_kib = max(peak_kib, _high_water_kib(child.pid))

        sampler = threading.Thread(target=sample_peak, daemon=True)
        sampler.start()
        child.wait()  # the wall clock at its exit (polling every 50 ms added up to 50 ms)
        wall = time.perf_counter() - t
        done.set()
        sampler.join()
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read(), stderr.read()
    if child.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {errors.strip()}")
    table = pq.read_table(out, columns=["id", "neighbors"])  # rows in no particular order: by id
    position = np.empty(len(table), dtype=np.int64)
    position[table.column("id").to_numpy()] = np.arange(len(table))
    neighbours = table.column("neighbors").take(pa.array(position[rows])).to_pylist()
    os.remove(out)
    summary = parse_summary(text)
    found = np.array([[nb["id"] for nb in row[:K]] + [-1] * (K - len(row)) for row in neighbours])
    steps = summary["steps"]
    def summed(*names):  # the summary's steps (start, read, build, recall tuning, search, write)
        found = [steps[name] for name in names if name in steps]
        return sum(found) if found else None

    return {"total_s": wall, "build_s": summed("read", "build", "read + build"),
            "search_s": summed("search", "write", "search + write"),
            "tune_s": steps.get("recall tuning"), "tune_recall": summary.get("tune_recall"),
            "knob": summary.get("knob", "defaults"), "found": found, "peak_rss_gb": peak_kib / 2**20,
            "summary": text.splitlines()[:2]}


# --------------------------------------------------------------------------- self-join: peers
def ladder(start: int, stop: int) -> list:
    """1, 2, 4, ... up to ``stop``, each at least ``start`` (no repeats)."""
    out, v = [], 1
    while v < stop:
        if max(v, start) not in out:
            out.append(max(v, start))
        v *= 2
    return out + [stop] if stop not in out else out


def tune(search, values: list, tune_rows: np.ndarray, tune_truth: np.ndarray) -> tuple:
    """(value, recall, seconds): the least of ``values`` whose recall on the sample reaches TARGET
    (the last one tried when none does)."""
    t = time.perf_counter()
    for v in values:
        r = recall_others(search(tune_rows, v), tune_truth, tune_rows)
        if r >= TARGET:
            break
    return v, r, time.perf_counter() - t


def run_faiss_ivf(x, metric, threads, knob, tuning, train_per_list):
    import faiss

    faiss.omp_set_num_threads(threads)
    n, dim = x.shape
    nlist = max(1, round(4 * math.sqrt(n)))
    t = time.perf_counter()
    xs = engines._faiss_prepare(x, metric)  # cosine: unit vectors and inner product
    fmetric = engines._faiss_metric(faiss, metric)
    quantizer = faiss.IndexFlat(dim, fmetric)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, fmetric)
    sample = np.random.default_rng(0).choice(n, min(n, train_per_list * nlist), replace=False)
    index.train(xs[np.sort(sample)])
    index.add(xs)
    build = time.perf_counter() - t

    def search(rows, nprobe):
        index.nprobe = nprobe
        return index.search(xs[rows], K + 1)[1]

    out = {"params": f"nlist={nlist}"}
    if knob is None:
        knob, out["tune_recall"], out["tune_s"] = tune(search, ladder(1, nlist), *tuning)
    t = time.perf_counter()
    index.nprobe = knob
    found = index.search(xs, K + 1)[1]
    out.update(build_s=build, search_s=time.perf_counter() - t, knob=knob, all_found=found)
    return out


def run_hnswlib(x, metric, threads, knob, tuning, _train_per_list):
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space=metric, dim=x.shape[1])
    index.init_index(max_elements=len(x), M=HNSW_M, ef_construction=HNSW_EFC, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(x, np.arange(len(x)))
    build = time.perf_counter() - t

    def search(rows, ef):
        index.set_ef(ef)
        return index.knn_query(x[rows], k=K + 1)[0].astype(np.int64)

    out = {"params": f"M={HNSW_M} efC={HNSW_EFC}"}
    if knob is None:
        knob, out["tune_recall"], out["tune_s"] = tune(search, ladder(K + 1, max(K + 1, min(len(x), 4096))),
                                                       *tuning)
    t = time.perf_counter()
    index.set_ef(knob)
    found = index.knn_query(x, k=K + 1)[0]
    out.update(build_s=build, search_s=time.perf_counter() - t, knob=knob, all_found=found)
    return out


SELFJOIN_PEERS = {"faiss IndexIVFFlat": ("faiss", run_faiss_ivf, "nprobe"),
                  "hnswlib": ("hnswlib", run_hnswlib, "ef")}


def part_selfjoin(s: LongSet, args, missing: dict, work: str) -> dict:
    x, threads = s.join, args.threads
    rng = np.random.default_rng(3)
    picked = rng.choice(len(x), min(len(x), args.sample + args.tune_sample), replace=False)
    rows, tune_rows = np.sort(picked[:args.sample]), np.sort(picked[args.sample:])
    truth = exact_others(x, np.concatenate([rows, tune_rows]), s.metric, threads)
    truth, tuning = truth[:len(rows)], (tune_rows, truth[len(rows):])
    items = os.path.join(work, "items.parquet")
    write_items(x, items)
    contenders = {"sparknn similar (CLI defaults)": None}
    contenders.update({name: spec for name, spec in SELFJOIN_PEERS.items()
                       if spec[0] not in missing and spec[0] in args.selfjoin_peers})
    runs = {name: [] for name in contenders}
    knobs = {}
    compile_package()
    for r in range(args.repeats):
        names = list(contenders)
        for name in names[r % len(names):] + names[:r % len(names)]:  # interleaved: the order rotates
            if contenders[name] is None:
                res = run_cli(items, work, s.metric, threads, rows)
                res["recall"] = recall(res.pop("found"), truth)
            else:
                _, fn, knob_name = contenders[name]
                res = fn(x, s.metric, threads, knobs.get(name), tuning, args.train_per_list)
                knobs.setdefault(name, res["knob"])
                res["knob"] = f"{knob_name}={res['knob']}"
                res["total_s"] = res["build_s"] + res["search_s"]
                res["recall"] = recall_others(res.pop("all_found")[rows], truth, rows)
            res["load1"] = load1()
            runs[name].append(res)
            print(f"  {name} round {r + 1}: {res['total_s']:.1f} s, recall@10 {res['recall']:.4f}", file=sys.stderr,
                  flush=True)
    os.remove(items)
    summary = [summarise(name, rs) for name, rs in runs.items()]
    return {"n": len(x), "dim": x.shape[1], "metric": s.metric, "sample": len(rows), "tune_sample": len(tune_rows),
            "rows": summary}


# --------------------------------------------------------------------------- self-join: lists
def part_lists(s: LongSet, args) -> dict:
    import sparknn

    x, n = s.join, len(s.join)
    rows = np.sort(np.random.default_rng(3).choice(n, min(n, args.tune_sample), replace=False))
    truth = exact_others(x, rows, s.metric, args.threads)
    width, out = 32, []
    for factor in (1, 2, 4):
        nlist = max(1, round(factor * math.sqrt(n)))
        index = sparknn.Index(x.shape[1], s.metric, "ivf", nlist=nlist, threads=args.threads)
        t0 = time.perf_counter()
        index.train(x)
        t1 = time.perf_counter()
        nearest = index.nearest_lists(x, min(width, nlist))
        index.add(x, lists=nearest[:, :1])
        t2 = time.perf_counter()
        for nprobe in range(1, nearest.shape[1] + 1):
            found, _ = index.search(x[rows], K + 1, lists=np.ascontiguousarray(nearest[rows, :nprobe]))
            got = recall_others(found, truth, rows)
            if got >= TARGET:
                break
        t3 = time.perf_counter()
        index.search(x, K + 1, lists=np.ascontiguousarray(nearest[:, :nprobe]))
        t4 = time.perf_counter()
        out.append({"factor": factor, "nlist": nlist, "nprobe": nprobe, "recall": round(got, 4),
                    "train_s": round(t1 - t0, 2), "assign_s": round(t2 - t1, 2), "search_s": round(t4 - t3, 2),
                    "total_s": round(t1 - t0 + t2 - t1 + t4 - t3, 2)})
        print(f"  nlist {nlist}: {out[-1]}", file=sys.stderr, flush=True)
    return {"n": n, "dim": x.shape[1], "metric": s.metric, "rows": out}


def print_lists(name: str, res: dict) -> None:
    print(f"\n### Self-join lists: {name}, {res['n']:,} x {res['dim']}, {res['metric']} (sparknn ivf in-process)\n")
    print(f"| nlist | nprobe for recall@10 >= {TARGET} | recall | train s | assign + add s | search s | total s |")
    print("|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['nlist']} ({r['factor']} sqrt(n)) | {r['nprobe']} | {r['recall']:.4f} | {r['train_s']:.2f} | "
              f"{r['assign_s']:.2f} | {r['search_s']:.2f} | {r['total_s']:.2f} |")


# --------------------------------------------------------------------------- cold start
COLD_STEPS = ("similar (the CLI's job)", "ivf train", "ivf assign + add", "ivf tune", "ivf search",
              "flat add + search", "hnsw build", "hnsw search")


def coldstart_child(s: LongSet, args) -> dict:
    """Runs in a fresh process: the engine's steps twice each, on data already in memory; the
    seconds of each step in the first round (cold: thread pools, BLAS, allocator and page state
    as a new process has them) and the second (warm)."""
    import sparknn
    from sparknn import cli, machine
    from sparknn.index import default_rerank

    x, q, metric, threads = s.join, s.queries[:1000], s.metric, args.threads
    small = x[:args.cold_hnsw_n]
    work = tempfile.mkdtemp(prefix="sparknn-cold-", dir=args.workdir)
    items, out = os.path.join(work, "items.parquet"), os.path.join(work, "out.parquet")
    write_items(x, items)
    machine.reuse_freed_memory()  # as the command line sets it at its start
    rounds = []
    for _ in range(2):
        t = {}
        t0 = time.perf_counter()
        code = cli.main(["similar", items, "-o", out, "--metric", metric, "--threads", str(threads), "--overwrite",
                         "--quiet"])
        assert code == 0, code
        t["similar (the CLI's job)"] = time.perf_counter() - t0
        spec = sparknn.IndexSpec(kind="ivf", metric=metric, threads=threads, rerank=default_rerank("ivf", "float32"))
        spec = spec.for_items(len(x), batch=True)  # the command's index
        t0 = time.perf_counter()
        ivf = spec.create(x.shape[1])
        ivf.train(x)
        t1 = time.perf_counter()
        lists = ivf.nearest_lists(x, 16)
        ivf.add(x, lists=lists[:, :1])
        t2 = time.perf_counter()
        tuned = ivf.tune(TARGET, k=K)
        t3 = time.perf_counter()
        ivf.search(x, K + 1, lists=np.ascontiguousarray(lists[:, :tuned.value]))
        t4 = time.perf_counter()
        t.update({"ivf train": t1 - t0, "ivf assign + add": t2 - t1, "ivf tune": t3 - t2, "ivf search": t4 - t3})
        del ivf, lists
        t0 = time.perf_counter()
        flat = sparknn.Index(x.shape[1], metric, "flat", threads=threads)
        flat.add(x)
        flat.search(q, K)
        t1 = time.perf_counter()
        del flat
        hnsw = sparknn.Index(x.shape[1], metric, "hnsw", M=HNSW_M, ef_construction=HNSW_EFC, threads=threads)
        hnsw.add(small)
        t2 = time.perf_counter()
        hnsw.search(q, K, ef=32)
        t3 = time.perf_counter()
        del hnsw
        t.update({"flat add + search": t1 - t0, "hnsw build": t2 - t1, "hnsw search": t3 - t2})
        rounds.append({k: round(v, 3) for k, v in t.items()})
    shutil.rmtree(work, ignore_errors=True)
    return {"first": rounds[0], "second": rounds[1]}


def part_coldstart(s: LongSet, args) -> dict:
    """``--repeats`` fresh processes, each running coldstart_child: per step the median of the
    first and second rounds and their ratio (the issue: at most 1.2)."""
    runs = []
    for r in range(args.repeats):
        cmd = [sys.executable, os.path.abspath(__file__), "--coldstart-child", "--sets", s.key, "--n", str(args.n),
               "--dim", str(args.dim), "--fmnist-n", str(args.fmnist_n), "--threads", str(args.threads),
               "--cold-hnsw-n", str(args.cold_hnsw_n)]
        env = {**os.environ, "MIMALLOC_PURGE_DELAY": "-1"}  # as the command line sets it (cli.py)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  process {r + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    rows = []
    for step in COLD_STEPS:
        first = statistics.median(run["first"][step] for run in runs)
        second = statistics.median(run["second"][step] for run in runs)
        rows.append({"step": step, "first_s": round(first, 3), "second_s": round(second, 3),
                     "ratio": round(first / second, 2) if second else None})
    first, second = (sum(statistics.median(run[r][st] for run in runs) for st in COLD_STEPS)
                     for r in ("first", "second"))
    rows.append({"step": "all", "first_s": round(first, 3), "second_s": round(second, 3),
                 "ratio": round(first / second, 2)})
    return {"n": len(s.join), "dim": s.join.shape[1], "metric": s.metric, "processes": len(runs),
            "hnsw_n": min(args.cold_hnsw_n, len(s.join)), "rows": rows, "runs": runs}


def print_coldstart(name: str, res: dict) -> None:
    print(f"\n### Cold start: {name}, {res['n']:,} x {res['dim']}, {res['metric']} (median of {res['processes']} "
          f"fresh processes; hnsw on the first {res['hnsw_n']:,} items)\n")
    print("| step | first call s | second call s | first / second |")
    print("|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['step']} | {r['first_s']:.3f} | {r['second_s']:.3f} | {r['ratio']} |")


# --------------------------------------------------------------------------- exact search
def part_exact(s: LongSet, args, missing: dict) -> dict:
    import sparknn

    base, queries = s.base, s.queries[:args.exact_queries]
    if s.metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    flat = sparknn.Index(base.shape[1], s.metric, "flat", threads=args.threads)
    flat.add(base)
    product = np.ones((len(queries), len(base)), dtype=np.float32)  # written once first: no page faults timed
    runs = {"numpy sgemm (product only)": lambda: np.matmul(queries, base.T, out=product),
            "sparknn flat": lambda: flat.search(queries, K, threads=args.threads)[0]}
    if "faiss" not in missing:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        fidx = faiss.IndexFlatIP(base.shape[1]) if s.metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
        fidx.add(base)
        runs["faiss IndexFlat"] = lambda: fidx.search(queries, K)[1]
    names, times, found = list(runs), {name: [] for name in runs}, {}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # interleaved: the order rotates
            t = time.perf_counter()
            found[name] = runs[name]()
            times[name].append(time.perf_counter() - t)
    flop = 2.0 * len(base) * len(queries) * base.shape[1]
    floor = statistics.median(times[names[0]])
    rows = []
    for name in names:
        sec = statistics.median(times[name])
        rows.append({"engine": name, "s": round(sec, 3), "qps": round(len(queries) / sec, 1),
                     "gflops": round(flop / sec / 1e9, 1), "of_sgemm": round(floor / sec, 3)})
    agree = None
    if "faiss IndexFlat" in found:
        ours, theirs = found["sparknn flat"], found["faiss IndexFlat"]
        agree = round(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ours, theirs)])), 4)
    return {"n": len(base), "nq": len(queries), "dim": base.shape[1], "metric": s.metric, "rows": rows,
            "top10_agreement": agree}


def print_exact(name: str, res: dict) -> None:
    print(f"\n### Exact search: {name}, {res['n']:,} items x {res['dim']}, {res['nq']:,} queries, {res['metric']}\n")
    print("| engine | s (median) | queries/s | GFLOP/s | of sgemm's rate |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['engine']} | {r['s']:.3f} | {r['qps']:,.0f} | {r['gflops']:.0f} | {r['of_sgemm']:.0%} |")
    by = {r["engine"]: r for r in res["rows"]}
    if "faiss IndexFlat" in by:
        print(f"\nsparknn flat / faiss IndexFlat: {by['sparknn flat']['qps'] / by['faiss IndexFlat']['qps']:.2f}x; "
              f"their top-{K} ids agree on {res['top10_agreement']:.2%}")


def summarise(name: str, runs: list) -> dict:
    """One engine's rounds: medians of the times, the first round's tuning, the mean recall."""
    def med(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(vals), 2) if vals else None

    first = runs[0]
    return {"engine": name, "params": " ".join(p for p in (first.get("params"), first["knob"]) if p),
            "build_s": med("build_s"), "search_s": med("search_s"), "total_s": med("total_s"),
            "runs_s": [round(r["total_s"], 2) for r in runs], "tune_s": round(first["tune_s"], 2)
            if first.get("tune_s") is not None else None, "tune_recall": first.get("tune_recall"),
            "recall": round(statistics.mean(r["recall"] for r in runs), 4), "summary": first.get("summary"),
            "peak_rss_gb": med("peak_rss_gb"), "load1": [r["load1"] for r in runs]}


def speedup(rows: list) -> dict:
    """sparknn's total against the fastest peer whose recall reaches TARGET."""
    ours, peers = rows[0], [r for r in rows[1:] if r["recall"] >= TARGET]
    if not peers:
        return {"note": f"no peer reached recall {TARGET}" if rows[1:] else "no peer ran (missing)"}
    best = min(peers, key=lambda r: r["total_s"])
    with_tuning = best["total_s"] + (best["tune_s"] or 0)
    return {"best_peer": best["engine"], "peer_s": best["total_s"], "peer_with_tuning_s": round(with_tuning, 2),
            "sparknn_s": ours["total_s"], "sparknn_recall": ours["recall"],
            "speedup": round(best["total_s"] / ours["total_s"], 2),
            "speedup_with_tuning": round(with_tuning / ours["total_s"], 2)}


def print_selfjoin(name: str, res: dict) -> None:
    print(f"\n### Self-join top-{K}: {name}, {res['n']:,} x {res['dim']}, {res['metric']}\n")
    print("| engine | parameters (chosen) | build s | search s | total s (median) | runs s | tuning s "
          f"(its recall@10 on {res['tune_sample']}) | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        runs = " / ".join(f"{v:.2f}" for v in r["runs_s"])
        tuned = f"{fmt(r['tune_s'])} ({fmt(r['tune_recall'], 3)})"
        print(f"| {r['engine']} | {r['params']} | {fmt(r['build_s'])} | {fmt(r['search_s'])} | "
              f"{fmt(r['total_s'])} | {runs} | {tuned} | {r['recall']:.4f} |")
    for line in res["rows"][0].get("summary") or []:
        print(f"\n    {line}")
    if res["rows"][0].get("peak_rss_gb") is not None:
        print(f"\nsparknn similar's peak RSS (its VmHWM, sampled every 50 ms; median): "
              f"{res['rows'][0]['peak_rss_gb']:.2f} GB for {res['n'] * res['dim'] * 4 / 2**30:.2f} GB of vectors")
    sp = res["speedup"]
    if "note" in sp:
        print(f"\n{sp['note']}.")
    else:
        note = "" if sp["sparknn_recall"] >= TARGET else f" (but sparknn's recall is {sp['sparknn_recall']:.4f})"
        print(f"\nSpeedup at recall >= {TARGET}: sparknn similar {sp['sparknn_s']:.2f} s (process start, read, build, "
              f"tuning, search, write) against the fastest such peer, {sp['best_peer']}, {sp['peer_s']:.2f} s in "
              f"memory ({sp['peer_with_tuning_s']:.2f} s with its tuning): {sp['speedup']:.2f}x "
              f"({sp['speedup_with_tuning']:.2f}x){note}")


def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# --------------------------------------------------------------------------- HNSW query curves
def hnsw_engines(missing: dict) -> list:
    out = [engines.SparknnHnsw(HNSW_M, HNSW_EFC, EFS)]
    if "hnswlib" not in missing:
        out.append(engines.Hnswlib(HNSW_M, HNSW_EFC, EFS))
    if "faiss" not in missing:
        out.append(engines.FaissHnsw(HNSW_M, HNSW_EFC, EFS))
    return out


def qps_at(curve: list, target: float = TARGET) -> tuple:
    """(queries/s, how) at recall ``target`` on a curve of ef-ordered points: interpolated between
    the points around it ("interpolated"), the first point's when it already reaches it (a lower
    bound, "at least"), None when no point does."""
    for i, p in enumerate(curve):
        if p["recall"] >= target:
            if i == 0:
                return p["qps"], "at least"
            a = curve[i - 1]
            f = (target - a["recall"]) / (p["recall"] - a["recall"])
            return math.exp(math.log(a["qps"]) + f * (math.log(p["qps"]) - math.log(a["qps"]))), "interpolated"
    return None, "not reached"


def part_hnsw(s: LongSet, truth: np.ndarray, args, missing: dict) -> dict:
    engs = hnsw_engines(missing)
    builds = {}
    for e in engs:
        t = time.perf_counter()
        e.build(s.base, s.metric, args.threads)
        builds[e.name] = time.perf_counter() - t
        print(f"  {e.name} built in {builds[e.name]:.1f} s", file=sys.stderr, flush=True)
    curves = {e.name: [] for e in engs}
    for ef in EFS:
        times = {e.name: [] for e in engs}
        found = {}
        for r in range(args.repeats):
            for e in engs[r % len(engs):] + engs[:r % len(engs)]:  # interleaved: the order rotates
                t = time.perf_counter()
                found[e.name] = e.search(s.queries, K, ef, args.threads)
                times[e.name].append(time.perf_counter() - t)
        for e in engs:
            curves[e.name].append({"ef": ef, "recall": round(recall(found[e.name], truth), 4),
                                   "qps": round(len(s.queries) / statistics.median(times[e.name]), 1)})
    rows = []
    for e in engs:
        qps, how = qps_at(curves[e.name])
        rows.append({"engine": e.name, "build_s": round(builds[e.name], 2), "qps_at_target": qps and round(qps, 1),
                     "how": how, "size_bytes": e.size_bytes()})
    ours = rows[0]["qps_at_target"]
    for r in rows:
        r["sparknn_over"] = round(ours / r["qps_at_target"], 2) if ours and r["qps_at_target"] else None
    return {"n": len(s.base), "nq": len(s.queries), "dim": s.base.shape[1], "metric": s.metric,
            "curves": curves, "rows": rows}


def print_hnsw(name: str, res: dict) -> None:
    names = list(res["curves"])
    print(f"\n### HNSW queries: {name}, {res['n']:,} items x {res['dim']}, {res['nq']:,} held-out queries, "
          f"{res['metric']}, M={HNSW_M} efC={HNSW_EFC}\n")
    print("| ef | " + " | ".join(f"{n} recall@10 | {n} q/s" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for i, ef in enumerate(EFS):
        cells = " | ".join(f"{res['curves'][n][i]['recall']:.4f} | {res['curves'][n][i]['qps']:,.0f}" for n in names)
        print(f"| {ef} | {cells} |")
    print(f"\n| engine | build s | index MB | q/s at recall {TARGET} | sparknn / engine |\n|---|---|---|---|---|")
    for r in res["rows"]:
        qps = "not reached" if r["qps_at_target"] is None else \
            (">= " if r["how"] == "at least" else "") + f"{r['qps_at_target']:,.0f}"
        ratio = "-" if r["sparknn_over"] is None else f"{r['sparknn_over']:.2f}x"
        print(f"| {r['engine']} | {r['build_s']:.2f} | {r['size_bytes'] / 2**20:.0f} | {qps} | {ratio} |")


# --------------------------------------------------------------------------- storage
def storage_rows() -> list:
    return [(kind, st) for kind in ("flat", "hnsw", "ivf")
            for st in ("float32", "fp16", "bf16") + (("sq8",) if kind == "ivf" else ())]


def run_storage(s: LongSet, kind: str, storage: str, truth: np.ndarray, args, work: str) -> dict:
    import sparknn

    row = {"kind": kind, "storage": storage}
    t = time.perf_counter()
    try:
        index = sparknn.Index(s.base.shape[1], metric=s.metric, kind=kind, storage=storage, threads=args.threads,
                              M=HNSW_M, ef_construction=HNSW_EFC, nprobe=args.storage_nprobe)
        index.add(s.base)
    except (ValueError, NotImplementedError) as e:  # fp16 / bf16 may not be in this build yet
        return {**row, "error": str(e)}
    row["build_s"] = round(time.perf_counter() - t, 2)
    path = os.path.join(work, f"{kind}-{storage}.snn")
    index.save(path, sync=False)
    row["size_bytes"] = os.path.getsize(path)
    os.remove(path)
    t = time.perf_counter()
    found = index.search(s.queries, K, ef=args.storage_ef if kind == "hnsw" else None)[0]
    row["search_s"] = round(time.perf_counter() - t, 2)
    row["recall"] = round(recall(found, truth), 4)
    return row


def part_storage(s: LongSet, truth: np.ndarray, args, work: str) -> dict:
    rows = []
    for kind, storage in storage_rows():
        row = run_storage(s, kind, storage, truth, args, work)
        base = next((r for r in rows if r["kind"] == kind and r["storage"] == "float32"), None)
        if "recall" in row and base and "recall" in base:
            row["recall_diff"] = round(row["recall"] - base["recall"], 4)
            row["size_ratio"] = round(row["size_bytes"] / base["size_bytes"], 3)
        rows.append(row)
        print(f"  {kind} {storage}: {row.get('recall', row.get('error'))}", file=sys.stderr, flush=True)
    return {"n": len(s.base), "nq": len(s.queries), "dim": s.base.shape[1], "metric": s.metric, "rows": rows}


def print_storage(name: str, res: dict, args) -> None:
    print(f"\n### Storage: {name}, {res['n']:,} items x {res['dim']}, {res['nq']:,} held-out queries, "
          f"{res['metric']} (hnsw ef={args.storage_ef}, ivf nprobe={args.storage_nprobe})\n")
    print("| kind | storage | file MB | / float32 | build s | search s | recall@10 | vs float32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        if "error" in r:
            print(f"| {r['kind']} | {r['storage']} | not available in this build | | | | | |")
            continue
        ratio = f"{r['size_ratio']:.3f}" if "size_ratio" in r else "1"
        diff = f"{r['recall_diff']:+.4f}" if "recall_diff" in r else ""
        print(f"| {r['kind']} | {r['storage']} | {r['size_bytes'] / 2**20:.1f} | {ratio} | {r['build_s']:.2f} | "
              f"{r['search_s']:.2f} | {r['recall']:.4f} | {diff} |")


# --------------------------------------------------------------------------- plot, main
def plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional: the JSON has the curves
        return
    sets = [(name, r["hnsw"]) for name, r in results.items() if "hnsw" in r]
    if not sets:
        return
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], sets):
        for eng, curve in res["curves"].items():
            ax.plot([p["recall"] for p in curve], [p["qps"] for p in curve], marker="o", label=eng)
        ax.axvline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="recall@10", ylabel="queries/s", title=f"{name}, {res['n']:,} x {res['dim']}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def load_set(name: str, args) -> LongSet:
    s = load_fmnist(args.fmnist_n, args.queries) if name == "fmnist" else load_clustered(args.n, args.dim, args.queries)
    s.key = name  # as --sets names it
    return s


def run_set(s: LongSet, args, missing: dict, work: str) -> dict:
    out = {}
    truth = None
    if {"hnsw", "storage"} & set(args.parts):
        truth = exact(s.base, s.queries, s.metric, args.threads, K)
    for part in args.parts:
        before = load1()
        print(f"{s.name}: {part} (load average {before})", file=sys.stderr, flush=True)
        if part == "selfjoin":
            res = part_selfjoin(s, args, missing, work)
            res["speedup"] = speedup(res["rows"])
            print_selfjoin(s.name, res)
        elif part == "exact":
            res = part_exact(s, args, missing)
            print_exact(s.name, res)
        elif part == "lists":
            res = part_lists(s, args)
            print_lists(s.name, res)
        elif part == "coldstart":
            res = part_coldstart(s, args)
            print_coldstart(s.name, res)
        elif part == "hnsw":
            res = part_hnsw(s, truth, args, missing)
            print_hnsw(s.name, res)
        else:
            res = part_storage(s, truth, args, work)
            print_storage(s.name, res, args)
        res["load1_before_after"] = [before, load1()]
        print(f"\n(load average, 1 min: {before} before, {res['load1_before_after'][1]} after)", flush=True)
        out[part] = res
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["fmnist", "clustered"], choices=["fmnist", "clustered"])
    p.add_argument("--parts", nargs="+", default=["selfjoin", "hnsw", "storage"],
                   choices=["selfjoin", "lists", "exact", "hnsw", "storage", "coldstart"])
    p.add_argument("--cold-hnsw-n", type=int, default=20_000, help="coldstart: items of the hnsw build")
    p.add_argument("--coldstart-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=500_000, help="clustered: items")
    p.add_argument("--dim", type=int, default=768, help="clustered: dimensions")
    p.add_argument("--fmnist-n", type=int, default=0, help="fmnist: subsample the items to this many (0: all)")
    p.add_argument("--queries", type=int, default=10_000, help="held-out queries (hnsw, storage)")
    p.add_argument("--selfjoin-peers", nargs="+", default=["faiss", "hnswlib"], choices=["faiss", "hnswlib"],
                   help="self-join: the peers run (hnswlib's build of 500k x 768 takes minutes on a slow CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (self-join) / timings (hnsw)")
    p.add_argument("--sample", type=int, default=2000, help="self-join items whose recall is measured")
    p.add_argument("--tune-sample", type=int, default=1000, help="self-join items the peers' nprobe / ef is tuned on")
    p.add_argument("--train-per-list", type=int, default=40,
                   help="faiss IVF training sample per list (40: just above the 39 faiss asks for)")
    p.add_argument("--exact-queries", type=int, default=2048, help="exact: queries searched")
    p.add_argument("--storage-ef", type=int, default=64)
    p.add_argument("--storage-nprobe", type=int, default=16)
    p.add_argument("--workdir", default=None, help="for the Parquet items and index files (default: a temp dir)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "longvec.json"))
    p.add_argument("--plot", action="store_true", help="PNG of the HNSW curves beside --out (needs matplotlib)")
    p.add_argument("--plot-from", nargs="+", metavar="JSON",
                   help="only draw the HNSW curves of these saved results (one panel per data set) into --out's PNG")
    args = p.parse_args(argv)
    if args.plot_from:
        saved = {}
        for path in args.plot_from:
            with open(path) as f:
                saved.update(json.load(f)["sets"])
        plot(saved, os.path.splitext(args.out)[0] + ".png")
        return
    limit_threads(args.threads)
    if args.coldstart_child:
        print(json.dumps(coldstart_child(load_set(args.sets[0], args), args)))
        return
    missing = missing_peers()
    for module, why in missing.items():
        print(f"{module} is missing ({why}): its rows are skipped. Install it with pip install --no-deps "
              f"--target /work/bench-peers {PEERS[module]} and run with PYTHONPATH=/work/bench-peers", file=sys.stderr)
    import sparknn

    meta = {"argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M"), "head": git_head(),
            "sparknn": getattr(sparknn, "__version__", "?"), "threads": args.threads, "cpus": os.cpu_count(),
            "missing_peers": sorted(missing), "load1_start": load1(), "cpu": cpu_kind(), "blas_cores": blas_cores(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    print(f"## Long vectors (issue 15): {meta['date']}, head {meta['head']}, {meta['cpu']}, {args.threads} threads, "
          f"load average {meta['load1_start']}" + (f"; missing peers: {', '.join(missing)}" if missing else ""))
    print("OpenBLAS kernels: " + ", ".join(f"{k} {v}" for k, v in meta["blas_cores"].items())
          + (f" (OPENBLAS_CORETYPE={meta['OPENBLAS_CORETYPE']})" if meta["OPENBLAS_CORETYPE"] else ""))
    if "Prescott" in meta["blas_cores"].values():
        print("warning: an OpenBLAS runs its generic Prescott kernels here (it does not know this CPU): set "
              "OPENBLAS_CORETYPE to what the others picked for a fair comparison", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="sparknn-longvec-", dir=args.workdir)
    results = {}
    try:
        for name in args.sets:
            s = load_set(name, args)
            results[s.name] = run_set(s, args, missing, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "sets": results}, f, indent=1)
    print(f"\nwrote {args.out}")
    if args.plot:
        plot(results, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
