"""A short tour of the Python API: build, search, save, load (memory-mapped)."""

import os
import tempfile

import numpy as np

import sparknn

rng = np.random.default_rng(0)
items = rng.standard_normal((20_000, 64), dtype=np.float32)
queries = items[:5] + 0.01 * rng.standard_normal((5, 64), dtype=np.float32)

exact = sparknn.Index(dim=64, metric="cosine", kind="flat")
exact.add(items, ids=np.arange(1_000_000, 1_020_000))
ids, dist = exact.search(queries, k=3)
print("exact  ids:", ids.tolist())

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "items.snn")
    exact.save(path)
    loaded = sparknn.load(path, mmap=True)
    ids2, _ = loaded.search(queries, k=3)
    assert (ids2 == ids).all()
    print(f"saved {os.path.getsize(path) / 1e6:.1f} MB, loaded {loaded!r}, same answers")
