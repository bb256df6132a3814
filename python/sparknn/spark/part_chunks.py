"""The parts of a routed model stored at a URI reach the tasks that search them inside their own
input: no driver copy, no file on every node, no path two machines share.

Driver side: the chunk rows of the files each part's task needs (its index, and its items file
when ids are positional) are read from the model's Parquet at the URI and unioned with the
routed query rows, keyed by part, so one shuffle brings a part's task its queries and its files.
Spark reads each needed file once per job; a node keeps it (node_cache) for later jobs and skips
its chunks then.

Executor side (``PartArrivals``): rows come in any order. Chunks go to the node cache; queries of
a part whose files are not whole yet wait in a spill file on the node's local disk, and are
searched once they are. A part whose files never became whole is an error naming them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparknn.errors import IndexFileError
from sparknn.spark.layout import Layout
from sparknn.spark.node_cache import Receiver

CHUNK_COLUMNS = ("name", "offset", "data")


def search_roles(layout: Layout) -> tuple[str, ...]:
    """The files a part's search task reads: its index, and its items file for positional ids."""
    return ("index", "items") if layout.positional else ("index",)


def remote_files(layout: Layout, part: int, roles) -> list[str]:
    """Part ``part``'s files with ``roles`` that are kept at the URI (an empty part built on the
    driver is a local file, shipped)."""
    return [n for n in layout.part_files(part, roles) if n in layout.chunks.names]


def chunk_frame(spark, layout: Layout, roles) -> DataFrame:
    """Chunk rows (part, name, offset, data) of every part's files with ``roles``."""
    by_name = {name: p for p in range(len(layout.shards)) for name in remote_files(layout, p, roles)}
    pairs = [c for name, p in sorted(by_name.items()) for c in (F.lit(name), F.lit(p))]
    return (spark.read.parquet(layout.chunks.uri).where(F.col("name").isin(list(by_name)))
            .select(F.element_at(F.create_map(*pairs), F.col("name")).cast("int").alias("part"),
                    *CHUNK_COLUMNS))


def with_files(routed: DataFrame, layout: Layout) -> DataFrame:
    """Routed query rows plus the chunk rows of the files their parts' tasks read (null elsewhere)."""
    chunks = chunk_frame(routed.sparkSession, layout, search_roles(layout))
    return routed.unionByName(chunks, allowMissingColumns=True)


class PartArrivals:
    """A task's parts: their files received into the node cache, their queries held until then."""

    def __init__(self, layout: Layout, roles):
        self.layout, self.roles = layout, roles
        self._receivers: dict[int, Receiver] = {}
        self._spills: dict[int, tuple[str, pa.ipc.RecordBatchStreamWriter]] = {}
        self._dir: str | None = None

    def _receiver(self, part: int) -> Receiver:
        if part not in self._receivers:
            names = remote_files(self.layout, part, self.roles)
            self._receivers[part] = Receiver({n: self.layout.chunks.digest(n) for n in names})
        return self._receivers[part]

    def ready(self, part: int) -> bool:
        return not self._receiver(part).missing()

    def feed(self, batch: pa.RecordBatch):
        """Takes one input batch; yields (part, batch of queries) whose files are whole."""
        names = batch.column("name")
        is_chunk = names.is_valid().to_numpy(zero_copy_only=False)
        completed = []
        if is_chunk.any():
            chunks = batch.filter(pa.array(is_chunk))
            parts = chunks.column("part").to_pylist()
            for part, name, offset, data in zip(parts, chunks.column("name").to_pylist(),
                                                chunks.column("offset").to_pylist(), chunks.column("data")):
                receiver = self._receiver(part)
                if receiver.missing() and receiver.add(name, offset, data.as_buffer()) and not receiver.missing():
                    completed.append(part)
            batch = batch.filter(pa.array(~is_chunk))
        for part in completed:
            yield from self._replay(part)
        if batch.num_rows == 0:
            return
        part_col = batch.column("part").to_numpy()
        for part in np.unique(part_col):
            part = int(part)
            sub = batch.filter(pa.array(part_col == part)) if len(np.unique(part_col)) > 1 else batch
            if self.ready(part):
                yield part, sub
            else:
                self._hold(part, sub)

    def _hold(self, part: int, batch: pa.RecordBatch) -> None:
        if part not in self._spills:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="sparknn-waiting-", dir=os.path.dirname(self._receiver(part).root))
            path = os.path.join(self._dir, f"part-{part}.arrows")
            self._spills[part] = (path, pa.ipc.new_stream(path, batch.schema))
        self._spills[part][1].write_batch(batch)

    def _replay(self, part: int):
        if part not in self._spills:
            return
        path, writer = self._spills.pop(part)
        writer.close()
        with pa.memory_map(path, "r") as source:
            for batch in pa.ipc.open_stream(source):
                yield part, batch
        os.remove(path)

    def finish(self):
        """At the end of the input: every part with queries has its files (else IndexFileError)."""
        for part in list(self._spills):
            missing = self._receiver(part).missing()
            raise IndexFileError(f"part {part} of the model at {self.layout.chunks.uri!r} did not arrive whole "
                                 f"(missing {missing}): the model's files are damaged; load or save it again")

    def close(self) -> None:
        for _, writer in self._spills.values():
            writer.close()
        self._spills.clear()
        for receiver in self._receivers.values():
            receiver.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
