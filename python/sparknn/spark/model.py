"""KNNModel: queries with transform(), the self-join with similarItems(), save/load."""

from __future__ import annotations

import math
import os
import shutil
import time
from functools import partial

from pyspark.ml import Model
from pyspark.ml.util import (
    DefaultParamsReader,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from sparknn.errors import IndexFileError, InvalidArgumentError
from sparknn.spark import grouped_search, hadoop_store, ivf_memory, ivf_route, recall_target, runtime, saved, worker
from sparknn.spark.layout import Layout, check_files
from sparknn.spark.params import KNNParams
from sparknn.spark.schema import check_features, neighbors_spark_type, spark_id_type
from sparknn.spark.storage import IndexFiles, executors_see, local_dir, temp_dir

ITEMS_PER_TASK = 50_000  # similarItems: at least this many queries per task amortise the index load


def _session() -> SparkSession:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession: create one before using a KNNModel")
    return spark


class KNNModel(Model, KNNParams, MLReadable, MLWritable):
    """The fitted index. ``transform`` adds ``outputCol`` to any DataFrame of query
    vectors; ``similarItems`` gives every indexed item its k nearest other items.

    Both return min(k, n) neighbours per row (n items indexed; similarItems
    excludes the item itself, so min(k, n - 1) unless ``includeSelf``), as
    ``array<struct<id, distance: float>>`` with ids typed like ``idCol``,
    nearest first. ``k`` and ``efSearch`` may be changed on the model.
    """

    def __init__(self):
        super().__init__()
        self._files = None
        self._tuning = None
        self._first_pass = ()  # not read yet (firstPass)

    @property
    def tuning(self):
        """What ``targetRecall`` chose at fit (:class:`sparknn.tuning.Tuning`: the nprobe or ef
        set on this model and the recall@k measured; a grouped model: a
        :class:`sparknn.grouped.GroupTunings`, the value chosen for each large group's index), or
        None (not set, or a loaded model: its nprobe / efSearch, or per group values, were saved)."""
        return self._tuning

    @property
    def firstPass(self):
        """ivf: ``(dims, share)`` of the first pass the searches make (``firstPassDims``: the
        lists scanned in the ``dims`` principal dimensions that hold ``share`` of the variance,
        fitted at the driver's training and saved with the index), or None when they scan every
        dimension (off, declined, another index type, a grouped model) or the index files are
        not on this machine (parts kept at a URI)."""
        if self._first_pass == ():
            self._first_pass = self._read_first_pass()
        return self._first_pass

    def _read_first_pass(self):
        layout = self.layout
        if layout.kind != "ivf" or layout.group_type:
            return None
        # routed: the quantizer every part was built from; a driver build: its one index
        name = layout.ivf.quantizer if layout.ivf else layout.shards[0].index
        path = os.path.join(layout.root, name)
        if not os.path.exists(path):
            return None
        from sparknn.index import load

        dims, share = load(path).first_pass_in_use(self.getNumThreads() or None)
        return (dims, share) if dims else None

    def _tune(self, target: float, dataset: DataFrame) -> None:
        """Sets nprobe (ivf) or efSearch (hnsw) for ``target`` (recall_target); a grouped model
        keeps the target, which its searches apply per group (the large groups tuned at fit)."""
        spark = dataset.sparkSession
        layout = self.layout
        if layout.group_type:
            self._set(targetRecall=target)
            self._tuning = recall_target.grouped(layout, target, self.getK())
            recall_target.report(self._tuning)
            return
        if layout.ivf:
            chosen = recall_target.tune_routed(dataset, self.getFeaturesCol(), self.getIdCol(), layout,
                                               self._task_layout(spark), target, self.getK(), layout.count,
                                               self.getOrDefault(self.seed), self.getNumThreads())
        elif len(layout.shards) > 1:
            chosen = recall_target.tune_shards(dataset, self.getFeaturesCol(), self.getIdCol(), layout,
                                               self._task_layout(spark), target, self.getK(), layout.count,
                                               self.getOrDefault(self.seed), self.getNumThreads())
        else:
            chosen = recall_target.tune_driver_index(layout, target, self.getK(), self.getNumThreads())
        if chosen.param == "nprobe":
            self._set(nprobe=chosen.value)
        elif chosen.param == "ef":
            self._set(efSearch=chosen.value)
        self._tuning = chosen
        recall_target.report(chosen)

    # -- introspection ----------------------------------------------------------------
    def _index_files(self) -> IndexFiles:
        if self._files is None:
            raise RuntimeError("this KNNModel has no index: create it with KNN.fit or KNNModel.load")
        return self._files

    @property
    def layout(self) -> Layout:
        return self._index_files().layout

    @property
    def numItems(self) -> int:
        return self.layout.count

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def partSizeBytes(self) -> list[int]:
        """Bytes on disk of each index a query task opens: the parts of an ivf model, else the shards."""
        layout = self.layout
        if layout.ivf:
            return list(layout.ivf.part_bytes)
        return [os.path.getsize(os.path.join(layout.root, s.index)) for s in layout.shards]

    @property
    def indexSizeBytes(self) -> int:
        """Bytes of all index files on disk (ivf: parts + quantizer; items files not included)."""
        layout = self.layout
        extra = os.path.getsize(os.path.join(layout.root, layout.ivf.quantizer)) if layout.ivf else 0
        return sum(self.partSizeBytes) + extra

    @property
    def taskMemoryBytes(self) -> int:
        """Estimated memory of one query task: the index it maps (an ivf model: its largest part and
        the quantizer, and that part again when it arrives as chunk rows; a grouped model: its
        largest shard twice and that shard's results; otherwise every shard, and
        for an ivf index its stored probe lists, and the list order and label map of similarItems,
        16 bytes per item) plus a batch of queries and candidates."""
        layout = self.layout
        if layout.group_type:  # a task searches one shard: its vectors, a working copy, its results
            mapped = 2 * max(self.partSizeBytes) + 12 * self.getK() * max(s.count for s in layout.shards)
        elif layout.ivf:
            mapped = max(self.partSizeBytes) + self.indexSizeBytes - sum(self.partSizeBytes)
            if layout.chunks:  # parts kept at a URI arrive as Arrow batches of chunk rows: up to a part at once
                mapped += max(self.partSizeBytes)
        else:
            mapped = self.indexSizeBytes + sum(os.path.getsize(os.path.join(layout.root, s.probes)) + 16 * s.count
                                               for s in layout.shards if s.probes)
        spark = SparkSession.getActiveSession()
        rows = ivf_memory.arrow_batch_rows(spark) if spark is not None else 10_000
        return ivf_memory.query_task_bytes(mapped, layout.dim, self.getK(), rows)

    def _check_memory(self, spark, what: str) -> None:
        ivf_memory.check(spark, f"{what} ({len(self.layout.shards)} index files, largest "
                         f"{ivf_memory.human(max(self.partSizeBytes))})", self.taskMemoryBytes,
                         self.getTaskMemoryLimit(),
                         "Refit with a smaller targetPartBytes (indexType='ivf': more, smaller parts) or "
                         "storage='sq8'/'pq', or give Python workers more memory (spark.executor.pyspark.memory, "
                         "executor memory).")

    def _task_layout(self, spark) -> Layout:
        """The layout tasks use: files shipped to this SparkContext, or opened in place."""
        return self._index_files().for_tasks(spark)

    def _ef(self) -> int:
        return max(self.getEfSearch(), self.getK() + 1)

    def _search_spec(self):
        """The model's index as searched now: nprobe / efSearch as set on the model."""
        return self.index_spec().replace(nprobe=self.getNprobe(), ef_search=self._ef())

    # -- queries ----------------------------------------------------------------------
    def _transform(self, dataset: DataFrame) -> DataFrame:
        features, output = self.getFeaturesCol(), self.getOutputCol()
        check_features(dataset, features)
        if output in dataset.columns:
            raise InvalidArgumentError(f"outputCol {output!r} already exists in the DataFrame: choose another "
                                       "name with setOutputCol")
        self._check_memory(dataset.sparkSession, "transform")
        layout = self._task_layout(dataset.sparkSession)
        if layout.group_type:
            return grouped_search.transform(dataset, layout, self.getGroupCol(), features, output, self.getK(),
                                            self._search_spec(), self.getTargetRecall())
        if layout.ivf:
            return ivf_route.transform(dataset, layout, features, output, self.getK(), self.getNprobe(),
                                         self.getNumThreads())
        schema = T.StructType(dataset.schema.fields + [
            T.StructField(output, neighbors_spark_type(layout.id_type))])
        fn = partial(worker.transform_batches, layout=layout, features=features, output=output,
                     k=self.getK(), ef=self._ef(), num_threads=self.getNumThreads(), nprobe=self.getNprobe())
        return dataset.mapInArrow(fn, schema)

    def similarItems(self) -> DataFrame:
        """Every indexed item -> its k nearest other items: DataFrame(idCol, outputCol).

        Runs from the index files alone (no training DataFrame), in about
        max(2 x defaultParallelism, n / 50000) tasks.
        """
        spark = _session()
        self._check_memory(spark, "similarItems")
        layout = self._task_layout(spark)
        if layout.group_type:
            if self.getIncludeSelf():
                raise InvalidArgumentError("includeSelf is not supported with groupCol: each item's neighbours are "
                                           "the other items of its group")
            return grouped_search.similar_items(spark, layout, self.getIdCol(), self.getOutputCol(), self.getK(),
                                                self._search_spec(), self.getTargetRecall())
        slices = self._slices(runtime.default_parallelism(spark))
        if layout.ivf:
            return ivf_route.similar_items(spark, layout, slices, self.getIdCol(), self.getOutputCol(),
                                             self.getK(), self.getNprobe(), self.getIncludeSelf(),
                                             self.getNumThreads())
        schema = T.StructType([
            T.StructField(self.getIdCol(), spark_id_type(layout.id_type)),
            T.StructField(self.getOutputCol(), neighbors_spark_type(layout.id_type)),
        ])
        fn = partial(worker.similar_batches, layout=layout, slices=slices, id_col=self.getIdCol(),
                     output=self.getOutputCol(), k=self.getK(), ef=self._ef(),
                     include_self=self.getIncludeSelf(), num_threads=self.getNumThreads(),
                     nprobe=self.getNprobe())
        return spark.range(0, len(slices), 1, len(slices)).mapInArrow(fn, schema)

    def _slices(self, parallelism: int):
        """(shard, lo, hi) ranges of stored items, one per task, shards split in proportion to size."""
        n = self.layout.count
        tasks = min(n, max(2 * parallelism, math.ceil(n / ITEMS_PER_TASK)))
        slices = []
        for s, shard in enumerate(self.layout.shards):
            parts = max(1, round(tasks * shard.count / n)) if shard.count else 0
            bounds = [shard.count * i // parts for i in range(parts + 1)]
            slices += [(s, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        return slices

    # -- persistence ------------------------------------------------------------------
    def write(self) -> KNNModelWriter:
        return KNNModelWriter(self)

    @classmethod
    def read(cls) -> KNNModelReader:
        return KNNModelReader(cls)


def _metadata(model: KNNModel, layout: Layout) -> dict:
    """What pyspark.ml's DefaultParamsWriter records (class, timestamp, versions, uid, the Params
    set and their defaults) plus the model's manifest under "sparknn"."""
    import pyspark

    fresh = type(model)()
    return {"class": f"{type(model).__module__}.{type(model).__name__}", "timestamp": int(time.time() * 1000),
            "sparkVersion": pyspark.__version__, "uid": model.uid,
            "paramMap": {p.name: model.getOrDefault(p) for p in model.params if model.isSet(p)},
            "defaultParamMap": {p.name: fresh.getOrDefault(p.name) for p in fresh.params if fresh.hasDefault(p)},
            "sparknn": layout.to_json()}


class KNNModelWriter(MLWriter):
    """Saves params (pyspark.ml metadata) and a copy of the index files under ``path/index``.

    Everything is written to a hidden sibling directory, flushed, sealed with a manifest and
    then renamed into place; ``overwrite()`` swaps it with the old model and only then removes
    the old one (saved.commit). A kill at any point leaves the old or the new model loadable at
    ``path``; an interrupted save never leaves a directory there that loads.

    ``path`` is a local directory (or file: URI) written with file I/O on the driver, or any URI
    of the session's Hadoop FileSystem (hdfs:, s3a:, gs:, abfss:, dbfs:, ...), written through
    Spark with the same guarantees (hadoop_store).
    """

    def __init__(self, instance: KNNModel):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        # Not MLWriter.save: with overwrite it deletes the old model before the new one exists.
        self.saveImpl(path)

    def saveImpl(self, path: str) -> None:
        if hadoop_store.is_uri(path):
            spark = _session()
            files = self.instance._index_files()
            stored = hadoop_store.save(spark, path, files.layout, files.for_tasks(spark), files.layout.saved_names(),
                                       partial(_metadata, self.instance), self.shouldOverwrite)
            if files.layout.chunks and hadoop_store.is_under(files.layout.chunks.uri, path):
                files.move_chunks(stored)  # the version it was loaded from is gone: read the new one
            return
        target = local_dir(path, "model path")
        if os.path.lexists(target) and not self.shouldOverwrite:
            raise FileExistsError(f"model path {target!r} already exists: use model.write().overwrite().save()")
        files = self.instance._index_files()
        tmp = saved.staging_dir(target)
        try:
            layout = files.copy_to(os.path.join(tmp, "index"))
            saved.write_metadata(tmp, _metadata(self.instance, layout))
            saved.seal(tmp)
            saved.commit(tmp, target, self.shouldOverwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class KNNModelReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> KNNModel:
        if hadoop_store.is_uri(path):
            return self._load_uri(path)
        root = saved.resolve(local_dir(path, "model path"))
        if not os.path.isdir(os.path.join(root, "metadata")):
            raise FileNotFoundError(f"no saved KNNModel at {root!r} (missing metadata/)")
        metadata = saved.read_metadata(root)
        if "sparknn" not in metadata:
            raise InvalidArgumentError(f"{root!r} holds a {metadata.get('class')}, not a sparknn KNNModel")
        model = self.cls()
        model._resetUid(metadata["uid"])
        try:
            DefaultParamsReader.getAndSetParams(model, metadata)
            layout = Layout.from_json(metadata["sparknn"], os.path.join(root, "index"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFileError(f"model metadata under {os.path.join(root, 'metadata')!r} is damaged: "
                                 f"{type(err).__name__}: {err}") from None
        check_files(layout, f"model at {root!r}")
        # ivf parts are opened in place (each task needs only its own) where the executors see them.
        spark = SparkSession.getActiveSession()
        in_place = layout.ivf is not None and spark is not None and executors_see(spark, root)
        model._files = IndexFiles(layout, shared=in_place)
        return model

    def _load_uri(self, uri: str) -> KNNModel:
        """A model saved at a Hadoop FileSystem URI: its files are copied to a driver directory,
        from where they are shipped to executors like those of a model built on the driver."""
        spark = _session()
        local = temp_dir(spark, "sparknn-load-")
        try:
            metadata, layout = hadoop_store.load(spark, uri, local)
            model = self.cls()
            try:
                model._resetUid(metadata["uid"])
                DefaultParamsReader.getAndSetParams(model, metadata)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise IndexFileError(f"the model record at {uri!r} is damaged: {type(err).__name__}: "
                                     f"{err}") from None
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        check_files(layout, f"model at {uri!r}")
        model._files = IndexFiles(layout, shared=False, owned=local)
        return model
