"""A saved model's directory on disk: its metadata read and checked, its commit and overwrite.

A save writes the whole model into a hidden sibling ``.NAME.tmp-TAG`` (index files, then the
pyspark.ml metadata), flushes it, and seals it last: ``sparknn-manifest.json`` records the size
and CRC-32C of each metadata file (the metadata's layout in turn records the digests of the
side files, so one chain vouches for every byte a query reads). Then it is committed:

- no model at ``path``: one rename.
- overwrite: ``renameat2(RENAME_EXCHANGE)`` swaps the new directory and the old one atomically,
  then the old one (now under the hidden name) is removed. Where the exchange is unsupported
  (not Linux, or a filesystem without it), the old directory is renamed aside to
  ``.NAME.old-TAG`` and the new one renamed to ``path``; a kill between those two renames
  leaves nothing at ``path``, so the loader finds the sealed ``.NAME.tmp-TAG`` (the new model)
  or else ``.NAME.old-TAG`` (the old one) of the same TAG.

So a kill at any point leaves the old or the new model loadable at ``path``, and a save that
did not commit leaves nothing there that loads. This module needs no Spark: it is plain files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import uuid

from sparknn import integrity
from sparknn.errors import IndexFileError
from sparknn.output import sync_file

MANIFEST = "sparknn-manifest.json"
_FORMAT = 1
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


# -- metadata -----------------------------------------------------------------------------------
def metadata_files(root: str) -> list[str]:
    """The data files of ``root/metadata`` (what Spark's text writer made: part files; not its
    ``_SUCCESS`` marker or hidden ``.crc`` files), as paths relative to ``root``, sorted."""
    directory = os.path.join(root, "metadata")
    return sorted(f"metadata/{n}" for n in os.listdir(directory)
                  if not n.startswith((".", "_")) and os.path.isfile(os.path.join(directory, n)))


def read_metadata(root: str) -> dict:
    """The pyspark.ml metadata of the model saved at ``root``, checked against its manifest when it
    has one (models saved before manifests load unchecked). Raises IndexFileError naming the file
    for a missing, damaged or truncated metadata file or manifest."""
    names = metadata_files(root)
    expected = read_manifest(root)
    if expected is not None:
        if set(names) != set(expected):
            raise IndexFileError(f"model metadata at {os.path.join(root, 'metadata')!r} holds files {names}, but its "
                                 f"manifest lists {sorted(expected)}: the model directory is damaged or mixed")
        for name in names:
            integrity.verify(os.path.join(root, name), expected[name], "model metadata file")
    lines = []
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            lines += [line for line in f.read().splitlines() if line.strip()]
    where = os.path.join(root, names[0]) if names else os.path.join(root, "metadata")
    if len(lines) != 1:
        raise IndexFileError(f"model metadata {where!r} has {len(lines)} lines of JSON, 1 expected: the file is "
                             "damaged or truncated (save the model again)")
    try:
        metadata = json.loads(lines[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IndexFileError(f"model metadata {where!r} is not valid JSON ({err}): the file is damaged or "
                             "truncated (save the model again)") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("class"), str) \
            or not isinstance(metadata.get("uid"), str) or not isinstance(metadata.get("paramMap", {}), dict):
        raise IndexFileError(f"model metadata {where!r} lacks the class, uid or paramMap of a saved model: the "
                             "file is damaged or not pyspark.ml metadata")
    return metadata


def write_metadata(root: str, metadata: dict) -> None:
    """Writes the pyspark.ml metadata of a model being saved at ``root`` as Spark's text writer
    lays it out (``metadata/part-00000``: one JSON line; ``metadata/_SUCCESS``), with local file
    I/O on the driver: through Spark's writer, an executor would write it to its own disk, which
    on nodes that share no disk the driver never sees."""
    directory = os.path.join(root, "metadata")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "part-00000"), "w") as f:
        f.write(json.dumps(metadata, separators=(",", ":")) + "\n")
    with open(os.path.join(directory, "_SUCCESS"), "w"):
        pass


# -- manifest (the seal) ------------------------------------------------------------------------
def _manifest_crc(files: dict) -> str:
    body = json.dumps({"format": _FORMAT, "files": files}, sort_keys=True).encode()
    return f"{integrity.crc32c(body):08x}"


def seal(root: str) -> None:
    """Writes ``root``'s manifest (the digests of its metadata files), last: a directory with a
    manifest is complete. Flushes every file and directory under ``root`` first."""
    files = {name: integrity.digest(os.path.join(root, name)).to_json() for name in metadata_files(root)}
    text = json.dumps({"format": _FORMAT, "files": files, "crc32c": _manifest_crc(files)}, sort_keys=True)
    for directory, _, names in os.walk(root):
        for name in names:
            sync_file(os.path.join(directory, name))
        sync_file(directory)
    tmp = os.path.join(root, f".{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(root, MANIFEST))
    sync_file(root)


def read_manifest(root: str) -> dict[str, integrity.FileDigest] | None:
    """Metadata file -> digest from ``root``'s manifest; None when it has none (an older model)."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(raw.decode("utf-8"))
        files = d["files"]
        if d["format"] != _FORMAT or d["crc32c"] != _manifest_crc(files):
            raise ValueError("format or checksum mismatch")
        return {str(name): integrity.FileDigest.from_json(v) for name, v in files.items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise IndexFileError(f"model manifest {path!r} is damaged or truncated ({err}): save the model "
                             "again") from None


# -- commit ------------------------------------------------------------------------------------
def staging_dir(target: str) -> str:
    """A fresh hidden sibling of ``target`` to write a model into before it is committed."""
    return _sibling(target, "tmp", uuid.uuid4().hex[:12])


def _sibling(target: str, kind: str, tag: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{kind}-{tag}")


def commit(staged: str, target: str, overwrite: bool) -> None:
    """Moves the sealed directory ``staged`` (from staging_dir) to ``target``; with ``overwrite``
    the model there is replaced (swapped, then removed). Without it an existing ``target`` is a
    FileExistsError and nothing changes."""
    parent = os.path.dirname(target)
    if not os.path.lexists(target):
        if _rename2(staged, target, _RENAME_NOREPLACE) is False:
            if os.path.lexists(target):
                raise FileExistsError(f"model path {target!r} already exists")
            os.rename(staged, target)
        sync_file(parent)
        return
    if not overwrite:
        raise FileExistsError(f"model path {target!r} already exists: use model.write().overwrite().save()")
    if exchange(staged, target):
        sync_file(parent)
        _remove(staged)  # now the old model
        return
    tag = os.path.basename(staged).rsplit("-", 1)[-1]
    aside = _sibling(target, "old", tag)
    os.rename(target, aside)  # from here until the next rename, load() finds the staged model by its tag
    os.rename(staged, target)
    sync_file(parent)
    _remove(aside)


def resolve(target: str) -> str:
    """The directory to load for ``target``: itself, or after an overwrite killed between its two
    renames (no model at ``target``, an ``.NAME.old-TAG`` beside it) the new model if it was
    sealed, else the old one."""
    if os.path.lexists(target):
        return target
    parent, prefix = os.path.dirname(target), f".{os.path.basename(target)}.old-"
    try:
        asides = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except FileNotFoundError:
        return target
    for name in sorted(asides, key=lambda n: os.stat(os.path.join(parent, n)).st_mtime_ns, reverse=True):
        staged = _sibling(target, "tmp", name[len(prefix):])
        if os.path.isfile(os.path.join(staged, MANIFEST)):
            return staged
        if os.path.isdir(os.path.join(parent, name, "metadata")):
            return os.path.join(parent, name)
    return target


def exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    return _rename2(a, b, _RENAME_EXCHANGE) is True


def _rename2(src: str, dst: str, flags: int) -> bool:
    """renameat2(src, dst, flags): True when done, False when the system or filesystem does not
    support it (the caller falls back); other errors raise OSError."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


_LIBC = []


def _renameat2():
    if not _LIBC:
        fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):  # not glibc >= 2.28 (or not Linux)
            fn = None
        _LIBC.append(fn)
    return _LIBC[0]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
