"""Find checkpoints and read only the tensors the vision side needs.

A LLaVA-OneVision checkpoint is a directory of safetensors files (sharded with a
``model.safetensors.index.json`` for the 7B models). Exporting the vision encoder reads the
vision tower, the projector and ``image_newline`` from it, and the SigLIP ``post_layernorm`` +
``head`` from the SigLIP checkpoint; the language model's tensors are never read (safetensors
headers are parsed, then only the selected tensors are copied out of the memory map, and shards
holding none of them are not opened).

Key layouts understood (``X`` = a SigLIP vision-transformer key such as
``encoder.layers.3.mlp.fc1.weight``):

- llava-hf checkpoints on the hub: ``vision_tower.vision_model.X``, ``multi_modal_projector.*``,
  ``image_newline``, ``language_model.*``;
- transformers >= 4.52 / 5 in memory: ``model.vision_tower[.vision_model].X``,
  ``model.multi_modal_projector.*``, ``model.image_newline``, ``model.language_model.*``, ``lm_head.*``;
- transformers 5 ``save_pretrained``: ``vision_tower.X``, ``language_model.model.*``;
- SigLIP (``google/siglip-so400m-patch14-384``): ``vision_model.post_layernorm.*``,
  ``vision_model.head.*`` (``text_model.*`` ignored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from infomerge.backbones.registry import Backbone, get_backbone
from infomerge.errors import ArtifactError, CheckpointNotFoundError, CorruptCheckpointError

INDEX_FILE = "model.safetensors.index.json"


# --- where is the checkpoint ---------------------------------------------------------------------
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _not_found(what: str, backbone: str, reason: str, flag: str = "--model-path") -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"checkpoint {what!r} (backbone {backbone!r}) is not available: {reason}. Download it on a "
        f"machine with network access (`hf download {what}`) and pass its directory with {flag} DIR, "
        "or use --random-weights for random weights of the same size"
    )


def _hub_snapshot(repo_id: str, backbone: str, patterns: list[str], required: list[str], flag: str) -> Path:
    """A local snapshot of ``repo_id`` holding the ``required`` files (cache first, then the hub,
    downloading only files that match ``patterns``)."""
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if all((snap / f).is_file() for f in required):
            return snap
    except Exception:  # noqa: BLE001 - any miss in the cache means: try the hub
        pass
    if hub_offline():
        raise _not_found(
            repo_id,
            backbone,
            "not (completely) in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)",
            flag,
        )
    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all mean "not available"
        raise _not_found(repo_id, backbone, f"download failed ({type(exc).__name__}: {exc})", flag) from None
    missing = [f for f in required if not (snap / f).is_file()]
    if missing:
        raise _not_found(repo_id, backbone, f"the hub snapshot has no {missing}", flag)
    return snap


def _hub_checkpoint(bb: Backbone, select: Callable[[str], object] | None) -> Path:
    """The hub snapshot of ``bb.hf_id`` with the shards holding keys ``select`` maps to a value
    (every shard when ``select`` is None)."""
    snap = _hub_snapshot(bb.hf_id, bb.name, ["*.json"], ["config.json"], "--model-path")
    if (snap / INDEX_FILE).is_file():
        weight_map = _weight_map(snap / INDEX_FILE)
        shards = sorted({f for k, f in weight_map.items() if select is None or select(k) is not None})
    else:
        shards = ["model.safetensors"]
    patterns = ["*.json", "*.jinja", "*.txt", *shards]
    return _hub_snapshot(bb.hf_id, bb.name, patterns, ["config.json", *shards], "--model-path")


def _check_dir(path: Path, what: str, backbone: str, flag: str) -> Path:
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"{flag} {path}: no such directory (checkpoint for backbone {backbone!r})"
        )
    if not any(path.glob("*.safetensors")):
        raise CheckpointNotFoundError(
            f"{flag} {path}: no *.safetensors file in it; expected a Hugging Face checkpoint of {what}"
        )
    return path


def check_checkpoint_files(directory: str | os.PathLike, fix: str) -> Path:
    """Read the header of every ``*.safetensors`` file and parse ``config.json`` of a checkpoint.

    Cheap (headers only, no tensor data) and run before anything loads, so that a truncated or
    overwritten file is named instead of failing deep inside a loader.

    Args:
        directory: the checkpoint directory.
        fix: how to rebuild it, appended to the message.

    Raises:
        CorruptCheckpointError: a file that cannot be parsed (named, with ``fix``).
    """
    d = Path(directory)
    config = d / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{config}: unreadable ({exc}); {fix}") from None
    index = d / INDEX_FILE
    if index.is_file():
        # sharded: the index is parsed here; each shard's header is checked when a loader opens it
        # (a vision-only load never opens the LLM's shards)
        try:
            _weight_map(index)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"{index}: unreadable ({exc}); {fix}") from None
        return d
    for f in sorted(d.glob("*.safetensors")):
        with open_safetensors(f, fix) as fh:
            fh.keys()
    return d


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, fix: str = "restore or re-download the checkpoint"):
    """``safetensors.safe_open(path)``, a file that cannot be parsed raising a named error.

    Raises:
        CorruptCheckpointError: ``path`` is truncated or not a safetensors file (named, with ``fix``).
    """
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own (Rust) error types
        raise CorruptCheckpointError(f"{path}: not a readable safetensors file ({exc}); {fix}") from None
    with handle as fh:
        yield fh


def resolve_checkpoint(backbone: Backbone | str, model_path: str | os.PathLike | None = None) -> Path:
    """The local directory of ``backbone``'s checkpoint.

    ``model_path`` if given; the built tiny checkpoint for ``tiny`` / ``tiny-video`` (``tiny-qwen``:
    :func:`infomerge.backbones.tiny_qwen.build_tiny_qwen_checkpoint`); else the hub snapshot of
    ``backbone.hf_id`` (from the cache, or downloaded when online: config, index and only the
    shards that hold vision tensors).

    Raises:
        CheckpointNotFoundError: ``model_path`` is not a checkpoint directory, or the hub
            checkpoint is neither cached nor downloadable; the message names it and ``--model-path``.
        CorruptCheckpointError: a weights or config file that cannot be parsed
            (:func:`check_checkpoint_files`); the message names it and how to rebuild it.
    """
    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if model_path is not None:
        path = _check_dir(Path(model_path), bb.hf_id or bb.name, bb.name, "--model-path")
        return check_checkpoint_files(path, f"restore the checkpoint in {path} (or download it again)")
    if bb.hf_id is None:
        path = bb.family_spec.build_tiny_checkpoint()
        return check_checkpoint_files(path, f"delete {path}; the next run rebuilds it (rm -r {path})")
    # vision_shards_only False (Qwen2.5-VL): the LLM reads every shard
    path = _hub_checkpoint(bb, vision_key if bb.family_spec.vision_shards_only else None)
    return check_checkpoint_files(
        path, f"delete the cached snapshot {path} and run again to download it (or pass --model-path)"
    )


def resolve_siglip_head(
    backbone: Backbone | str,
    checkpoint_dir: str | os.PathLike | None = None,
    siglip_path: str | os.PathLike | None = None,
) -> Path:
    """The local directory of the SigLIP checkpoint that holds post_layernorm + head.

    Order: ``siglip_path``; ``<checkpoint_dir>/siglip_head`` (the tiny layout, or a head copied
    there by the user); the hub snapshot of ``backbone.siglip_head_id`` (cache, then download).

    Raises:
        CheckpointNotFoundError: none of these is available (the message names ``--siglip-path``).
    """
    from infomerge.backbones.tiny import SIGLIP_HEAD_SUBDIR

    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if siglip_path is not None:
        return _check_dir(Path(siglip_path), bb.siglip_head_id or "the SigLIP head", bb.name, "--siglip-path")
    if checkpoint_dir is not None and (Path(checkpoint_dir) / SIGLIP_HEAD_SUBDIR).is_dir():
        return _check_dir(
            Path(checkpoint_dir) / SIGLIP_HEAD_SUBDIR, "the SigLIP head", bb.name, "--siglip-path"
        )
    if bb.siglip_head_id is None:
        raise CheckpointNotFoundError(
            f"backbone {bb.name!r}: no {SIGLIP_HEAD_SUBDIR}/ in {checkpoint_dir}; pass the SigLIP head "
            "checkpoint with --siglip-path DIR"
        )
    files = ["config.json", "model.safetensors"]
    return _hub_snapshot(bb.siglip_head_id, bb.name, files, files, "--siglip-path")


def checkpoint_revision(path: str | os.PathLike) -> str | None:
    """The hub commit of a snapshot directory (``.../snapshots/<40 hex>``), else None."""
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})", str(Path(path).resolve()))
    return m.group(1) if m else None


# --- key mapping ---------------------------------------------------------------------------------
def vision_key(key: str) -> str | None:
    """Checkpoint key -> :class:`~infomerge.backbones.vision.VisionEncoder` key, or None (not needed).

    Maps tower embeddings / encoder layers, the projector and ``image_newline`` from any of the
    LLaVA layouts in the module docstring. The LLaVA tower's own post_layernorm (unused: features
    are taken before it) and everything of the language model map to None.
    """
    k = key[6:] if key.startswith("model.") else key
    if k == "image_newline" or k.startswith("multi_modal_projector."):
        return k
    if k.startswith("vision_tower."):
        rest = k[len("vision_tower.") :]
        if rest.startswith("vision_model."):
            rest = rest[len("vision_model.") :]
        if rest.startswith(("embeddings.", "encoder.")) and not rest.endswith("position_ids"):
            return "vision_tower." + rest
    return None


def head_key(key: str) -> str | None:
    """SigLIP checkpoint key -> ``siglip_head.*`` key (post_layernorm and the MAP head), or None."""
    k = key[len("vision_model.") :] if key.startswith("vision_model.") else key
    if k.startswith(("post_layernorm.", "head.")):
        return "siglip_head." + k
    return None


# --- reading -------------------------------------------------------------------------------------
def _weight_map(index: Path) -> dict[str, str]:
    return json.loads(index.read_text())["weight_map"]


def safetensors_key_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Every tensor key of a checkpoint directory -> the safetensors file that holds it.

    Uses ``model.safetensors.index.json`` when present (no file opened), else reads each file's
    header (no tensor data).
    """
    d = Path(directory)
    index = d / INDEX_FILE
    if index.is_file():
        return {k: d / f for k, f in _weight_map(index).items()}
    out: dict[str, Path] = {}
    for f in sorted(d.glob("*.safetensors")):
        with open_safetensors(f) as fh:
            out.update({k: f for k in fh.keys()})  # noqa: SIM118 - safe_open has no __iter__
    return out


def read_tensors(
    directory: str | os.PathLike, rename: Callable[[str], str | None]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read only the tensors whose key ``rename`` maps to a name.

    Args:
        directory: checkpoint directory (safetensors, sharded or not).
        rename: checkpoint key -> new key, or None to skip the tensor (never read).

    Returns:
        (tensors under their new keys in the checkpoint's dtype, the checkpoint keys read).
    """
    by_file: dict[Path, list[str]] = {}
    for key, f in safetensors_key_files(directory).items():
        if rename(key) is not None:
            by_file.setdefault(f, []).append(key)
    out: dict[str, torch.Tensor] = {}
    read: list[str] = []
    for f, keys in sorted(by_file.items()):
        with open_safetensors(f) as fh:
            for key in sorted(keys):
                out[rename(key)] = fh.get_tensor(key)
                read.append(key)
    return out, read


def _read_with_files(
    directory: Path, rename: Callable[[str], str | None]
) -> tuple[dict[str, torch.Tensor], list[str], list[Path]]:
    """:func:`read_tensors`, and the files the tensors came from."""
    files = sorted({f for k, f in safetensors_key_files(directory).items() if rename(k) is not None})
    state, read = read_tensors(directory, rename)
    return state, read, files


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (key, dtype, shape, raw bytes) of each tensor, keys sorted: a weight fingerprint."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_stamp_path(files: list[Path], keys: list[str]) -> Path:
    """Where the fingerprint of ``keys`` read from ``files`` is remembered:
    ``<cache>/weights/<sha1 of the files' real paths and the keys>.json``."""
    from infomerge.artifacts.manifest import cache_root

    h = hashlib.sha1()
    for f in sorted(str(Path(f).resolve()) for f in files):
        h.update(f.encode() + b"\0")
    for k in sorted(keys):
        h.update(k.encode() + b"\n")
    return cache_root() / "weights" / f"{h.hexdigest()}.json"


def cached_tensors_sha256(tensors: dict[str, torch.Tensor], files: list[Path], keys: list[str]) -> str:
    """:func:`tensors_sha256` of ``tensors`` (checkpoint ``keys`` read from ``files``), remembered in
    a stamp keyed by the files' identity (size, mtime, ctime, inode, device:
    :func:`infomerge.artifacts.manifest.file_identity`), like the artifacts' verified stamps.

    An unchanged checkpoint is hashed once (6.3 s for the 1.66 GB of fp32 vision tensors of ov-0.5b); a file
    written since (even with its size and mtime restored: its ctime changes) is hashed again. A
    cache that cannot be written only means hashing again next time.
    """
    from infomerge.artifacts.atomic import atomic_write_json
    from infomerge.artifacts.manifest import file_identity

    stamp = weights_stamp_path(files, keys)
    identity = {str(Path(f).resolve()): file_identity(f) for f in files}
    try:
        seen = json.loads(stamp.read_text())
    except (OSError, ValueError):
        seen = None
    if isinstance(seen, dict) and seen.get("files") == identity and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    digest = tensors_sha256(tensors)
    try:
        atomic_write_json(stamp, {"files": identity, "sha256": digest})
    except OSError:
        pass  # a read-only cache: hash again next time
    return digest


def load_vision_state(
    backbone: Backbone | str,
    model_path: str | os.PathLike | None = None,
    *,
    siglip_path: str | os.PathLike | None = None,
    fingerprint: bool = True,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The :class:`VisionEncoder` state dict of ``backbone``, read without the language model.

    Args:
        backbone: a :class:`Backbone` or its registry name.
        model_path: local checkpoint directory (default: :func:`resolve_checkpoint`'s).
        siglip_path: local SigLIP head checkpoint (default: :func:`resolve_siglip_head`'s).
        fingerprint: compute ``weights_sha256`` (:func:`cached_tensors_sha256`: hashed once per
            unchanged checkpoint); off: None (a run records no manifest and needs none).

    Returns:
        (state dict in checkpoint dtypes, source info for the manifest: checkpoint dir / hub id,
        revision, ``weights_sha256`` of the tensors read, the keys read, the same for the head).

    Raises:
        CheckpointNotFoundError: as :func:`resolve_checkpoint` / :func:`resolve_siglip_head`.
        ArtifactError: a checkpoint without vision tensors or without a SigLIP head.
    """
    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    ckpt = resolve_checkpoint(bb, model_path)
    head_dir = resolve_siglip_head(bb, ckpt, siglip_path)
    state, read, files = _read_with_files(ckpt, vision_key)
    if not state:
        raise ArtifactError(
            f"{ckpt}: no vision tower / projector tensors found; is it a LLaVA-OneVision checkpoint?"
        )
    head, head_read, head_files = _read_with_files(head_dir, head_key)
    if not head:
        raise ArtifactError(
            f"{head_dir}: no vision_model.post_layernorm / vision_model.head tensors; pass the original "
            f"SigLIP checkpoint ({bb.siglip_head_id or 'siglip_head/'}) with --siglip-path"
        )
    source = {
        "checkpoint": bb.hf_id if model_path is None and bb.hf_id else str(ckpt),
        "checkpoint_dir": str(ckpt),
        "revision": checkpoint_revision(ckpt),
        "weights_sha256": cached_tensors_sha256(state, files, read) if fingerprint else None,
        "tensors_read": len(read),
        "siglip_head": {
            "checkpoint": bb.siglip_head_id if siglip_path is None and bb.siglip_head_id else str(head_dir),
            "checkpoint_dir": str(head_dir),
            "revision": checkpoint_revision(head_dir),
            "weights_sha256": cached_tensors_sha256(head, head_files, head_read) if fingerprint else None,
            "tensors_read": len(head_read),
        },
    }
    state.update(head)
    return state, source


def load_llava_model(
    backbone: Backbone | str,
    model_path: str | os.PathLike | None = None,
    *,
    random_weights: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
):
    """The full ``LlavaOnevisionForConditionalGeneration`` (LLM included) of ``backbone``.

    For the runtime and HF-equivalence tests. ``random_weights`` builds it from
    :meth:`Backbone.llava_config` with random weights (no download; the 7B models need ~32 GB in
    fp32). Otherwise loads ``model_path`` / the hub checkpoint / the tiny one with ``from_pretrained``.

    Args:
        device: where ``random_weights`` builds and initialises the model ("cpu" or "cuda[:i]"). The
            initialisation draws one random number per weight, single-threaded on the CPU (about
            27 M weights/s on the 2-core CI machine: 5 min for a 7B model); a GPU draws them in
            seconds, from its own generator (the same seed gives other weights than on the CPU).

    Raises:
        CheckpointNotFoundError: as :func:`resolve_checkpoint`.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    if random_weights:
        where = torch.device(device)
        gpus = []  # CUDA generators whose state the seed must not leak out of this call
        if where.type == "cuda":
            gpus = [torch.cuda.current_device() if where.index is None else where.index]
        with torch.random.fork_rng(devices=gpus), where:
            torch.manual_seed(seed)
            return LlavaOnevisionForConditionalGeneration(bb.llava_config()).to(dtype).eval()
    if model_path is None and bb.hf_id is not None:
        path = _hub_checkpoint(bb, None)  # every shard: the LLM is wanted here
    else:
        path = resolve_checkpoint(bb, model_path)
    return LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()


__all__ = [
    "cached_tensors_sha256",
    "check_checkpoint_files",
    "open_safetensors",
    "checkpoint_revision",
    "head_key",
    "hub_offline",
    "load_llava_model",
    "load_vision_state",
    "read_tensors",
    "resolve_checkpoint",
    "resolve_siglip_head",
    "safetensors_key_files",
    "tensors_sha256",
    "vision_key",
    "weights_stamp_path",
]
