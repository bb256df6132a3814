"""The native classes: one per index kind, each with only its own methods, and
make_index taking one IndexOptions (python/src/core_bindings.cpp)."""

import numpy as np
import pytest
from sparknn import _core

CLASSES = {"flat": _core.FlatIndex, "hnsw": _core.HnswIndex, "ivf": _core.IvfIndex}
IVF_ONLY = ("train", "is_trained", "ideal_query_batch", "nearest_lists", "centroids", "list_sizes", "list_labels",
            "nprobe")


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_make_and_load_return_the_kinds_class(kind, tmp_path):
    index = _core.make_index(kind, 5, "l2", _core.IndexOptions(nlist=2))
    assert type(index) is CLASSES[kind] and isinstance(index, _core.Index)
    index.add(np.random.default_rng(0).random((20, 5), dtype=np.float32), None)
    index.save(str(tmp_path / "x.idx"))
    assert type(_core.load_index(str(tmp_path / "x.idx"), True, True)) is CLASSES[kind]


def test_kind_methods_exist_only_on_their_class():
    for name in IVF_ONLY:
        assert hasattr(_core.IvfIndex, name)
        assert not hasattr(_core.Index, name) and not hasattr(_core.HnswIndex, name), name
    assert hasattr(_core.HnswIndex, "ef_search")
    assert not hasattr(_core.Index, "ef_search") and not hasattr(_core.IvfIndex, "ef_search")
    assert not hasattr(_core.FlatIndex, "ef_search") and not hasattr(_core.FlatIndex, "train")
    with pytest.raises(TypeError):  # base add takes no lists
        _core.make_index("flat", 2, "l2").add(np.zeros((1, 2), np.float32), None, np.zeros(1, np.int64))


def test_index_options_by_name():
    options = _core.IndexOptions(M=8, storage="sq8", rerank=3)
    assert (options.M, options.storage, options.rerank, options.ef_search) == (8, "sq8", 3, 64)
    options.nprobe = 5
    assert options.nprobe == 5
    assert _core.make_index("ivf", 4, "ip", options).params["nprobe"] == 5
    options.storage = "fp16"  # sq8 is ivf's alone
    assert _core.make_index("hnsw", 4, "ip", options).params["M"] == 8
    with pytest.raises(TypeError):  # keywords only: no order of fields to get wrong
        _core.IndexOptions(8)


@pytest.mark.parametrize("variable", [None, "3"])
def test_sparknns_openblas_loads_without_a_thread_pool_and_leaves_the_variable(variable):
    """The library sparknn calls from its own threads starts no server threads of its own (they
    only busy-waited), whatever the caller's OPENBLAS_NUM_THREADS, which is left as it was."""
    import os
    import subprocess
    import sys

    code = ("import os; from sparknn import _blas\n"
            "get = getattr(_blas._handle, 'scipy_openblas_get_num_threads', None) if _blas._handle else None\n"
            "print(get() if get else 'none', os.environ.get('OPENBLAS_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if variable is not None:
        env["OPENBLAS_NUM_THREADS"] = variable
    threads, left = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.split()
    if threads == "none":
        pytest.skip("built against a system BLAS: not loaded by sparknn")
    assert threads == "1"
    assert left == str(variable)
