"""A saved model's directory: its checksummed metadata file, and committing a save in one step.

The metadata is pyspark.ml's (``metadata/part-00000``, one JSON line: class, uid, params, and
the layout under ``"sparknn"``), so ``Pipeline`` and ``PipelineModel`` read it like any stage's.
It is written and read here with plain file I/O (no Spark job), and ends with a CRC-32C of the
rest of the line, so a damaged or truncated metadata file is an IndexFileError naming it, never
a model with other params or files. Models saved before the checksum load unverified.

A save writes the whole model into a hidden sibling directory, then commits it:

- no model at the path: one rename;
- overwrite: the two directories are exchanged atomically (Linux ``renameat2(RENAME_EXCHANGE)``),
  then the old model, now under the hidden name, is removed;
- where the exchange is not available (another OS, a file system without it): the old model
  is renamed aside (``.<name>.old-<tag>``), the new one renamed into place, the old removed.
  A kill between the two renames leaves no model at the path: the loader (and the next save)
  puts the aside model back first.

So a kill at any point leaves the old or the new model loadable at the path, and a failed
save leaves nothing at the path that was not there before.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import time
import uuid

from sparknn.errors import IndexFileError
from sparknn.integrity import crc32c

METADATA_DIR = "metadata"
METADATA_FILE = "part-00000"
LAYOUT_FORMAT = 2  # the "sparknn" section's format: 2 = metadata checksummed, side files with digests
_CHECKSUM = "sparknnCrc32c"
_SIGNED = re.compile(r'(\{.*),"' + _CHECKSUM + r'":"([0-9a-f]{8})"\}')


# -- metadata ------------------------------------------------------------------------------
def metadata_line(instance, extra: dict) -> str:
    """pyspark.ml's metadata JSON for ``instance`` plus ``extra``, signed with its CRC-32C."""
    import pyspark

    body = {
        "class": f"{instance.__module__}.{type(instance).__name__}",
        "timestamp": int(round(time.time() * 1000)),
        "sparkVersion": pyspark.__version__,
        "uid": instance.uid,
        "paramMap": {p.name: v for p, v in instance._paramMap.items()},
        "defaultParamMap": {p.name: v for p, v in instance._defaultParamMap.items()},
        **extra,
    }
    text = json.dumps(body, separators=(",", ":"))
    return f'{text[:-1]},"{_CHECKSUM}":"{crc32c(text.encode()):08x}"}}'


def write_metadata(model_dir: str, line: str) -> None:
    """``metadata/part-00000`` and ``_SUCCESS``, as Spark's text writer lays them out, flushed."""
    directory = os.path.join(model_dir, METADATA_DIR)
    os.makedirs(directory, exist_ok=True)
    for name, data in ((METADATA_FILE, line + "\n"), ("_SUCCESS", "")):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_metadata(model_dir: str) -> tuple[dict, str]:
    """(the metadata dict, its file), checked: IndexFileError naming the file if it is missing,
    damaged or truncated."""
    directory = os.path.join(model_dir, METADATA_DIR)
    names = sorted(n for n in os.listdir(directory) if not n.startswith((".", "_")))
    if not names:
        raise IndexFileError(f"model metadata {directory!r} holds no metadata file: the save did not complete, "
                             "or the file was removed")
    path = os.path.join(directory, names[0])
    try:
        lines = [line for n in names for line in _read_text(os.path.join(directory, n)).splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise IndexFileError(f"model metadata {path!r} is damaged: not UTF-8 text") from None
    if len(lines) != 1:
        raise IndexFileError(f"model metadata {path!r} is damaged or truncated: {len(lines)} lines of JSON, "
                             "1 expected")
    line = lines[0].strip()
    signed = _SIGNED.fullmatch(line)
    if signed and crc32c((signed.group(1) + "}").encode()) != int(signed.group(2), 16):
        raise IndexFileError(f"model metadata {path!r} fails its checksum: the file is damaged")
    try:
        metadata = json.loads(line)
    except ValueError as err:
        raise IndexFileError(f"model metadata {path!r} is damaged or truncated (not JSON: {err})") from None
    if not isinstance(metadata, dict):
        raise IndexFileError(f"model metadata {path!r} is damaged: not a JSON object")
    section = metadata.get("sparknn")
    if not signed and isinstance(section, dict) and section.get("format", 0) >= LAYOUT_FORMAT:
        raise IndexFileError(f"model metadata {path!r} is damaged: its checksum is missing or unreadable")
    metadata.pop(_CHECKSUM, None)
    return metadata, path


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- committing a saved directory ------------------------------------------------------------
def _checkpoint(step: str) -> None:
    """A point where a kill must leave a loadable model. Tests inject faults here; the
    environment variable SPARKNN_FAILPOINT=<step> ends the process at that step (a kill)."""
    if os.environ.get("SPARKNN_FAILPOINT") == step:
        os._exit(77)


def sibling(target: str, kind: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{kind}-{uuid.uuid4().hex[:8]}")


def _asides(target: str) -> list[str]:
    parent, base = os.path.split(target)
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    found = [os.path.join(parent, n) for n in names if n.startswith(f".{base}.old-")]
    return sorted(found, key=os.path.getmtime, reverse=True)


def recover(target: str) -> None:
    """No model at ``target`` but one renamed aside by a save killed mid-commit: put it back."""
    if os.path.lexists(target):
        return
    for aside in _asides(target):
        if os.path.isdir(os.path.join(aside, METADATA_DIR)):
            try:
                os.rename(aside, target)
            except OSError:
                pass  # another process restored or saved one meanwhile
            return


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (renameat2 RENAME_EXCHANGE); False where that is not available."""
    if sys.platform != "linux" or os.environ.get("SPARKNN_RENAME_EXCHANGE") == "0":
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False  # glibc before 2.28, or another libc
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # the file system does not support it
    raise OSError(err, os.strerror(err), b)


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)


def commit(tmp: str, target: str, overwrite: bool) -> None:
    """Moves the complete model directory ``tmp`` to ``target`` (see the module docstring)."""
    for directory, _, _ in os.walk(tmp):
        _sync_dir(directory)
    parent = os.path.dirname(target)
    recover(target)
    _checkpoint("written")
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif not overwrite:
        raise FileExistsError(f"model path {target!r} already exists: use model.write().overwrite().save()")
    elif _exchange(tmp, target):
        _checkpoint("exchanged")
        _sync_dir(parent)
        _remove(tmp)  # the old model
    else:
        aside = sibling(target, "old")
        os.rename(target, aside)
        _checkpoint("aside")
        os.rename(tmp, target)
        _checkpoint("renamed")
        _sync_dir(parent)
        trash = sibling(target, "del")  # never again named like a model to recover
        os.rename(aside, trash)
        _remove(trash)
    _sync_dir(parent)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass
