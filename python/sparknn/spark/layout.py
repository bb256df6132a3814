"""The model's manifest: which files a model has, what each holds, and how to read its ids.

A model is one index (built on the driver), shards (built on executors, every
query searches all), or routed parts (an IVF index in parts, a query searches
the parts holding its lists: ``IvfRouting``). Beside each index there may be
side files, one Arrow column or table each: "ids" (the user's ids when they
cannot serve as engine ids), "items" (a routed part's ids, vectors and nearest
lists) and "probes" (each item's nearest lists, driver-built IVF). Their
digests are recorded in the model and in the index file.

Engine ids are either the user's non-negative integer ids ("direct") or
positions into per-shard id files ("positional"). Positional ids are tagged
with their shard, ``shard << 40 | position``, so results from several shards
merge into one global top-k without collisions.

Driver and executor code both import this module; of them it imports only node_cache, where a
task finds the files a model keeps at its URI (``ChunkSource``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pyarrow as pa

from sparknn import integrity
from sparknn.errors import IndexFileError, InvalidArgumentError

POSITION_BITS = 40
POSITION_MASK = (1 << POSITION_BITS) - 1
# Nearest lists kept per item for similarItems: at most this many (4 bytes each per item).
MAX_STORED_PROBES = 32


# Spark id column types and the Arrow types mapInArrow must return for them (widths must match).
ARROW_ID_TYPES = {
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "string": pa.string(),
}


@dataclass(frozen=True)
class IvfRouting:
    """Where the lists are: everything a task needs to route a query (small, picklable).

    ``list_offsets``/``list_parts`` is a CSR map list -> parts holding it (one
    part, or several for a split list); ``piece_offsets``/``piece_parts`` is the
    same map with one entry per equal-sized piece (a part may hold two pieces
    of one list), which the build uses to spread a split list's rows.
    """

    quantizer: str  # file name of the trained, empty IVF index
    list_sizes: tuple[int, ...]
    list_offsets: tuple[int, ...]
    list_parts: tuple[int, ...]
    piece_offsets: tuple[int, ...]
    piece_parts: tuple[int, ...]
    part_keys: tuple[int, ...]  # a key per part that Spark's hash partitioner sends to partition == part
    part_bytes: tuple[int, ...] = ()  # index file size per part, known once built

    @property
    def nlist(self) -> int:
        return len(self.list_sizes)

    @property
    def num_parts(self) -> int:
        return len(self.part_keys)

    def arrays(self):
        """(sizes, list_offsets, list_parts) as numpy arrays, for vectorised routing."""
        return (np.asarray(self.list_sizes, dtype=np.int64), np.asarray(self.list_offsets, dtype=np.int64),
                np.asarray(self.list_parts, dtype=np.int64))

    def to_json(self) -> dict:
        return {"quantizer": self.quantizer, "listSizes": list(self.list_sizes),
                "listOffsets": list(self.list_offsets), "listParts": list(self.list_parts),
                "pieceOffsets": list(self.piece_offsets), "pieceParts": list(self.piece_parts),
                "partKeys": list(self.part_keys), "partBytes": list(self.part_bytes)}

    @staticmethod
    def from_json(d: dict) -> IvfRouting:
        return IvfRouting(d["quantizer"], *(tuple(int(v) for v in d[k]) for k in (
            "listSizes", "listOffsets", "listParts", "pieceOffsets", "pieceParts", "partKeys", "partBytes")))

    def renamed(self, rename) -> IvfRouting:
        return replace(self, quantizer=rename(self.quantizer))



@dataclass(frozen=True)
class ChunkSource:
    """Files a model keeps at its storage URI (a routed model's parts and items files): tasks get
    them as chunk rows of their own input (part_chunks) into their node's cache (node_cache),
    found there by content, never through the driver."""

    uri: str  # the Parquet chunk files (name, offset, data)
    digests: tuple[tuple[str, integrity.FileDigest], ...]

    def digest(self, name: str) -> integrity.FileDigest | None:
        return dict(self.digests).get(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.digests)


@dataclass(frozen=True)
class ShardFiles:
    index: str  # file name of the index
    ids: str | None  # file name of the Arrow id file (positional ids of a shard only)
    count: int
    probes: str | None = None  # ivf built on the driver: Arrow file of each item's nearest lists, by label
    # (role, digest) of each side file, as the index file records them; empty in models saved before
    # side files were verified (those load unverified)
    digests: tuple[tuple[str, integrity.FileDigest], ...] = ()
    items: str | None = None  # a routed part: its Arrow items file (user ids, vectors, nearest lists)
    groups: str | None = None  # a grouped model's shard: each item's group (Arrow column, by position)

    def digest(self, role: str) -> integrity.FileDigest | None:
        return dict(self.digests).get(role)


def digests_json(digests: dict) -> str:
    """A task result's side-file digests (role -> FileDigest) as JSON."""
    return json.dumps({role: d.to_json() for role, d in sorted(digests.items())})


def digests_from_json(text: str | None) -> tuple[tuple[str, integrity.FileDigest], ...]:
    return tuple((role, integrity.FileDigest.from_json(d)) for role, d in sorted(json.loads(text or "{}").items()))


@dataclass(frozen=True)
class ShardTuning:
    """What a recall target chose for one shard's own index (a grouped model's large group, or a
    piece of one): nprobe (ivf) or ef (hnsw) ``value``, with ``recall`` measured on ``sample`` of
    its items."""

    shard: int
    value: int
    recall: float
    sample: int


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
    chunks: ChunkSource | None = None  # files kept at the model's URI, not under root
    group_type: str | None = None  # a grouped model (groupCol): the group column's Spark type; shards hold whole groups
    # a grouped model's large groups (group_plan): (value, first shard, pieces), on shards after the hashed ones
    group_pieces: tuple[tuple[object, int, int], ...] = ()
    # a grouped model fit with a recall target: what was chosen for each large group's shard (its own index)
    shard_tunings: tuple[ShardTuning, ...] = ()

    def knobs(self, shard: int, nprobe: int, ef: int) -> tuple[int, int]:
        """(nprobe, ef) to search ``shard`` with: the value its recall target chose, else those given."""
        for t in self.shard_tunings:
            if t.shard == shard:
                return (t.value, ef) if self.kind == "ivf" else (nprobe, t.value)
        return nprobe, ef

    @property
    def hashed_shards(self) -> int:
        """A grouped model's shards of whole small groups (by hash), before the large groups' own."""
        return len(self.shards) - sum(count for _, _, count in self.group_pieces)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def mode(self) -> str:
        """"single" (one index built on the driver), "shards" (N indexes, every query searches all)
        or "routed" (ivf parts sharing one quantizer; a query goes to the parts of its lists)."""
        return "routed" if self.ivf else "shards" if len(self.shards) > 1 else "single"

    def path(self, name: str) -> str:
        if self.chunks is not None and name in self.chunks.names:
            from sparknn.spark import node_cache

            return node_cache.path_of(name, self.chunks.digest(name))
        if self.shipped:
            from pyspark import SparkFiles

            return SparkFiles.get(name)
        return os.path.join(self.root, name)

    def files(self) -> list[str]:
        extra = [self.ivf.quantizer] if self.ivf else []
        return [n for s in self.shards for n in (s.index, s.ids, s.items, s.probes, s.groups) if n] + extra

    def local_files(self) -> list[str]:
        """The files under ``root`` (all but those kept at the model's URI)."""
        remote = self.chunks.names if self.chunks else frozenset()
        return [n for n in self.files() if n not in remote]

    def part_files(self, part: int, roles=("index", "items")) -> list[str]:
        """File names of shard (part) ``part`` with the given roles."""
        s = self.shards[part]
        return [n for role, n in (("index", s.index), ("ids", s.ids), ("items", s.items), ("probes", s.probes),
                                  ("groups", s.groups)) if n and role in roles]

    def saved_names(self) -> dict[str, str]:
        """File name -> the name it has in a saved model (shard-i.snn, ids-i.arrow, items-i.arrow,
        probes-i.arrow, quantizer.snn): a saved model does not depend on how it was built."""
        names = {}
        for i, shard in enumerate(self.shards):
            for name, saved in ((shard.index, f"shard-{i}.snn"), (shard.ids, f"ids-{i}.arrow"),
                                (shard.items, f"items-{i}.arrow"), (shard.probes, f"probes-{i}.arrow"),
                                (shard.groups, f"groups-{i}.arrow")):
                if name:
                    names[name] = saved
        if self.ivf:
            names[self.ivf.quantizer] = "quantizer.snn"
        return names

    def side_files(self, shard: ShardFiles) -> list[tuple[str, str]]:
        """(role, file name) of a shard's side files: "ids", a routed part's "items", "probes", a
        grouped shard's "groups"."""
        return [(role, name) for role, name in (("ids", shard.ids), ("items", shard.items), ("probes", shard.probes),
                                                ("groups", shard.groups)) if name]

    def to_json(self) -> dict:
        def shard(s: ShardFiles) -> dict:
            # A routed part's items file is stored under "ids", as models have always been saved.
            d = {"index": s.index, "ids": s.items if self.ivf else s.ids, "count": s.count,
                 **({"probes": s.probes} if s.probes else {}), **({"groups": s.groups} if s.groups else {})}
            if s.digests:
                d["sideFiles"] = {role: digest.to_json() for role, digest in s.digests}
            return d

        d = {"dim": self.dim, "metric": self.metric, "kind": self.kind, "idType": self.id_type,
             "positional": self.positional, "shards": [shard(s) for s in self.shards]}
        if self.ivf:
            d["ivf"] = self.ivf.to_json()
        if self.group_type:
            d["groupType"] = self.group_type
        if self.group_pieces:
            d["groupPieces"] = [list(p) for p in self.group_pieces]
        if self.shard_tunings:
            d["shardTunings"] = [[t.shard, t.value, t.recall, t.sample] for t in self.shard_tunings]
        return d

    @staticmethod
    def from_json(d: dict, root: str) -> Layout:
        """Raises KeyError, TypeError or ValueError on a malformed dict (the caller names the file)."""
        routed = "ivf" in d  # a routed part's "ids" names its items file (see to_json)
        shards = tuple(ShardFiles(s["index"], None if routed else s["ids"], int(s["count"]), s.get("probes"),
                                  tuple((role, integrity.FileDigest.from_json(v))
                                        for role, v in sorted(s.get("sideFiles", {}).items())),
                                  items=s["ids"] if routed else None, groups=s.get("groups"))
                       for s in d["shards"])
        ivf = IvfRouting.from_json(d["ivf"]) if "ivf" in d else None
        layout = Layout(int(d["dim"]), d["metric"], d["kind"], d["idType"], bool(d["positional"]), shards, root,
                        ivf=ivf, group_type=d.get("groupType"),
                        group_pieces=tuple((v, int(s), int(c)) for v, s, c in d.get("groupPieces", ())),
                        shard_tunings=tuple(ShardTuning(int(s), int(v), float(r), int(n))
                                            for s, v, r, n in d.get("shardTunings", ())))
        if layout.group_pieces and not (0 < layout.hashed_shards and all(
                layout.hashed_shards <= s and c >= 1 and s + c <= len(shards) for _, s, c in layout.group_pieces)):
            raise ValueError(f"group pieces {layout.group_pieces} do not fit {len(shards)} shards")
        for s in layout.shards:
            if not all(isinstance(n, str) and n and os.path.basename(n) == n
                       for n in (s.index, s.ids, s.items, s.probes, s.groups) if n is not None):
                raise ValueError(f"bad file names in {s}")
            if s.digests and {r for r, _ in s.digests} != {r for r, _ in layout.side_files(s)}:
                raise ValueError(f"side file digests {s.digests} do not match the files of {s}")
        return layout

    def renamed(self, rename, root: str, shipped: bool) -> Layout:
        """The layout with every file name mapped through ``rename`` (files kept at the model's URI
        keep their names)."""
        if self.chunks is not None:
            rename = partial(_keep_remote, rename, self.chunks.names)
        shards = tuple(replace(s, index=rename(s.index), ids=s.ids and rename(s.ids), items=s.items and rename(s.items),
                               probes=s.probes and rename(s.probes), groups=s.groups and rename(s.groups))
                       for s in self.shards)
        ivf = self.ivf.renamed(rename) if self.ivf else None
        return replace(self, shards=shards, root=root, shipped=shipped, ivf=ivf)


def _keep_remote(rename, remote, name: str) -> str:
    return name if name in remote else rename(name)


def check_files(layout: Layout, what: str) -> None:
    """The driver's cheap check of a model's files (a stat each): every file is there and every side
    file with a recorded digest has its size. Checksums are verified by the tasks that read them."""
    roles = {name: role for shard in layout.shards for role, name in layout.side_files(shard)}
    digests = {name: shard.digest(role) for shard in layout.shards for role, name in layout.side_files(shard)}
    for name in layout.local_files():
        path = os.path.join(layout.root, name)
        kind = f"{roles[name]} file" if name in roles else "index file"
        if not os.path.isfile(path):
            raise IndexFileError(f"{what}: {kind} {path!r} is missing")
        expected = digests.get(name)
        if expected is not None and os.path.getsize(path) != expected.size:
            raise IndexFileError(f"{what}: {kind} {path!r} has {os.path.getsize(path)} bytes, {expected.size} "
                                 "expected: the file is truncated, extended or from another build")



def shard_files(result: dict, root: str | None, what: str) -> ShardFiles:
    """The files of one task result (a dict with index, ids or items, groups, count, sideFiles),
    checked to be visible from the driver under ``root`` (None: they are kept at an indexPath URI)."""
    ids, items, groups = result.get("ids"), result.get("items"), result.get("groups")
    for name in (result["index"], ids, items, groups) if root else ():
        if name and not os.path.exists(os.path.join(root, name)):
            raise InvalidArgumentError(
                f"{what} was written by an executor to {root!r} but the driver cannot see it there: set "
                "indexPath to a directory shared by the driver and all executors")
    return ShardFiles(result["index"], ids, int(result["count"]), digests=digests_from_json(result["sideFiles"]),
                      items=items, groups=groups)


# -- side files ---------------------------------------------------------------
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



def items_schema(id_type: str, dim: int, width: int) -> pa.Schema:
    """A part's items file: the user's ids, the float32 vectors, each item's nearest lists."""
    return pa.schema([("id", ARROW_ID_TYPES[id_type]), ("vector", pa.list_(pa.float32(), dim)),
                      ("lists", pa.list_(pa.int32(), width))])
