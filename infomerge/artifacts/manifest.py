"""``manifest.json``: what an artifact directory holds, how it was made, and its file hashes.

Layout of a manifest (schema 1)::

    {
      "format": "infomerge-artifacts", "schema": 1,
      "created": "2026-...Z", "command": "infomerge-export --backbone tiny ...",
      "backbone": {"name", "hf_id", "frames", "newline", "tokens_per_frame", "text_hidden", ...},
      "checkpoint": {"weights": "checkpoint"|"random", "checkpoint", "revision", "weights_sha256", ...},
      "frames": F, "precision": "fp32"|"fp16", "opset": 17, "method": ..., "retention": ...,
      "graphs":  {"vision": {"file", "external_data", "inputs": {name: {"shape", "dtype"}}, "outputs": {...},
                             "validation": {...}}, ...},
      "arrays":  {"image_newline": {"file", "shape", "dtype"}},
      "engines": {...}, "llm": {...},          # free sections other steps fill
      "versions": {"python", "torch", "transformers", "onnx", "onnxruntime", ...},
      "files": {"relative/path": {"sha256", "bytes"}, ...},  # every file but manifest.json
      "manifest_sha256": "..."   # sha256 of the canonical JSON of everything above
    }

``files`` is computed from the directory when the manifest is written (:func:`write_manifest`), so
a step that adds a file needs no bookkeeping beyond describing it in its own section.
:func:`verify_manifest` is what the runtime and engine code call before using a directory.

Content verification. ``manifest_sha256`` (the digest of the manifest's own body) catches a
manifest edited by hand, e.g. a retention changed while the graphs keep the old budget. File
contents are checked against their sha256 by :func:`verify_manifest`: hashing a 1.7 GB vision graph
takes seconds, so a file whose contents were verified once is remembered in a *verified stamp*
(:func:`stamp_path`, in the user cache: ``$INFOMERGE_CACHE/verified/`` or
``~/.cache/infomerge/verified/``), keyed by the file's size, mtime, ctime, inode and device, and by
the manifest's digest. Writing a file (even with the same size and a restored mtime) changes its
ctime, so the next load hashes it again; ``rehash=True`` ignores the stamp.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from infomerge.artifacts.atomic import is_temporary
from infomerge.artifacts.layout import MANIFEST
from infomerge.errors import ArtifactError

MANIFEST_NAME = MANIFEST
FORMAT = "infomerge-artifacts"
SCHEMA = 1
# Packages whose versions are recorded (those installed).
TRACKED_PACKAGES = (
    "infomerge",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-genai",
    "tensorrt",
    "tensorrt-rtx-cu13-bindings",
    "triton",
)
_CHUNK = 8 << 20


def package_versions(packages: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    """{package: version} of the installed ones among ``packages``, plus ``python``."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 8 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(directory: str | os.PathLike) -> dict[str, dict]:
    """{posix relative path: {"sha256", "bytes"}} of every regular file under ``directory``.

    ``manifest.json`` itself is left out; so are hidden temporaries of the atomic writers.
    """
    root = Path(directory)
    out: dict[str, dict] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == MANIFEST_NAME or is_temporary(p.name):
            continue
        out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def manifest_digest(data: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``data`` without ``manifest_sha256``."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_manifest(**fields) -> dict:
    """A manifest skeleton (format, schema, creation time, versions, empty free sections) + ``fields``."""
    data = {
        "format": FORMAT,
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": None,
        **fields,
    }
    for section in ("graphs", "arrays", "engines"):
        data.setdefault(section, {})
    data.setdefault("versions", package_versions())
    return data


def tensor_spec(shape: Iterable[int], dtype: str) -> dict:
    """``{"shape": [...], "dtype": "float32"}``: how graph inputs/outputs are described."""
    return {"shape": [int(s) for s in shape], "dtype": str(dtype)}


def write_manifest(directory: str | os.PathLike, data: dict) -> Path:
    """Hash every file of ``directory`` into ``data["files"]`` and write ``manifest.json``.

    Call it last, after every file is in place. Returns the manifest path.
    """
    root = Path(directory)
    data = dict(data)
    data.pop("manifest_sha256", None)
    data["files"] = file_hashes(root)
    data["manifest_sha256"] = manifest_digest(data)
    from infomerge.artifacts.atomic import atomic_write_text

    return atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read ``<directory>/manifest.json`` (no checks beyond the format; see :func:`verify_manifest`).

    Raises:
        ArtifactError: no directory, no manifest, unreadable JSON, or not an infomerge manifest.
    """
    root = Path(directory)
    fix = f"run `infomerge-export --output {root}` to create it"
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory; {fix}")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path}: missing; not an artifact directory or an interrupted export; {fix} --force"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc}); re-export with --force") from None
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not an infomerge manifest (format {data.get('format')!r})")
    if data.get("schema") != SCHEMA:
        raise ArtifactError(
            f"{path}: manifest schema {data.get('schema')!r}, this infomerge reads schema {SCHEMA}; "
            "re-export with this version (infomerge-export ... --force)"
        )
    recorded = data.get("manifest_sha256")
    if recorded is not None and recorded != manifest_digest(data):
        raise ArtifactError(
            f"{path}: edited after export (its manifest_sha256 does not match its contents); the graphs "
            f"keep what they were exported with; {reexport_command(data, root)}"
        )
    return data


def reexport_command(data: dict, root: str | os.PathLike) -> str:
    """``re-export: <the recorded command> --force`` (or a generic one when none is recorded)."""
    import shlex

    command = data.get("command")
    if isinstance(command, str) and command.startswith("infomerge-export"):
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        if words:
            out: list[str] = []
            skip = False
            for w in words:  # this directory, wherever it was exported to
                if skip:
                    skip = False
                elif w == "--output":
                    skip = True
                elif not w.startswith("--output=") and w != "--force":
                    out.append(w)
            return f"re-export: {shlex.join([*out, '--output', str(root), '--force'])}"
    name = (data.get("backbone") or {}).get("name", "?")
    return f"re-export: infomerge-export --backbone {name} --output {root} --force"


def cache_root() -> Path:
    """The user cache: ``$INFOMERGE_CACHE``, else ``~/.cache/infomerge``."""
    root = os.environ.get("INFOMERGE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "infomerge"


def stamp_path(directory: str | os.PathLike) -> Path:
    """The verified stamp of an artifact directory: ``<cache>/verified/<sha1 of its real path>.json``."""
    key = hashlib.sha1(str(Path(directory).resolve()).encode("utf-8")).hexdigest()
    return cache_root() / "verified" / f"{key}.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def file_identity(path: str | os.PathLike) -> list[int]:
    """``[size, mtime_ns, ctime_ns, inode, device]`` of a file: what a verified stamp is keyed by.

    Any write to the file changes it (the ctime, even when size and mtime are restored), so a
    digest remembered under it is valid only for the bytes it was computed from.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    return _stat_key(os.stat(path))


def _read_stamp(path: Path, digest: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("manifest_sha256") != digest:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_stamp(path: Path, root: Path, digest: str, files: dict) -> None:
    from infomerge.artifacts.atomic import atomic_write_json

    try:
        atomic_write_json(path, {"directory": str(root.resolve()), "manifest_sha256": digest, "files": files})
    except OSError:
        pass  # a read-only cache: verify again next time


def verify_manifest(
    directory: str | os.PathLike,
    *,
    backbone: str | None = None,
    frames: int | None = None,
    hashes: bool = True,
    rehash: bool = False,
    versions: Iterable[str] = (),
    require: Iterable[str] = (),
) -> dict:
    """Load the manifest and check the directory against it; return the manifest.

    Args:
        directory: the artifact directory.
        backbone: expected backbone name (None: any).
        frames: expected frame count F (None: any).
        hashes: check the sha256 of every listed file (off: sizes only). A file verified before
            and unchanged since (same size, mtime, ctime, inode; same manifest) is not hashed
            again: see :func:`stamp_path`.
        rehash: hash every file even when the stamp says it was verified.
        versions: package names whose installed version must equal the recorded one (e.g.
            ``("tensorrt",)`` for serialized engines); a package recorded but not installed fails.
        require: relative paths that must be listed and present (e.g. ``"vision.onnx"``).

    Raises:
        ArtifactError: the first mismatch found, naming it and the fix (re-export with ``--force``).
    """
    root = Path(directory)
    data = load_manifest(root)
    redo = reexport_command(data, root)
    got_bb = data.get("backbone", {}).get("name")
    if backbone is not None and got_bb != backbone:
        raise ArtifactError(
            f"{root}: artifacts are for backbone {got_bb!r}, not {backbone!r}; use --backbone {got_bb} or "
            f"export {backbone}: infomerge-export --backbone {backbone}"
        )
    if frames is not None and data.get("frames") != frames:
        raise ArtifactError(
            f"{root}: artifacts are for {data.get('frames')} frames, not {frames}; {redo} --frames {frames}"
        )
    files = data.get("files", {})
    for rel in require:
        if rel not in files:
            raise ArtifactError(f"{root}: manifest lists no {rel}; {redo} (with the option that makes it)")
    stamp = stamp_path(root) if hashes else None
    digest = manifest_digest(data)
    known = {} if (stamp is None or rehash) else _read_stamp(stamp, digest)
    verified: dict[str, dict] = {}
    for rel, info in files.items():
        p = root / rel
        if not p.is_file():
            raise ArtifactError(f"{root}: {rel} is listed in the manifest but missing; {redo}")
        st = p.stat()
        if st.st_size != info.get("bytes"):
            raise ArtifactError(
                f"{root}: {rel} has {st.st_size} bytes, the manifest says {info.get('bytes')}; {redo}"
            )
        if not hashes:
            continue
        key = _stat_key(st)
        seen = known.get(rel)
        if isinstance(seen, dict) and seen.get("stat") == key and seen.get("sha256") == info.get("sha256"):
            verified[rel] = seen
            continue
        got = sha256_file(p)
        if got != info.get("sha256"):
            raise ArtifactError(
                f"{root / rel}: contents do not match the sha256 in the manifest (modified or corrupt); "
                f"{redo}"
            )
        verified[rel] = {"stat": key, "sha256": got}
    if stamp is not None and verified != known:
        _write_stamp(stamp, root, digest, verified)
    installed = package_versions(versions)
    recorded = data.get("versions", {})
    for name in versions:
        if name in recorded and installed.get(name) != recorded[name]:
            raise ArtifactError(
                f"{root}: made with {name} {recorded[name]}, installed is {installed.get(name, 'none')}; "
                f"install {name}=={recorded[name]} or {redo}"
            )
    return data


def command_line(argv: Iterable[str] | None, prog: str) -> str:
    """The command as a shell-quoted string (``sys.argv[1:]`` when ``argv`` is None)."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([prog, *args])


__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "SCHEMA",
    "cache_root",
    "file_identity",
    "command_line",
    "file_hashes",
    "load_manifest",
    "manifest_digest",
    "new_manifest",
    "reexport_command",
    "stamp_path",
    "package_versions",
    "sha256_file",
    "tensor_spec",
    "verify_manifest",
    "write_manifest",
]
