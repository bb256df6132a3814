"""The ``sparknn`` command: nearest neighbours of every row of a Parquet table, in one command.

    sparknn example -o items.parquet
    sparknn similar items.parquet -o similar.parquet -k 10
    sparknn build items.parquet -o items.snn
    sparknn query items.snn queries.parquet -o out.parquet -k 10
    sparknn info items.snn

Jobs run in this process (pyarrow + the engine on all cores, no JVM) unless
``--spark MASTER`` is given. Every error prints one line on stderr and exits
with 2 (usage), 1 (data, files, memory) or 3 (an unexpected error: a bug);
``--debug`` adds the traceback. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import traceback

# Arrow's allocator (mimalloc) hands freed memory back to the kernel after 10 ms and faults it in
# again when reused, and fresh pages are slow to touch (on the development VM up to 3.6 us per
# 4 KiB page): reading a 220 MB vector column took 0.3 s or 1-2.4 s of system time by chance.
# A command runs one job whose peak is its footprint anyway, so it keeps what it freed (an
# environment that sets the option itself wins; it is read when pyarrow loads, just below).
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")

import pyarrow as pa

from sparknn import jobs
from sparknn.datasets import make_items, make_queries
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn.index import BATCH_RERANK, IndexSpec, default_rerank, first_pass_setting
from sparknn.inputs import open_input
from sparknn.machine import available_memory, buffers_on_small_pages, reuse_freed_memory
from sparknn.output import (
    DataError,
    UsageError,
    check_destination,
    check_format,
    check_separate,
    commit,
    is_delta_table,
    one_line,
    remove,
    temp_sibling,
    write_batches,
    write_table,
)
from sparknn.progress import Progress
from sparknn.tuning import DEFAULT_TARGET

EXIT_DATA, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 3, 130


def _first_pass(text: str):
    """--first-pass: auto, off, or a count of dimensions (0 is off)."""
    try:
        return first_pass_setting(text)
    except InvalidArgumentError:
        raise argparse.ArgumentTypeError(f"must be auto, off or a count of dimensions, got {text!r}") from None


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


# --------------------------------------------------------------------------- output to the terminal
def _say(args, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def _process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), None where unknown: what starting
    Python and importing pyarrow, numpy and the engine cost before the command ran."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _timing(total: float, result: jobs.Result, startup: float | None = None) -> str:
    """"in 5.10 s (start 0.40 s, read 0.31 s, ...)": the whole command, process start included."""
    steps = [] if startup is None else [("start", startup)]
    steps += list(result.timings.steps.items())
    total += startup or 0.0
    said = ", ".join(f"{name} {sec:.2f} s" for name, sec in steps)
    return f"in {total:.2f} s ({said})" if said else f"in {total:.2f} s"


def _preview(args, table: pa.Table | None, id_col: str, shown: int = 5) -> None:
    """The first rows of the result, so a person sees what was written."""
    if args.quiet or table is None or table.num_rows == 0:
        return
    rows = table.to_pylist()
    width = max(len(id_col), *(len(str(r[id_col])) for r in rows))
    print(f"{id_col:<{width}}  neighbors (id: distance), nearest first")
    for r in rows:
        pairs = ", ".join(f"{n['id']}: {n['distance']:.4f}" for n in r["neighbors"][:shown])
        more = ", ..." if len(r["neighbors"]) > shown else ""
        print(f"{r[id_col]!s:<{width}}  {pairs}{more}")


def _spec(args) -> IndexSpec:
    rerank = default_rerank(args.index, args.storage) if args.rerank is None else args.rerank
    return IndexSpec(kind=args.index, metric=args.metric, M=args.M, ef_construction=args.ef_construction,
                     ef_search=args.ef_search or 64, nlist=args.nlist, nprobe=args.nprobe or 16, storage=args.storage,
                     pq_m=args.pq_m, rerank=rerank, threads=args.threads)


def _recall_target(args) -> float | None:
    """--recall, else the self-join's default target unless --nprobe / --ef-search were given."""
    if args.recall is not None:
        return args.recall
    if args.nprobe is None and args.ef_search is None:
        return DEFAULT_TARGET
    return None


# --------------------------------------------------------------------------- commands
def _cmd_similar(args) -> int:
    start = time.perf_counter()
    if args.spark:
        result = _similar_on_spark(args)
    else:
        result = jobs.similar(args.input, args.output, id_col=args.id_col, vector_col=args.vector_col, k=args.k,
                              spec=_spec(args), fmt=args.format, overwrite=args.overwrite,
                              progress=Progress(not args.quiet), group_col=args.group_col,
                              recall=_recall_target(args),
                              first_pass="auto" if args.first_pass is None else args.first_pass)
    where = f"Spark {args.spark}" if args.spark else "in-process"
    _say(args, f"wrote {args.output} ({args.format}): {result.rows:,} items, {result.neighbors} neighbours each "
               f"({args.index}, {args.metric}, {where}) {_timing(time.perf_counter() - start, result, args.startup)}")
    if result.first_pass is not None:
        dims, dim, share = result.first_pass
        _say(args, f"first pass: scanned in {dims} of {dim} dimensions ({share:.1%} of the variance), "
                   f"candidates re-ranked exactly")
    if result.tuning is not None:
        _say(args, f"recall target: {result.tuning.describe()}")
    _preview(args, result.preview, args.id_col)
    return 0


def _cmd_build(args) -> int:
    start = time.perf_counter()
    result = jobs.build(args.input, args.output, id_col=args.id_col, vector_col=args.vector_col, spec=_spec(args),
                        overwrite=args.overwrite, progress=Progress(not args.quiet))
    sidecar = args.output + jobs.IDS_SUFFIX
    extra = f" and its ids in {sidecar}" if os.path.exists(sidecar) else ""
    _say(args, f"wrote {args.output}{extra}: {result.rows:,} items ({args.index}, {args.metric}) "
               f"{_timing(time.perf_counter() - start, result, args.startup)}")
    return 0


def _cmd_query(args) -> int:
    start = time.perf_counter()
    result = jobs.query(args.index_file, args.queries, args.output, id_col=args.id_col, vector_col=args.vector_col,
                        k=args.k, ef=args.ef, fmt=args.format, overwrite=args.overwrite, threads=args.threads,
                        progress=Progress(not args.quiet))
    _say(args, f"wrote {args.output} ({args.format}): {result.rows:,} queries, {result.neighbors} neighbours each "
               f"{_timing(time.perf_counter() - start, result, args.startup)}")
    _preview(args, result.preview, args.id_col)
    return 0



_EXAMPLE_BYTES_PER_VALUE = 28  # make_items' peak: float64 centres[labels] + noise + sum, then float32


def _cmd_example(args) -> int:
    check_destination(args.output, args.overwrite)
    need = (args.n * _EXAMPLE_BYTES_PER_VALUE + args.clusters * 8) * args.dim  # rows, and float64 centres
    free = available_memory()
    if free is not None and need > free:  # refused with the numbers, not killed half-way
        raise UsageError(f"--n {args.n:,} rows (and --clusters {args.clusters:,}) of --dim {args.dim:,} need about "
                         f"{need / 2**30:,.1f} GiB of memory to generate; {free / 2**30:,.1f} GiB is available: "
                         "use a smaller --n, --dim or --clusters")
    maker = make_queries if args.queries else make_items
    table = maker(args.n, args.dim, clusters=args.clusters, seed=args.seed)
    write_table(args.output, table, "parquet", args.overwrite)
    kind = "queries" if args.queries else "items"
    _say(args, f"wrote {args.output}: {args.n:,} {kind} (columns id: int64, vector: list<float32>[{args.dim}]), "
               f"{args.clusters} Gaussian clusters, seed {args.seed}")
    return 0


def _cmd_info(args) -> int:
    facts = jobs.info(args.index_file)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    size = facts["file_size"]
    params = ", ".join(f"{k}={v}" for k, v in sorted(facts["params"].items()))
    for label, value in [
        ("file", facts["path"]),
        ("kind", facts["kind"]),
        ("metric", facts["metric"]),
        ("dim", facts["dim"]),
        ("count", f"{facts['count']:,}"),
        ("file size", f"{size / 2**20:.1f} MiB ({size:,} bytes)"),
        ("format", f"version {facts['format_version']}"),
        ("params", params or "-"),
        ("ids", facts["ids"]),
    ]:
        print(f"{label:<10} {value}")
    return 0


# --------------------------------------------------------------------------- --spark
def _spark_session(master: str):
    """A SparkSession for ``master``. Local masters listen on loopback only; a cluster's
    networking is configured as usual (spark-defaults.conf, SPARK_LOCAL_IP)."""
    if master.startswith("local"):
        from sparknn.spark.session import local_session

        return local_session(master, "sparknn similar")
    from pyspark.sql import SparkSession

    if master.startswith("sc://"):  # a Spark Connect server
        return SparkSession.builder.remote(master).getOrCreate()
    return SparkSession.builder.master(master).appName("sparknn similar").getOrCreate()


def _similar_on_spark(args) -> jobs.Result:
    """The same job with sparknn.spark; Spark writes Parquet to a temporary directory that is then renamed.

    For Delta, that Parquet is streamed into a Delta table with the deltalake
    package, batch by batch, so no Delta jar is needed on the cluster and the
    result never has to fit in the driver's memory.
    """
    check_format(args.format)
    jobs.check_id_col(args.id_col)
    check_destination(args.output, args.overwrite)
    check_separate([("output", args.output)], [("input", args.input)])
    # Schema, types and row count are checked from the files' metadata before a JVM starts.
    inp = open_input(args.input, args.id_col, args.vector_col)
    k = max(1, jobs.capped_k(args.k, inp.num_rows, self_join=True))  # the same rows, never sized by a huge k
    try:
        from sparknn.spark import KNN
        from sparknn.spark.params import knn_params
    except ImportError as exc:
        raise UsageError(f"--spark needs pyspark (pip install 'sparknn[spark]'): {exc}") from None
    timings = jobs.Timings()
    t0 = time.perf_counter()
    import pyarrow.dataset as ds  # reads Spark's output directory; not at start: it imports pandas
    from pyspark.sql import SparkSession

    ours = SparkSession.getActiveSession() is None  # a session we did not start is not ours to stop
    spark = _spark_session(args.spark)
    if args.quiet and ours:
        from sparknn.spark.runtime import set_quiet

        set_quiet(spark)
    tmp = temp_sibling(args.output, "spark")
    try:
        files = _delta_files(args.input) if is_delta_table(args.input) else [args.input]
        grouping = [args.group_col] if args.group_col else []
        df = spark.read.parquet(*files).select(args.id_col, args.vector_col, *grouping)
        params = knn_params(_spec(args))
        params["firstPassDims"] = "auto" if args.first_pass is None else str(args.first_pass)
        target = _recall_target(args)
        if target is not None and args.index != "flat":  # the recall target decides them
            params.pop("nprobe")
            params.pop("efSearch")
        knn = KNN(k=k, featuresCol=args.vector_col, idCol=args.id_col, **params,
                  **({"groupCol": args.group_col} if args.group_col else {}),
                  **({"targetRecall": target} if target is not None and args.index != "flat" else {}))
        try:
            model = knn.fit(df)  # kept referenced until the write is done: its index files back the result
            model.similarItems().write.parquet(tmp)
        except InvalidArgumentError:
            raise
        except Exception as exc:  # Py4J and PySpark errors carry pages of JVM stack: keep the cause
            if args.debug or not _is_spark_error(exc):
                raise
            raise DataError(f"the Spark job failed: {_spark_cause(exc)} (--debug shows the whole error)") from None
        timings.add("Spark job", time.perf_counter() - t0)
        first = model.firstPass  # (read from the model's files: before they go with the session)
        t0 = time.perf_counter()
        written = ds.dataset(tmp, format="parquet")
        preview = written.head(3)
        if args.format == "parquet":
            rows = written.count_rows()
            commit(tmp, args.output)
        else:
            rows = write_batches(args.output, written.schema, written.to_batches(), "delta", args.overwrite)
        timings.add("commit", time.perf_counter() - t0)
    finally:
        remove(tmp)
        if ours:
            spark.stop()
    return jobs.Result(rows, jobs.capped_k(args.k, inp.num_rows, self_join=True), timings, preview, model.tuning,
                       None if first is None else (first[0], model.dim, first[1]))


def _delta_files(path: str) -> list:
    """The Parquet files of a Delta table's current version: Spark reads them without a Delta jar."""
    from deltalake import DeltaTable

    return DeltaTable(path).file_uris()


def _is_spark_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("py4j", "pyspark")


def _spark_cause(exc: BaseException) -> str:
    """The line of a Spark error that says what went wrong: a sparknn error raised in a task if
    there is one, else the JVM's root cause, else the first line."""
    text = str(exc)
    ours = re.findall(r"(?:InvalidArgumentError|IndexFileError|IndexIOError|ValueError): ([^\n]+)", text)
    if ours:
        return ours[-1].strip()
    causes = re.findall(r"Caused by: ([^\n]+)", text)
    if causes:
        return causes[-1].strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


# --------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    columns = argparse.ArgumentParser(add_help=False)
    columns.add_argument("--id-col", default="id", help="id column: integers or strings (default: id)")
    columns.add_argument("--vector-col", default="vector",
                         help="vector column: array<float|double> or a dense ML vector (default: vector)")

    index = argparse.ArgumentParser(add_help=False)
    index.add_argument("--metric", default="cosine", choices=["cosine", "l2", "ip"],
                       help="cosine (1 - cos), l2 (squared Euclidean) or ip (-dot); smaller is closer")
    index.add_argument("--index", default=None, choices=["hnsw", "flat", "ivf"],
                       help="hnsw (approximate graph), flat (exact) or ivf (partitioned, optionally compressed); "
                       "default: ivf for `similar` (a self-join of every item is batch work, where the "
                       "list-batched IVF scan is fastest), hnsw for `build` (later queries come few at a time)")
    index.add_argument("--M", type=_count(2), default=16, help="HNSW links per node (default: 16)")
    index.add_argument("--ef-construction", type=_count(1), default=200, help="HNSW build beam (default: 200)")
    index.add_argument("--ef-search", type=_count(1), default=None,
                       help="HNSW search beam (default: 64; `similar`: chosen for --recall)")
    index.add_argument("--nlist", type=_count(0), default=0,
                       help="IVF lists; 0 = chosen from n (default): sqrt(n) for similar and on Spark, "
                            "about 4 sqrt(n) for build")
    index.add_argument("--nprobe", type=_count(1), default=None,
                       help="IVF lists scanned per query (default: 16; `similar`: chosen for --recall)")
    index.add_argument("--storage", default="float32", choices=["float32", "fp16", "bf16", "sq8", "pq"],
                       help="vector storage: float32, fp16 or bf16 (half the memory; every kind), or IVF sq8 "
                            "(4x smaller) or pq (--pq-m bytes per vector)")
    index.add_argument("--pq-m", type=_count(0), default=0, help="IVF-PQ bytes per vector; 0 = about dim/4")
    index.add_argument("--rerank", type=_count(0), default=None,
                       help="IVF: re-rank rerank*k candidates of an approximate scan by exact distance (sq8, pq: "
                            "their codes; float32: a bf16 scan, on CPUs with AVX512_BF16); 0 = off. Default: "
                            f"{BATCH_RERANK} for float32 (exact distances, same answers but for near ties), else 0")

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=_count(0), default=0, help="threads to use; 0 = all cores (default)")

    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", required=True, help="output path")
    out.add_argument("--overwrite", action="store_true", help="replace the output if it exists")

    table_out = argparse.ArgumentParser(add_help=False)
    table_out.add_argument("-k", "--k", dest="k", type=_count(1), default=10, help="neighbours per row (default: 10)")
    table_out.add_argument("--format", default="parquet", choices=["parquet", "delta"],
                           help="output format (default: parquet)")

    parser = argparse.ArgumentParser(prog="sparknn", description="k-nearest neighbours of Parquet tables.",
                                     epilog="start with: sparknn example -o items.parquet && "
                                     "sparknn similar items.parquet "
                                     "-o similar.parquet (docs/cli.md has the details)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("similar", parents=[common, columns, table_out, index, threads, out],
                       help="for every item, its k nearest other items")
    p.add_argument("input", help="items: a Parquet file, a directory of Parquet files, or a Delta table")
    p.add_argument("--recall", type=float, default=None, metavar="R",
                   help="ivf/hnsw: instead of --nprobe/--ef-search, the least that reaches recall@k R (0 < R <= 1), "
                   "measured against exact search on 1000 sampled items after the build; the choice is reported "
                   "(default: 0.95 unless --nprobe or --ef-search is given)")
    p.add_argument("--first-pass", type=_first_pass, default=None, metavar="DIMS",
                   help="ivf with float32 lists: scan in the principal subspace of this many dimensions and "
                        "re-rank exactly; auto (default): the least multiple of 16 up to dim/4 holding 90%% of the "
                        "variance, off when none does or dim < 256; off: scan every dimension")
    p.add_argument("--spark", metavar="MASTER",
                   help="run on Spark, e.g. local[*], spark://host:7077 or sc://host:15002 (Spark Connect)")
    p.add_argument("--group-col", default=None, metavar="COLUMN",
                   help="neighbours only within each item's group (integers or strings): small groups are "
                        "searched exactly, large ones with an index of their own")
    p.set_defaults(run=_cmd_similar, default_index="ivf")

    p = sub.add_parser("build", parents=[common, columns, index, threads, out], help="build an index file")
    p.add_argument("input", help="items: a Parquet file, a directory of Parquet files, or a Delta table")
    p.set_defaults(run=_cmd_build, default_index="hnsw")

    p = sub.add_parser("query", parents=[common, columns, table_out, threads, out],
                       help="the k nearest items of every query row")
    p.add_argument("index_file", metavar="INDEX", help="an index file written by `sparknn build`")
    p.add_argument("queries", help="queries: Parquet file or directory (or Delta table) with an id and a vector")
    p.add_argument("--ef", type=_count(1), default=None, help="HNSW search beam (default: the index's ef-search)")
    p.set_defaults(run=_cmd_query)

    p = sub.add_parser("example", parents=[common, out], help="write a fixed-seed example data set")
    p.add_argument("--n", type=_count(1), default=20_000, help="rows (default: 20000)")
    p.add_argument("--dim", type=_count(1), default=64, help="vector dimension (default: 64)")
    p.add_argument("--clusters", type=_count(1), default=100, help="Gaussian clusters (default: 100)")
    p.add_argument("--seed", type=_count(0), default=0, help="random seed (default: 0)")
    p.add_argument("--queries", action="store_true", help="query points: other points from the same clusters")
    p.set_defaults(run=_cmd_example)

    p = sub.add_parser("info", parents=[common], help="describe an index file")
    p.add_argument("index_file", metavar="INDEX")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_info)
    return parser


def _version() -> str:
    from sparknn import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    startup = _process_age() if argv is None else None  # a command line, not a call from Python
    if argv is None:
        reuse_freed_memory()  # one job per process: keep what it frees (machine.py)
        buffers_on_small_pages()  # and take fresh memory in 4 KiB pages (machine.py)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "index", "") is None:
        args.index = args.default_index
    args.startup = startup
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except KeyboardInterrupt:  # also one arriving while an error is reported (SIGTERM interrupts a
        # blocking open with EINTR, and its handler then runs inside the except clause)
        print("sparknn: interrupted; no output was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    """Runs the command; every error becomes one line on stderr and an exit code."""
    try:
        return args.run(args)
    except KeyboardInterrupt:
        raise
    except UsageError as exc:
        return _fail(args, exc, EXIT_USAGE)
    except (DataError, InvalidArgumentError, IndexFileError, OSError) as exc:
        return _fail(args, exc, EXIT_DATA)
    except pa.ArrowException as exc:  # a reading or decoding failure that jobs.py did not word
        return _fail(args, exc, EXIT_DATA, "cannot read the input: ")
    except MemoryError as exc:
        return _fail(args, exc, EXIT_DATA, "out of memory: ", " (use smaller inputs or a machine with more memory)")
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bug, or a Rust panic (pyo3's PanicException is a
        # BaseException): still one line, the traceback with --debug
        return _fail(args, exc, EXIT_BUG, f"unexpected {type(exc).__name__}: ",
                     " (this is a bug in sparknn: --debug shows the traceback; please report it)")


def _terminate(signum, frame):
    """SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so temporary output is removed."""
    raise KeyboardInterrupt


def _fail(args, exc: BaseException, code: int, prefix: str = "", suffix: str = "") -> int:
    if args.debug:
        traceback.print_exc()
    text = one_line(exc)
    if isinstance(exc, OSError) and exc.strerror:  # "No space left on device: 'x'", not "[Errno 28] ..."
        text = exc.strerror + (f": {exc.filename!r}" if exc.filename else "")
    print(f"sparknn {args.command}: error: {prefix}{text}{suffix}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
