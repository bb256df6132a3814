"""Memory made visible: what one task needs, what Python workers may use, and a clear refusal.

Python workers live outside the JVM heap, so Spark's own memory manager does
not see the index. The budget of one task is, in order:

1. the ``taskMemoryLimit`` param when set (e.g. "2g");
2. ``spark.executor.pyspark.memory`` (Spark enforces it on Python workers) divided by
   the tasks an executor runs at once (``spark.executor.cores / spark.task.cpus``);
3. in local mode, the machine's physical memory divided by the local threads;
4. otherwise ``spark.executor.memory`` divided by the concurrent tasks: the
   executor's size is the best available hint of what a node can give.

Estimates are of the resident working set: a build task holds its part's
index while adding to it plus one Arrow batch; a query task maps its part's
index (every page may be touched) and holds a batch of routed queries and
their candidates.
"""

from __future__ import annotations

import os
import re

from sparknn.errors import InvalidArgumentError
from sparknn.machine import available_memory
from sparknn.spark import runtime

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}


class TaskMemoryError(InvalidArgumentError):
    """A job would need more memory per task than Python workers may use; raised before it starts."""


def parse_size(text, default_unit: str = "") -> int:
    """Bytes from a Spark-style size ("512m", "4g", "1024"); a bare number takes ``default_unit``."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = (match.group(2) or default_unit).lower() if match else None
    if not match or unit not in _UNITS:
        raise InvalidArgumentError(f"cannot read {text!r} as a memory size: use e.g. '512m', '4g' or bytes")
    return int(match.group(1)) * _UNITS[unit]


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _local_threads(master: str) -> int | None:
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if not match:
        return None
    threads = match.group(1)
    if threads == "*":
        return os.cpu_count() or 1
    return int(threads) if threads else 1


def task_budget(spark, limit: str = "auto") -> tuple[int, str]:
    """(bytes one task's Python worker may use, where that number comes from)."""
    if limit and str(limit).lower() != "auto":
        return parse_size(limit), f"taskMemoryLimit={limit}"
    task_cpus = runtime.task_cpus(spark)
    local = _local_threads(runtime.master(spark))
    if local is not None:
        concurrent = max(1, local // task_cpus)
    else:
        concurrent = max(1, int(runtime.conf(spark, "spark.executor.cores", "1")) // task_cpus)
    pyspark_memory = runtime.conf(spark, "spark.executor.pyspark.memory")
    if pyspark_memory:
        return (parse_size(pyspark_memory, "m") // concurrent,
                f"spark.executor.pyspark.memory={pyspark_memory} / {concurrent} concurrent tasks")
    if local is not None:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return physical // concurrent, f"the machine's {human(physical)} / {concurrent} local tasks"
    executor = runtime.conf(spark, "spark.executor.memory", "1g")
    return (parse_size(executor, "m") // concurrent,
            f"spark.executor.memory={executor} / {concurrent} concurrent tasks")


def arrow_batch_rows(spark) -> int:
    return int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"))


def build_task_bytes(part_items: int, bytes_per_item: int, quantizer_bytes: int, dim: int, batch_rows: int) -> int:
    """A build task: its part's index in memory, the quantizer, one Arrow batch (+ its float32 copy)."""
    return part_items * bytes_per_item + quantizer_bytes + 3 * batch_rows * 4 * dim


def query_task_bytes(index_bytes: int, dim: int, k: int, batch_rows: int) -> int:
    """A query task: the index it maps (largest part, or all shards) and a batch of queries with candidates."""
    return index_bytes + batch_rows * (3 * 4 * dim + 2 * (k + 1) * 16)


def check(spark, what: str, need: int, limit: str, advice: str) -> None:
    """Raises TaskMemoryError naming the numbers when ``need`` exceeds the task budget."""
    budget, source = task_budget(spark, limit)
    if need > budget:
        raise TaskMemoryError(
            f"{what} needs about {human(need)} per task ({need} bytes) but a task may use {human(budget)} "
            f"({source}). {advice}")


def _driver_heap(spark) -> tuple[int, bool]:
    """(bytes of the driver JVM's heap, whether measured): asked of the JVM, or on Spark Connect,
    which cannot ask, what spark.driver.memory asks for."""
    heap = runtime.driver_heap(spark)
    if heap is None:
        return parse_size(runtime.conf(spark, "spark.driver.memory", "1g"), "m"), False
    return heap, True


def check_driver_heap_for(spark, what: str, need: int) -> None:
    """Refuses, with the numbers, work whose bytes pass through the driver JVM (``need``) when its
    heap is not about 1.7x as large: measured, the read-back of returned build files (1M x 100, 856
    MB) ran out of a 1 GiB heap after about 620 MB and completed in 3 GiB."""
    heap, measured = _driver_heap(spark)
    source = "the driver JVM's heap" if measured else "spark.driver.memory"
    if need > 0.6 * heap:
        raise InvalidArgumentError(
            f"{what} brings about {human(need)} of index files back to the driver through Spark (the executors "
            f"do not see the driver's directory), which needs a driver heap of about {human(int(need / 0.6))}, but "
            f"{source} is {human(heap)}: set indexPath to a directory the driver and every executor mount (then "
            "nothing comes back), or give the driver more memory (spark.driver.memory)")


def driver_collect_budget(spark) -> tuple[int, str]:
    """(bytes of vectors and ids a fit may collect to the driver, where that number comes from).

    Half of the smaller of ``spark.driver.maxResultSize`` (Spark fails a larger
    collect) and the driver JVM's heap (the collected Arrow batches pass through
    it: a larger collect dies in an OutOfMemoryError and takes the session along).
    On a Spark Connect session the rows are built into an index on the client, so also half of
    the memory the client has available: what does not fit there is built on executors.
    """
    result = runtime.conf(spark, "spark.driver.maxResultSize", "1g")
    result_bytes = parse_size(result, "b") or 1 << 62  # 0 = unlimited
    heap, measured = _driver_heap(spark)
    if not measured:
        budget = (heap // 2, f"half of spark.driver.memory={human(heap)}") if heap < result_bytes else \
            (result_bytes // 2, f"half of spark.driver.maxResultSize={result}")
        client = available_memory()
        if client is not None and client // 2 < budget[0]:
            return client // 2, f"half of this Spark Connect client's {human(client)} of available memory"
        return budget
    if heap < result_bytes:
        return heap // 2, f"half of the driver JVM's {human(heap)} heap, spark.driver.memory"
    return result_bytes // 2, f"half of spark.driver.maxResultSize={result}"
