"""Atomic writes: a file or a directory appears complete under its name, or not at all.

Every file the toolkit writes for a user (artifact directories, engines, metadata, reports,
images, cached features, checkpoints built locally) goes through one of these helpers. A write
goes to a hidden temporary sibling (``.NAME.tmp-*``, same file system), is flushed, and is renamed
onto ``NAME`` with ``os.replace`` (atomic on POSIX); on any exception, ``KeyboardInterrupt``
included, the temporary is removed. Hidden temporaries are what :func:`is_temporary` recognises,
so the manifest never lists one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of these helpers' hidden temporaries (``.NAME.tmp-*``)."""
    return name.startswith(".") and TMP_MARK in name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it onto ``path`` on success.

    For writers that take a path (``numpy.save``, ``matplotlib.savefig``, ``torch.onnx.export``).
    The temporary keeps ``path``'s suffix so that writers choosing a format by suffix still do.

    Raises:
        whatever the writer raises (the temporary is removed first); ``FileNotFoundError`` when the
        writer produced nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data) -> Path:
    """Write ``data`` (bytes-like) to ``path`` atomically (temporary sibling, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(memoryview(data))
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """Write ``data`` as JSON (plus a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; rename it onto ``path`` on success.

    Args:
        path: the directory to create.
        replace: an existing ``path`` is replaced, and removed only once the new one is in place
            (without it, an existing ``path`` raises ``FileExistsError`` at the end).

    Raises:
        FileExistsError: ``path`` appeared meanwhile and ``replace`` is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent))
    try:
        work.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; artifacts get ordinary permissions
        yield work
        if path.exists():
            if not replace:
                raise FileExistsError(f"{path} exists (created meanwhile by another process)")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


__all__ = [
    "TMP_MARK",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_temporary",
]
