"""Saving a KNNModel (issue 16): overwrite replaces a model only once the new one is complete, a
kill at any point leaves the old or the new model loadable at the path, a failed save leaves
nothing there that loads, and a damaged or truncated metadata file is a clear IndexFileError."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import clustered, spark_items

pyspark = pytest.importorskip("pyspark")
from sparknn.errors import IndexFileError
from sparknn.spark import KNN, KNNModel, saved, storage

pytestmark = pytest.mark.spark

OLD, NEW = 120, 150  # item counts tell the two models apart


_MODELS = {}


@pytest.fixture
def models(spark, tmp_path_factory):
    """Two saved models (string ids: ids file beside the index), made once per test session."""
    if _MODELS:
        return _MODELS
    root = tmp_path_factory.mktemp("models")
    out = _MODELS
    for n in (OLD, NEW):
        x = clustered(n, 8, seed=n)
        model = KNN(k=3, metric="l2", indexType="flat", featuresCol="vector").fit(
            spark_items(spark, x, ids=[f"i{j}" for j in range(n)], id_type="string"))
        path = str(root / f"m{n}")
        model.write().save(path)
        out[n] = path
    return out


def place(src: str, dst: str) -> None:
    """A fresh copy of the saved model ``src`` at ``dst``, nothing else named like it beside."""
    clear(dst)
    shutil.copytree(src, dst)


def clear(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    for name in leftovers(path):
        shutil.rmtree(os.path.join(os.path.dirname(path), name), ignore_errors=True)


def leftovers(path: str) -> list:
    parent, base = os.path.split(path)
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{base}."))


def items_at(path: str):
    """numItems of the model loaded from ``path``, None when nothing loads there."""
    try:
        return KNNModel.load(path).numItems
    except (FileNotFoundError, IndexFileError):
        return None


# --------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("manifest", [True, False], ids=["sealed", "older-model"])
@pytest.mark.parametrize("keep", [0, 1, 40, -1])
def test_truncated_metadata_is_a_clear_error(spark, models, tmp_path, manifest, keep):
    path = str(tmp_path / "m")
    place(models[OLD], path)
    if not manifest:  # a model saved before manifests: still loads, still checked as JSON
        os.remove(os.path.join(path, saved.MANIFEST))
        assert items_at(path) == OLD
    (name,) = saved.metadata_files(path)
    meta = os.path.join(path, name)
    with open(meta, "rb") as f:
        data = f.read()
    with open(meta, "wb") as f:
        f.write(data[:keep if keep >= 0 else len(data) // 2])
    with pytest.raises(IndexFileError, match=r"metadata.*(truncated|damaged)") as err:
        KNNModel.load(path)
    assert "part-" in str(err.value)  # names the file


def test_damaged_manifest_is_a_clear_error(models, tmp_path):
    path = str(tmp_path / "m")
    place(models[OLD], path)
    manifest = os.path.join(path, saved.MANIFEST)
    with open(manifest, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x04
    with open(manifest, "wb") as f:
        f.write(data)
    with pytest.raises(IndexFileError, match=r"manifest .*sparknn-manifest.json' is damaged"):
        KNNModel.load(path)


# --------------------------------------------------------------------------- overwrite and failures
def test_overwrite_swaps_and_failed_saves_leave_no_model(models, tmp_path, monkeypatch):
    path = str(tmp_path / "m")
    place(models[OLD], path)
    old, new = KNNModel.load(models[OLD]), KNNModel.load(models[NEW])
    with pytest.raises(FileExistsError, match="overwrite"):
        new.write().save(path)
    assert items_at(path) == OLD and leftovers(path) == []
    new.write().overwrite().save(path)
    assert items_at(path) == NEW and leftovers(path) == []
    assert sorted(os.listdir(path)) == sorted(["index", "metadata", saved.MANIFEST])

    # A save that fails while copying (disk full, say): the model at the path is untouched, and
    # a save to a new path leaves nothing there, nor beside it.
    real = shutil.copyfile
    calls = []

    def failing(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(storage.shutil, "copyfile", failing)
    with pytest.raises(OSError, match="No space"):
        old.write().overwrite().save(path)
    assert items_at(path) == NEW and leftovers(path) == []
    calls.clear()
    fresh = str(tmp_path / "fresh")
    with pytest.raises(OSError, match="No space"):
        old.write().save(fresh)
    assert not os.path.lexists(fresh) and leftovers(fresh) == []


_COMMIT_KILLED = textwrap.dedent("""
    import os, shutil, signal, sys
    from sparknn.spark import saved

    staged, target, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    steps = [0]

    def step():
        if steps[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        steps[0] += 1

    def killable(fn):
        def call(*a, **k):
            step()
            return fn(*a, **k)
        return call

    if mode == "rename":  # a system or file system without renameat2(RENAME_EXCHANGE)
        saved.exchange = lambda a, b: False
    else:
        saved.exchange = killable(saved.exchange)
    os.rename = killable(os.rename)
    os.unlink = killable(os.unlink)
    shutil.rmtree = killable(shutil.rmtree)
    saved.commit(staged, target, True)
    step()
""")


@pytest.mark.parametrize("mode", ["exchange", "rename"])
def test_overwrite_killed_at_every_step_leaves_old_or_new(models, tmp_path, mode):
    """The commit of an overwrite in a process SIGKILLed before each of its file operations in
    turn (and after the last): the path always loads, first the old model, then the new one."""
    path = str(tmp_path / "m")
    seen = []
    for n in range(100):
        place(models[OLD], path)
        staged = saved.staging_dir(path)
        shutil.copytree(models[NEW], staged)
        done = subprocess.run([sys.executable, "-c", _COMMIT_KILLED, staged, path, str(n), mode],
                              capture_output=True, text=True)
        assert done.returncode in (0, -9), done.stderr
        seen.append(items_at(path))
        if done.returncode == 0:
            break
    assert done.returncode == 0 and len(seen) >= 3, seen
    assert None not in seen, seen
    first_new = seen.index(NEW)
    assert seen[:first_new] == [OLD] * first_new and seen[first_new:] == [NEW] * (len(seen) - first_new), seen
    assert seen[-1] == NEW and leftovers(path) == []
    if mode == "rename":  # the kill between the renames: no directory at the path, the new model loads
        assert first_new >= 1


_SAVE_KILLED = textwrap.dedent("""
    import os, shutil, signal, sys
    from sparknn.spark import KNNModel
    from sparknn.spark.session import local_session

    spark = local_session("local[1]", "sparknn-kill-test")
    model = KNNModel.load(sys.argv[2])
    real, calls = shutil.copyfile, []

    def copy(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:  # mid-copy of the index files
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)

    shutil.copyfile = copy
    model.write().overwrite().save(sys.argv[1])
""")


def test_overwrite_killed_mid_copy_keeps_the_old_model(models, tmp_path):
    """``model.write().overwrite().save(path)`` SIGKILLed while it copies the index files: the old
    model still loads at the path (pyspark.ml's MLWriter would have deleted it already)."""
    path = str(tmp_path / "m")
    place(models[OLD], path)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    done = subprocess.run([sys.executable, "-c", _SAVE_KILLED, path, models[NEW]], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert items_at(path) == OLD
