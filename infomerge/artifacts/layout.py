"""The file names of an artifact directory, and where an engine of a graph for a GPU lives.

An ``infomerge-export`` directory::

    manifest.json              what it holds, how it was made, sha256 of every file
    vision.onnx[.data]         pixel_values -> H, A, g
    ort/vision.onnx[.data]     the same graph with ONNX Runtime's transformer fusions (fp32; ORT only)
    image_newline.npy          (D,) float32
    compress.onnx              H, A, g -> tokens, index   (fixed-budget compressor)
    vision_compress.onnx       pixel_values -> tokens, index (--fused)
    compress_plugin.onnx       compress.onnx with the merge as a TensorRT plugin op (--merge-plugin)
    engines/NAME.smXY.engine   a TensorRT engine of NAME.onnx for compute capability X.Y
    engines/NAME.smXY.json     its provenance (infomerge.engines.metadata)
    llm/model.onnx[.data]      the LLM decoder graph (onnxruntime-genai model builder)
    llm/embed_tokens.npy       its token embedding table, (V, d)
    llm/genai_config.json, llm/tokenizer.json, ...

Every module that reads or writes one of these names takes it from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from infomerge.errors import ArtifactError, TargetError

MANIFEST = "manifest.json"
VISION_ONNX = "vision.onnx"
ORT_DIR = "ort"  # graphs with ONNX Runtime contrib ops: kept out of the top level, which gets engines
VISION_ORT_ONNX = f"{ORT_DIR}/{VISION_ONNX}"
IMAGE_NEWLINE = "image_newline.npy"
COMPRESS_ONNX = "compress.onnx"
FUSED_ONNX = "vision_compress.onnx"
PLUGIN_ONNX = "compress_plugin.onnx"
ENGINES_DIR = "engines"
LLM_DIR = "llm"
LLM_MODEL = "model.onnx"
LLM_EMBED = "embed_tokens.npy"
LLM_GENAI_CONFIG = "genai_config.json"
LLM_TOKENIZER = "tokenizer.json"
TIMING_CACHE = "timing.cache"


def graph_file(graph: str) -> str:
    """``"vision"`` -> ``"vision.onnx"``: a graph's file name from its name in the manifest."""
    return f"{graph}.onnx"


# --- compute capabilities and engine names ---------------------------------------------------------
def normalize_cc(cc) -> str:
    """A compute capability as "major.minor": 86, "86", "8.6", "sm86", "sm_86", (8, 6) -> "8.6".

    Raises:
        TargetError: for anything else.
    """
    if isinstance(cc, tuple | list) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm").removeprefix("_")
    if "." in text:
        major, _, minor = text.partition(".")
        if major.isdigit() and minor.isdigit():
            return f"{int(major)}.{int(minor)}"
    elif text.isdigit() and len(text) in (2, 3):
        return f"{int(text[:-1])}.{int(text[-1])}"
    raise TargetError(f"not a compute capability: {cc!r} (write 86, 8.6 or sm86)")


def parse_compute_capabilities(text: str | None) -> list[str]:
    """``--compute-capability`` "86,89" -> ["8.6", "8.9"] (duplicates dropped, order kept); None/"" -> [].

    Raises:
        TargetError: a malformed entry.
    """
    if not text:
        return []
    out: list[str] = []
    for part in str(text).split(","):
        if part.strip():
            cc = normalize_cc(part)
            if cc not in out:
                out.append(cc)
    return out


def sm_tag(cc: str) -> str:
    """ "8.6" -> "sm86" (the tag in engine file names)."""
    return "sm" + normalize_cc(cc).replace(".", "")


def engine_paths(out_dir: str | os.PathLike, graph: str, cc: str) -> tuple[Path, Path]:
    """(engine path, metadata path) of graph ``graph`` built for ``cc``: ``vision.sm86.engine/.json``."""
    base = Path(out_dir) / f"{graph}.{sm_tag(cc)}"
    return base.with_name(base.name + ".engine"), base.with_name(base.name + ".json")


def metadata_path_for(engine_path: str | os.PathLike) -> Path:
    """``X.sm86.engine`` -> ``X.sm86.json``."""
    return Path(engine_path).with_suffix(".json")


def find_engine(artifact_dir: str | os.PathLike, graph: str, compute_capability: str | None = None) -> Path:
    """The engine of ``graph`` in ``ARTIFACT_DIR/engines`` for a compute capability.

    Args:
        artifact_dir: the exporter's output folder.
        graph: "vision", "compress", "vision_compress", ...
        compute_capability: target (the caller passes the local GPU's); None: the only engine of
            that graph there is.

    Raises:
        ArtifactError: no engine for that graph/target (the message lists what exists).
    """
    folder = Path(artifact_dir) / ENGINES_DIR
    found = sorted(folder.glob(f"{graph}.sm*.engine"))
    cc = compute_capability
    if cc is not None:
        want = folder / f"{graph}.{sm_tag(normalize_cc(cc))}.engine"
        if want.is_file():
            return want
    elif len(found) == 1:
        return found[0]
    have = ", ".join(p.name for p in found) or "none"
    target = (
        f"compute capability {normalize_cc(cc)}" if cc else "this machine (no GPU visible; name a target)"
    )
    raise ArtifactError(
        f"{folder}: no {graph} engine for {target} (have: {have}); build one with "
        f"python -m infomerge.engines.builder {artifact_dir} --engine rtx --compute-capability "
        f"{sm_tag(normalize_cc(cc))[2:] if cc else '86'}"
    )


__all__ = [
    "COMPRESS_ONNX",
    "ENGINES_DIR",
    "FUSED_ONNX",
    "IMAGE_NEWLINE",
    "LLM_DIR",
    "LLM_EMBED",
    "LLM_GENAI_CONFIG",
    "LLM_MODEL",
    "LLM_TOKENIZER",
    "MANIFEST",
    "ORT_DIR",
    "PLUGIN_ONNX",
    "TIMING_CACHE",
    "VISION_ONNX",
    "VISION_ORT_ONNX",
    "engine_paths",
    "find_engine",
    "graph_file",
    "metadata_path_for",
    "normalize_cc",
    "parse_compute_capabilities",
    "sm_tag",
]
