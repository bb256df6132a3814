"""Index.adopt_rows for flat and hnsw: a RowBlock's rows kept in place as the index's vectors
(ivf's lists: test_ivf.py). The same index as add, the block's memory, refusals that change nothing."""

import numpy as np
import pytest

import sparknn
from sparknn.index import RowBlock


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((12, 24)).astype(np.float32) * 4
    base = (centres[rng.integers(0, 12, 1200)] + rng.standard_normal((1200, 24))).astype(np.float32)
    return base, base[rng.choice(1200, 50, replace=False)] + 0.1


def _block(rows: np.ndarray) -> RowBlock:
    block = RowBlock(*rows.shape)
    block.array()[:] = rows
    return block


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_adopted_rows_answer_as_added_rows(data, kind, metric, tmp_path):
    """Rows in another order than the ids (a file's order, the ids sorted), taken with ``order``:
    the answers, stored rows and saved file of add; the index's vectors are the block's memory."""
    base, queries = data
    spec = dict(kind=kind, metric=metric, threads=1, M=8, ef_construction=40)
    added, adopted = sparknn.Index(24, **spec), sparknn.Index(24, **spec)
    ids = np.arange(len(base), dtype=np.int64) * 3 + 5
    added.add(base, ids)
    order = np.random.default_rng(3).permutation(len(base))
    shuffled = np.empty_like(base)
    shuffled[order] = base  # the i-th vector at row order[i]
    block = _block(shuffled)
    memory = block.array().__array_interface__["data"][0]
    adopted.adopt_rows(block, ids, order=order)
    assert block.taken
    with pytest.raises(ValueError, match="belong to an index"):
        block.array()
    stored = adopted.vectors
    assert stored.__array_interface__["data"][0] == memory and not stored.flags.writeable
    np.testing.assert_array_equal(stored, added.vectors)
    del stored
    for got, want in zip(adopted.search(queries, k=10, ef=40), added.search(queries, k=10, ef=40)):
        np.testing.assert_array_equal(got, want)
    added.save(tmp_path / "added.snn")
    adopted.save(tmp_path / "adopted.snn")
    assert (tmp_path / "added.snn").read_bytes() == (tmp_path / "adopted.snn").read_bytes()
    adopted.add(base[:2], [1, 2])  # appends to a copy of the block's rows
    assert len(adopted) == len(base) + 2


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_adopt_rows_refusals_leave_block_and_index_unchanged(data, kind):
    base, _ = data
    block = _block(base)
    before = block.array().copy()
    index = sparknn.Index(24, kind=kind, metric="cosine")
    with pytest.raises(ValueError, match="float32 storage"):
        sparknn.Index(24, kind=kind, storage="fp16").adopt_rows(block)
    bad = np.arange(len(base))
    bad[5] = 0
    with pytest.raises(ValueError, match="duplicate id"):
        index.adopt_rows(block, ids=bad)
    with pytest.raises(ValueError, match="order must name each row once"):
        index.adopt_rows(block, order=bad)
    with pytest.raises(ValueError, match="ids has 3 entries|3 entries"):
        index.adopt_rows(block, ids=np.arange(3))
    np.testing.assert_array_equal(block.array(), before)
    assert len(index) == 0 and not block.taken
    nan = base.copy()
    nan[-1, 2] = np.nan
    nan_block = _block(nan)
    with pytest.raises(ValueError, match="NaN|finite"):
        index.adopt_rows(nan_block)
    assert not nan_block.taken and np.isnan(nan_block.array()[-1, 2])
    index.adopt_rows(block)
    with pytest.raises(ValueError, match="empty index"):
        index.adopt_rows(_block(base))
    with pytest.raises(ValueError, match="belong to an index"):
        sparknn.Index(24, kind=kind, metric="cosine").adopt_rows(block)
