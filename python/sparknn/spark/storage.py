"""Driver side of the index files: where they live, who deletes them, how tasks reach them.

Files either sit in a directory every executor can read (``indexPath``, the
shard directory of a sharded build, or any driver directory in classic local
mode), or they are shipped (``SparkContext.addFile``, or a file artifact on a
Spark Connect session: runtime.ship). Shipped files get a unique name per
registration (Spark flattens added files into one directory by base name),
made as a hard link (Spark skips symbolic links); Spark itself copies each
added file into its file directory, on the driver too. Registration is redone
when the model is used under a new SparkContext.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from dataclasses import replace
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from sparknn import integrity
from sparknn.errors import InvalidArgumentError
from sparknn.spark import hadoop_store, runtime
from sparknn.spark.layout import Layout


def local_dir(uri: str, param: str) -> str:
    """An absolute local directory path from a plain path or a file: URI."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else uri
        return os.path.abspath(os.path.expanduser(path))
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return os.path.abspath(uri)
    raise InvalidArgumentError(f"{param} {uri!r} is a {parsed.scheme}:// URI where a local directory (or a file:// "
                               "URI) is expected")


def temp_dir(spark, prefix: str = "sparknn-") -> str:
    """A fresh directory under the first spark.local.dir (else the system temp dir); on a Spark
    Connect client, under the client's temp dir (spark.local.dir names the driver's disks)."""
    base = None if runtime.is_connect(spark) else runtime.conf(spark, "spark.local.dir")
    base = base.split(",")[0] if base else None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# Temporary directories live until the driver process exits, not until their model is
# garbage collected: a DataFrame from ``KNN().fit(df).similarItems()`` outlives the model and
# its tasks may read (or fetch) the files later. Spark keeps added files for as long.
def own(path: str) -> None:
    atexit.register(_remove, path)


def keep_only(root: str, prefix: str, keep) -> None:
    """Removes the files of one build (names starting with ``prefix``) that ``keep`` does not name:
    the files of task attempts whose results Spark did not deliver (a speculative copy, a failed or
    retried attempt), and their temporary files. A losing attempt still running when its job ends
    may write a file later: no layout names it, so it is never read."""
    keep = set(keep)
    for name in os.listdir(root):
        if name.startswith(prefix) and name not in keep:
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass  # already gone, or a directory: not one of ours


def unshared_message(root: str, what: str) -> str:
    return (f"{what} builds on executors, which write the index files to {root!r}, but the executors do not "
            "see that directory (nodes that share no disk): set indexPath to a directory the driver and every "
            "executor share (NFS, a mounted bucket), or build on the driver (numShards=1, ivfMode='driver', with "
            "the memory for it)")


def check_shared(spark, root: str, what: str) -> None:
    """Refuses, before any data moves, a directory the executors do not see (executors_see). The
    build tasks check again."""
    if not executors_see(spark, root):
        raise InvalidArgumentError(unshared_message(root, what))


def executors_see(spark, root: str) -> bool:
    """Whether every executor sees the driver directory ``root``: a marker file the driver writes
    there is looked for by a task on each executor slot (classic local mode: the executors are the
    driver's threads, nothing to check)."""
    if runtime.local_files_visible(spark):
        return True
    import pyarrow as pa

    marker = os.path.join(root, f".sparknn-shared-{uuid.uuid4().hex}")
    with open(marker, "w"):
        pass
    try:
        def probe(batches):
            for batch in batches:
                yield pa.RecordBatch.from_pydict({"seen": [os.path.exists(marker)] * batch.num_rows})

        slots = runtime.default_parallelism(spark)
        seen = spark.range(0, slots, 1, slots).mapInArrow(probe, "seen boolean").collect()
    finally:
        os.remove(marker)
    return all(r["seen"] for r in seen)


def check_task_sees(root: str, what: str) -> None:
    """In a build task: the directory it is to write to exists here (else the reason, not an I/O error)."""
    if not os.path.isdir(root):
        raise InvalidArgumentError(unshared_message(root, what))


class IndexFiles:
    """A model's index files on the driver, plus their registration for tasks.

    ``layout.root`` is the directory holding the files on the driver. With
    ``shared=True`` (or in local mode) executors open them there; otherwise they are shipped.
    ``owned`` is a temporary directory removed when the driver exits.
    """

    def __init__(self, layout: Layout, shared: bool, owned: str | None = None):
        self.layout = layout
        self.shared = shared
        if owned:
            own(owned)
        self._shipped = None  # (applicationId, task layout)

    def for_tasks(self, spark) -> Layout:
        # Classic local mode opens the files in place (shipping would copy each file into Spark's
        # file directory first: a second copy in the page cache).
        if self.shared or runtime.local_files_visible(spark):
            return self.layout
        key = runtime.application_key(spark)
        if self._shipped and self._shipped[0] == key:
            return self._shipped[1]
        links = temp_dir(spark, "sparknn-ship-")
        own(links)
        tag = uuid.uuid4().hex[:12]

        def ship(name: str) -> str:
            unique = f"{tag}-{name}"
            linked = os.path.join(links, unique)
            link(os.path.join(self.layout.root, name), linked)
            runtime.ship(spark, linked)
            return unique

        shipped = self.layout.renamed(ship, root=links, shipped=True)
        self._shipped = (key, shipped)
        return shipped

    def move_chunks(self, uri: str) -> None:
        """The files kept at the model's URI are now read from ``uri`` (a save replaced the version
        the model was loaded from with a copy)."""
        self.layout = replace(self.layout, chunks=replace(self.layout.chunks, uri=uri))
        self._shipped = None

    def copy_to(self, directory: str) -> Layout:
        """Copies the files under canonical names; returns the layout for that directory. Files
        kept at the model's URI are read from there through Spark."""
        os.makedirs(directory, exist_ok=True)
        names = self.layout.saved_names()
        remote = self.layout.chunks.names if self.layout.chunks else frozenset()
        digests = {name: s.digest(role) for s in self.layout.shards for role, name in self.layout.side_files(s)}
        if remote:
            hadoop_store.fetch(SparkSession.getActiveSession(), self.layout.chunks.uri, directory,
                               {name: self.layout.chunks.digest(name) for name in remote}, self.layout.chunks.uri)
        for src, dst in names.items():
            path = os.path.join(directory, dst)
            if src in remote:
                os.replace(os.path.join(directory, src), path)
            else:
                shutil.copyfile(os.path.join(self.layout.root, src), path)
            if digests.get(src) is not None:  # the copy is what the model's digests vouch for
                integrity.verify(path, digests[src], "copied side file")
            with open(path, "rb+") as f:  # on disk before the model is committed
                os.fsync(f.fileno())
        return replace(self.layout, chunks=None).renamed(names.__getitem__, root=directory, shipped=False)
