"""Executor side: index files loaded once per Python worker, searched on Arrow batches.

Spark reuses Python workers across tasks (``spark.python.worker.reuse``), so
indexes are cached at module level, keyed by (path, size, mtime). Files are
memory-mapped read-only: every worker on a node shares one copy in the page
cache. The engine releases the GIL and runs ``spark.task.cpus`` threads.

Engine ids are either the user's non-negative integer ids ("direct") or
positions into per-shard id files ("positional"). Positional ids are tagged
with their shard, ``shard << 40 | position``, so results from several shards
merge into one global top-k without collisions.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import sparknn
from sparknn import integrity
from sparknn.arrow import fixed_rows, neighbors_array, vectors_to_numpy
from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn.spark.ivf_plan import IvfRouting

POSITION_BITS = 40
POSITION_MASK = (1 << POSITION_BITS) - 1
QUERY_CHUNK = 8192  # similarItems queries per output batch: bounds the memory of one search


# Spark id column types and the Arrow types mapInArrow must return for them (widths must match).
ARROW_ID_TYPES = {
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "string": pa.string(),
}


@dataclass(frozen=True)
class ShardFiles:
    index: str  # file name of the index
    ids: str | None  # file name of the Arrow id file (positional ids only); a routed part: its items file
    count: int
    probes: str | None = None  # ivf built on the driver: Arrow file of each item's nearest lists, by label
    # (role, digest) of each side file, as the index file records them; empty in models saved before
    # side files were verified (those load unverified)
    digests: tuple[tuple[str, integrity.FileDigest], ...] = ()

    def digest(self, role: str) -> integrity.FileDigest | None:
        return dict(self.digests).get(role)


def digests_json(digests: dict) -> str:
    """A task result's side-file digests (role -> FileDigest) as JSON."""
    return json.dumps({role: d.to_json() for role, d in sorted(digests.items())})


def digests_from_json(text: str | None) -> tuple[tuple[str, integrity.FileDigest], ...]:
    return tuple((role, integrity.FileDigest.from_json(d)) for role, d in sorted(json.loads(text or "{}").items()))


@dataclass(frozen=True)
class Layout:
    """Everything a task needs to find and interpret the index files (small, picklable)."""

    dim: int
    metric: str
    kind: str
    id_type: str  # Spark simpleString of the id column: tinyint, smallint, int, bigint or string
    positional: bool
    shards: tuple[ShardFiles, ...]
    root: str  # directory holding the files on the driver (and on executors when not shipped)
    shipped: bool = False  # True: files were registered with SparkContext.addFile
    ivf: IvfRouting | None = None  # kind "ivf": the quantizer and which part holds which list (shards = parts)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    def path(self, name: str) -> str:
        if self.shipped:
            from pyspark import SparkFiles

            return SparkFiles.get(name)
        return os.path.join(self.root, name)

    def files(self) -> list[str]:
        extra = [self.ivf.quantizer] if self.ivf else []
        return [n for s in self.shards for n in (s.index, s.ids, s.probes) if n] + extra

    def side_files(self, shard: ShardFiles) -> list[tuple[str, str]]:
        """(role, file name) of a shard's side files: "ids" or a routed part's "items", and "probes"."""
        out = [("items" if self.ivf else "ids", shard.ids)] if shard.ids else []
        return out + ([("probes", shard.probes)] if shard.probes else [])

    def to_json(self) -> dict:
        def shard(s: ShardFiles) -> dict:
            d = {"index": s.index, "ids": s.ids, "count": s.count, **({"probes": s.probes} if s.probes else {})}
            if s.digests:
                d["sideFiles"] = {role: digest.to_json() for role, digest in s.digests}
            return d

        d = {"dim": self.dim, "metric": self.metric, "kind": self.kind, "idType": self.id_type,
             "positional": self.positional, "shards": [shard(s) for s in self.shards]}
        if self.ivf:
            d["ivf"] = self.ivf.to_json()
        return d

    @staticmethod
    def from_json(d: dict, root: str) -> Layout:
        """Raises KeyError, TypeError or ValueError on a malformed dict (the caller names the file)."""
        shards = tuple(ShardFiles(s["index"], s["ids"], int(s["count"]), s.get("probes"),
                                  tuple((role, integrity.FileDigest.from_json(v))
                                        for role, v in sorted(s.get("sideFiles", {}).items())))
                       for s in d["shards"])
        ivf = IvfRouting.from_json(d["ivf"]) if "ivf" in d else None
        layout = Layout(int(d["dim"]), d["metric"], d["kind"], d["idType"], bool(d["positional"]), shards, root,
                        ivf=ivf)
        for s in layout.shards:
            if not all(isinstance(n, str) and n and os.path.basename(n) == n for n in (s.index, s.ids, s.probes)
                       if n is not None):
                raise ValueError(f"bad file names in {s}")
            if s.digests and {r for r, _ in s.digests} != {r for r, _ in layout.side_files(s)}:
                raise ValueError(f"side file digests {s.digests} do not match the files of {s}")
        return layout

    def renamed(self, rename, root: str, shipped: bool) -> Layout:
        shards = tuple(replace(s, index=rename(s.index), ids=s.ids and rename(s.ids),
                               probes=s.probes and rename(s.probes)) for s in self.shards)
        ivf = self.ivf.renamed(rename) if self.ivf else None
        return replace(self, shards=shards, root=root, shipped=shipped, ivf=ivf)


def check_files(layout: Layout, what: str) -> None:
    """The driver's cheap check of a model's files (a stat each): every file is there and every side
    file with a recorded digest has its size. Checksums are verified by the tasks that read them."""
    roles = {name: role for shard in layout.shards for role, name in layout.side_files(shard)}
    digests = {name: shard.digest(role) for shard in layout.shards for role, name in layout.side_files(shard)}
    for name in layout.files():
        path = os.path.join(layout.root, name)
        kind = f"{roles[name]} file" if name in roles else "index file"
        if not os.path.isfile(path):
            raise IndexFileError(f"{what}: {kind} {path!r} is missing")
        expected = digests.get(name)
        if expected is not None and os.path.getsize(path) != expected.size:
            raise IndexFileError(f"{what}: {kind} {path!r} has {os.path.getsize(path)} bytes, {expected.size} "
                                 "expected: the file is truncated, extended or from another build")


# -- cache ------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_SIZE = 64
# Mapped files count in a worker's resident memory once touched: a worker that searches part
# after part of a routed index would otherwise keep every part it met mapped. Least recently
# used files are unmapped past this many bytes (the newest always stays; the OS page cache
# keeps the pages for the next reader either way).
_CACHE_BYTES = int(os.environ.get("SPARKNN_WORKER_CACHE_BYTES", 512 << 20))
_LOCK = threading.Lock()


def _cached(path: str, load, expected: integrity.FileDigest | None = None, what: str = "file"):
    """``load(path)``, once per (path, size, mtime) and Python worker. With ``expected`` the file is
    verified (size and CRC-32C) before it is first loaded: once per load, not per task."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IndexFileError(f"{what} {path!r} is missing") from None
    # The inode too: a file replaced within one clock tick keeps size and mtime, not its inode.
    key = (load.__name__, path, st.st_size, st.st_mtime_ns, st.st_ino, expected)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if expected is not None:
        integrity.verify(path, expected, what)
    try:
        value = load(path)
    except pa.ArrowException as err:  # unreadable despite no digest to check (an old model)
        raise IndexFileError(f"{what} {path!r} cannot be read: {err}") from None
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > 1 and (len(_CACHE) > _CACHE_SIZE or sum(k[2] for k in _CACHE) > _CACHE_BYTES):
            _CACHE.popitem(last=False)
    return value


def _load_index(path: str) -> sparknn.Index:
    return sparknn.load(path, mmap=True)


def _load_ids(path: str) -> pa.Array:
    # Zero-copy: the array's buffers point into the mapped file.
    table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    column = table.column(0)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def write_ids(path: str, ids: pa.Array) -> None:
    """Writes an id file atomically (temporary name, then rename)."""
    write_column(path, "id", ids)


def write_column(path: str, name: str, values: pa.Array) -> None:
    """A one-column Arrow file, written atomically (temporary name, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, pa.schema([(name, values.type)])) as writer:
        writer.write_table(pa.table({name: values}))
    os.replace(tmp, path)


def probes_column(lists: np.ndarray) -> pa.Array:
    """Nearest lists int [n, width] -> fixed_size_list<int32, width>."""
    return pa.FixedSizeListArray.from_arrays(pa.array(lists.reshape(-1).astype(np.int32, copy=False)), lists.shape[1])


def _load_probes(path: str) -> np.ndarray:
    """int32 [n, width], a zero-copy view of the mapped probes file."""
    return fixed_rows(pa.ipc.open_file(pa.memory_map(path, "r")).read_all().column(0))


@dataclass
class Shard:
    index: sparknn.Index
    ids: pa.Array | None
    probes: np.ndarray | None = None


def shard_index(layout: Layout, s: int) -> sparknn.Index:
    """Shard (or part) ``s``'s index, checked to record the same side files as the model: an index
    from another build or another task attempt than its side files is refused."""
    files = layout.shards[s]
    path = layout.path(files.index)
    index = _cached(path, _load_index, what="index file")
    if files.digests:
        recorded = index.side_files
        for role, _ in layout.side_files(files):
            if recorded.get(role) != files.digest(role):
                raise IndexFileError(f"index file {path!r} records {role} file {recorded.get(role)}, but the "
                                     f"model's is {files.digest(role)}: the index is from another build or "
                                     "task attempt than its side files")
    return index


def side_file(layout: Layout, s: int, role: str, load):
    """A side file of shard ``s`` loaded with ``load``, verified against the model's digest first
    (models saved before digests were recorded: against the index's record, if any)."""
    files = layout.shards[s]
    name = dict(layout.side_files(files))[role]
    expected = files.digest(role)
    if expected is None:
        expected = shard_index(layout, s).side_files.get(role)
    return _cached(layout.path(name), load, expected, f"{role} file")


def open_shards(layout: Layout) -> list[Shard]:
    out = []
    for s, files in enumerate(layout.shards):
        index = shard_index(layout, s)
        role = "items" if layout.ivf else "ids"
        ids = side_file(layout, s, role, _load_ids) if files.ids else None
        probes = side_file(layout, s, "probes", _load_probes) if files.probes else None
        out.append(Shard(index, ids, probes))
    return out


def task_threads(num_threads: int) -> int:
    """numThreads when set, else the cores Spark gave this task (spark.task.cpus)."""
    if num_threads:
        return num_threads
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return max(1, int(ctx.cpus())) if ctx is not None else 0


# -- search -----------------------------------------------------------------------------
def search(layout: Layout, shards: list[Shard], queries: np.ndarray, k: int, ef: int, threads: int,
           nprobe: int | None = None):
    """Global top-k over all shards: (engine ids int64 [nq, k], distances float32 [nq, k])."""
    parts_ids, parts_dist = [], []
    for s, shard in enumerate(shards):
        ks = min(k, len(shard.index))
        if ks == 0:
            continue
        shard.index.threads = threads
        ids, dist = shard.index.search(queries, ks, ef=max(ef, ks) if layout.kind == "hnsw" else None,
                                       nprobe=nprobe if layout.kind == "ivf" else None)
        if layout.positional and s:
            ids = np.where(ids >= 0, ids | (s << POSITION_BITS), ids)
        parts_ids.append(ids)
        parts_dist.append(dist)
    if len(parts_ids) == 1:
        return parts_ids[0], parts_dist[0]
    ids = np.concatenate(parts_ids, axis=1)
    dist = np.concatenate(parts_dist, axis=1)
    order = _by_distance_then_id(layout, shards, ids, dist)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dist, order, axis=1)


def _by_distance_then_id(layout: Layout, shards: list[Shard], ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Each row's candidates ordered by distance, then by the user's id (padding, id -1 and
    distance +inf, last): ties do not depend on which shard holds which item."""
    if not layout.positional:
        return np.lexsort((ids, dist), axis=1)
    nq, m = ids.shape
    flat = ids.reshape(-1)
    valid = flat >= 0
    where = np.full(len(flat), -1, dtype=np.int64)
    where[valid] = np.arange(int(valid.sum()))
    users = user_ids(layout, shards, flat[valid]).take(pa.array(where, mask=~valid))
    rows = np.repeat(np.arange(nq, dtype=np.int64), m)
    keys = [(name, "ascending") for name in ("r", "d", "u")]
    order = pc.sort_indices(pa.table({"r": rows, "d": dist.reshape(-1), "u": users}),
                            sort_keys=keys).to_numpy().astype(np.int64)
    return order.reshape(nq, m) - (rows.reshape(nq, m) * m)


def user_ids(layout: Layout, shards: list[Shard], engine_ids: np.ndarray) -> pa.Array:
    """The user's ids for engine ids, typed like the input id column."""
    target = ARROW_ID_TYPES[layout.id_type]
    if not layout.positional:
        return pa.array(engine_ids, type=pa.int64()).cast(target)
    shard_no = engine_ids >> POSITION_BITS
    local = engine_ids & POSITION_MASK
    present = np.unique(shard_no)
    if len(present) <= 1:
        s = int(present[0]) if len(present) else 0
        return shards[s].ids.take(pa.array(local)).cast(target)
    parts, where = [], []
    for s in present:
        sel = np.flatnonzero(shard_no == s)
        parts.append(shards[int(s)].ids.take(pa.array(local[sel])).cast(target))
        where.append(sel)
    # Put the per-shard results back in query order.
    inverse = np.empty(len(engine_ids), dtype=np.int64)
    inverse[np.concatenate(where)] = np.arange(len(engine_ids))
    return pa.concat_arrays(parts).take(pa.array(inverse))


def neighbors(layout, shards, engine_ids, dist, k, exclude=None) -> pa.Array:
    """list<struct<id, distance>> with the user's ids, nearest first."""
    lst = neighbors_array(engine_ids, dist, exclude=exclude, k=k)
    values = lst.values
    ids = user_ids(layout, shards, values.field("id").to_numpy(zero_copy_only=False))
    struct = pa.StructArray.from_arrays([ids, values.field("distance")], names=["id", "distance"])
    return pa.ListArray.from_arrays(lst.offsets, struct)


def attempt_id() -> int:
    """This task attempt's id, unique within the application (a speculative or retried copy of a
    task gets another): build tasks name their files with it, so two attempts never write the
    same file. Outside a task: the process id."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.taskAttemptId() if ctx is not None else os.getpid()


def _partition() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else -1


# -- mapInArrow functions ----------------------------------------------------------------
def transform_batches(batches, *, layout: Layout, features: str, output: str, k: int, ef: int,
                      num_threads: int, nprobe: int | None = None):
    """Adds the neighbours column to every batch of the query DataFrame."""
    shards = open_shards(layout)
    threads = task_threads(num_threads)
    for batch in batches:
        try:
            queries = vectors_to_numpy(batch.column(features), features, layout.dim)
            ids, dist = search(layout, shards, queries, k, ef, threads, nprobe)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"{err} (in partition {_partition()}; rows are counted from the "
                                       "start of an Arrow batch)") from None
        column = neighbors(layout, shards, ids, dist, k)
        yield pa.RecordBatch.from_arrays(list(batch.columns) + [column], names=batch.schema.names + [output])


def similar_batches(batches, *, layout: Layout, slices, id_col: str, output: str, k: int, ef: int,
                    include_self: bool, num_threads: int, nprobe: int | None = None):
    """Every stored item of the given slices -> its k nearest other items.

    The queries are the vectors stored in the index itself (normalised under
    cosine, which leaves cosine neighbours unchanged; decoded for compressed
    ivf storage), so no training data is needed: this works on a loaded model too.
    An ivf index built on the driver kept each item's nearest lists: the items
    are searched in them, without a pass over the quantizer.
    """
    shards = open_shards(layout)
    threads = task_threads(num_threads)
    kk = k if include_self else k + 1
    for batch in batches:
        for task in batch.column(0).to_numpy():
            s, lo, hi = slices[int(task)]
            index = shards[s].index
            index.threads = threads
            stored = None if index.kind == "ivf" else index._index.vectors()
            probes = shards[s].probes
            if probes is not None:
                width = min(nprobe or index.nprobe, index.params["nlist"])
                probes = probes if len(shards) == 1 and probes.shape[1] >= width else None
            # Items searched in their stored lists are taken list after list, so each list's
            # members are scanned together (larger sgemm tiles): positions, not labels, slice the task.
            rows = index.list_order() if probes is not None else None
            # within 64 MiB of query vectors per search call
            chunk = index.query_batch(QUERY_CHUNK, max(QUERY_CHUNK, (64 << 20) // (4 * index.dim)), nprobe)
            for start in range(lo, hi, chunk):
                stop = min(hi, start + chunk)
                at = np.arange(start, stop, dtype=np.int64) if rows is None else rows[start:stop]
                if layout.positional:
                    own = at | (s << POSITION_BITS)
                else:
                    own = np.asarray(index.ids[at], dtype=np.int64)
                if rows is not None:
                    ids, dist = index.search(index.reconstruct_rows(at), min(kk, len(index)),
                                             lists=np.ascontiguousarray(probes[at, :width]))
                else:
                    queries = index.reconstruct(start, stop) if stored is None else stored[start:stop]
                    ids, dist = search(layout, shards, queries, kk, ef, threads, nprobe)
                column = neighbors(layout, shards, ids, dist, k, exclude=None if include_self else own)
                yield pa.RecordBatch.from_arrays([user_ids(layout, shards, own), column], names=[id_col, output])
