"""Atomic writes: a file or a directory appears complete under its name, or not at all.

Every file the toolkit writes for a user (artifact directories, engines, metadata, reports,
images, cached features, checkpoints built locally) goes through one of these helpers. A write
goes to a hidden temporary sibling (``.NAME.tmp-<pid>-*``, same file system), is flushed, and is
renamed onto ``NAME`` with ``os.replace`` (atomic on POSIX); on any exception, ``KeyboardInterrupt``
included, the temporary is removed. Hidden temporaries are what :func:`is_temporary` recognises,
so the manifest never lists one.

SIGTERM only runs that clean-up where the command turned it into an exception
(:func:`infomerge.interrupts.signals_raise`, done by every ``infomerge-*`` command). A process
killed outright (SIGKILL, power loss) leaves its temporary; the next write of the same name sweeps
temporaries whose process (the ``<pid>`` in the name) is gone (:func:`sweep_stale`). The renames
that replace an existing directory run with signals deferred, so an interrupt never leaves the
old directory moved away and the new one missing.

:func:`check_output_file` and :func:`check_output_dir` test an output path before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infomerge.errors import OutputPathError
from infomerge.interrupts import pid_alive, signals_deferred

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of these helpers' hidden temporaries (``.NAME.tmp-*``)."""
    return name.startswith(".") and TMP_MARK in name


def temporary_prefix(name: str) -> str:
    """The prefix of this process's temporaries of ``name``: ``.NAME.tmp-<pid>-``."""
    return f".{name}{TMP_MARK}{os.getpid()}-"


def _owner_pid(entry: str, name: str) -> int | None:
    """The pid recorded in a temporary (or moved-away old copy) of ``name``, else None."""
    for mark in (TMP_MARK, OLD_MARK):
        head = f".{name}{mark}"
        if entry.startswith(head):
            pid = entry[len(head) :].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def sweep_stale(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporaries of ``parent/name`` left by processes that no longer run.

    A temporary's owner is the pid in its name (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>``); those of
    running processes (a concurrent writer) are kept, as are names without a pid. A moved-away old
    copy (``.NAME.old-<pid>``) whose ``NAME`` is missing is put back instead of removed (a process
    killed between the two renames of a replacement). Returns the paths removed or restored.
    """
    parent = Path(parent)
    done: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for p in entries:
        pid = _owner_pid(p.name, name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if OLD_MARK in p.name and not (parent / name).exists():
                os.replace(p, parent / name)
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        done.append(p)
    return done


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
    sweep_stale(path.parent, path.name)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=path.suffix, dir=path.parent)
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
        FileExistsError: ``path`` appeared meanwhile and ``replace`` is False (use a lock, as
            ``infomerge-export`` does, to make the check and the rename one step).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    work = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), dir=path.parent))
    try:
        work.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; artifacts get ordinary permissions
        yield work
        with signals_deferred():  # the renames below are one step for SIGINT / SIGTERM
            if path.exists():
                if not replace:
                    raise FileExistsError(f"{path} exists (created meanwhile by another process)")
                old = path.with_name(f".{path.name}{OLD_MARK}{os.getpid()}")
                os.replace(path, old)
                try:
                    os.replace(work, path)
                except BaseException:
                    os.replace(old, path)  # put the old one back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(directory: Path, flag: str, target: Path) -> None:
    """Create and remove a temporary file in ``directory``; raise OutputPathError if it fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".infomerge-probe-", dir=directory)
    except OSError as exc:
        raise OutputPathError(
            f"{flag} {target}: cannot write in {directory} ({exc.strerror or exc}); "
            "choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(name)


def _check_parent(path: Path, flag: str) -> None:
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(
            f"{flag} {path}: {base} is not a directory, so nothing can be created under it; "
            "choose another path"
        )
    _probe_writable(base, flag, path)


def check_output_file(path: str | os.PathLike, flag: str, *, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before any work, that a file can be written at ``path``; return it as a Path.

    Args:
        path: the file to write (it may exist: it will be replaced).
        flag: the option that named it, for the message (``--json``).
        suffixes: accepted extensions, lower case with the dot (None: any).

    Raises:
        OutputPathError: ``path`` is a directory, has an unknown extension, or its nearest existing
            ancestor is not a directory or not writable (probed by creating a temporary file).
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{flag} {path}: unknown extension {path.suffix or '(none)'!r}; use {' or '.join(suffixes)}"
        )
    if path.is_dir():
        example = path / ("out" + (suffixes or (".json",))[0])
        raise OutputPathError(f"{flag} {path}: is a directory; give a file name, e.g. {example}")
    _check_parent(path, flag)
    return path


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check, before any work, that directory ``path`` can be created (or written into).

    Raises:
        OutputPathError: ``path`` is an existing file, or its nearest existing ancestor is not a
            directory or not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a file, a directory is wanted; choose another path")
    if path.is_dir():
        _probe_writable(path, flag, path)
        _check_parent(path, flag)  # the atomic writers create siblings of it
    else:
        _check_parent(path, flag)
    return path


__all__ = [
    "OLD_MARK",
    "TMP_MARK",
    "check_output_dir",
    "check_output_file",
    "sweep_stale",
    "temporary_prefix",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_temporary",
]
