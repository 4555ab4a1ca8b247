"""``--save-viz``: what the compressor kept, drawn over the sampled frames (matplotlib, PNG).

One panel per sampled frame, in a grid, with the 14 x 14 token grid laid over the frame (token
``(r, c)`` covers the frame region it was pooled from: preprocessing resizes the whole frame to
384 x 384, aspect not kept):

- tokens not kept are dimmed;
- salient tokens (attention selection, spec step 5) have a red outline;
- anchors of merged context tokens (step 6) carry a cyan dot;
- each panel's border has its temporal segment's colour; the first frame of a segment is labelled
  ``S<k>  B=<budget>`` (the segment's context budget ``B_k``);
- a timeline strip underneath shows the segments over the frame axis with their budgets.

The structure (segments, budgets, salient and anchor sets) is that of the paper-exact reference
(:func:`infomerge.compress.reference.reference`). When the tokens came from the ONNX Runtime or
TensorRT graph (fixed budget), the reference is recomputed on the same features for the drawing,
while "kept" shows what the graph actually kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_SEGMENT_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_PANEL_WIDTH = 192  # pixels of each frame thumbnail


def _thumbnail(frame: np.ndarray, width: int = _PANEL_WIDTH) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    height = max(1, round(h * width / w))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _structure(answer, config):
    """The method's reference record for ``answer`` (recomputed when the backend was not torch).

    Its ``salient``, ``anchors``, ``segments`` and ``budgets`` are drawn where the method has them
    (InfoMerge, FastVID); other methods are drawn with their kept tokens only.
    """
    detail = answer.video_tokens.detail
    if detail is not None or config is None:
        return detail
    from infomerge.compress.methods import get_method

    f = answer.features
    return get_method(answer.info.get("method") or "infomerge").reference(f.H, f.A, f.g, config)


def save_visualization(path: str | os.PathLike, answer, config=None, columns: int = 8) -> Path:
    """Draw the frames of ``answer`` with the kept, salient and anchor tokens; write a PNG.

    Args:
        path: output PNG path (parent directories created; written atomically).
        answer: a :class:`~infomerge.runtime.pipeline.Answer`.
        config: the pipeline's method configuration (None: no compression; the frames are drawn
            with every token kept).
        columns: panels per row.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    clip = answer.video.clip
    frames = clip.frames
    nf = len(frames)
    n = answer.features.H.shape[1]  # tokens per frame
    side = int(round(n**0.5))
    kept = np.zeros(nf * n, dtype=bool)
    kept[answer.video_tokens.index.cpu().numpy()] = True
    kept = kept.reshape(nf, side, side)
    detail = _structure(answer, config)
    salient = np.zeros(nf * n, dtype=bool)
    anchors = np.zeros(nf * n, dtype=bool)
    segments: list[tuple[int, int]] = [(0, nf)]
    budgets: list[int | None] = [None]
    if detail is not None and hasattr(detail, "segments"):
        salient[detail.salient.cpu().numpy()] = True
        anchors[detail.anchors.cpu().numpy()] = True
        segments, budgets = list(detail.segments), list(detail.budgets)
    salient, anchors = salient.reshape(nf, side, side), anchors.reshape(nf, side, side)
    seg_of = np.zeros(nf, dtype=int)
    for k, (s, e) in enumerate(segments):
        seg_of[s:e] = k

    thumbs = [_thumbnail(f) for f in frames]
    th, tw = thumbs[0].shape[:2]
    rows = -(-nf // columns)
    panel_w = 2.0
    panel_h = panel_w * th / tw + 0.32
    fig = plt.figure(figsize=(columns * panel_w, rows * panel_h + 1.3), dpi=100)
    grid = fig.add_gridspec(
        rows + 1, columns, height_ratios=[panel_h] * rows + [0.9], hspace=0.35, wspace=0.05
    )
    times = clip.timestamps
    for i in range(nf):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(thumbs[i], extent=(0, side, side, 0), interpolation="bilinear")
        dim = np.zeros((side, side, 4), dtype=np.float32)
        dim[..., 3] = np.where(kept[i], 0.0, 0.55)
        ax.imshow(dim, extent=(0, side, side, 0), interpolation="nearest")
        for r, c in zip(*np.nonzero(salient[i])):
            ax.add_patch(
                Rectangle((c + 0.05, r + 0.05), 0.9, 0.9, fill=False, edgecolor="red", linewidth=0.7)
            )
        ar, ac = np.nonzero(anchors[i])
        if ar.size:
            ax.scatter(ac + 0.5, ar + 0.5, s=7, c="cyan", edgecolors="black", linewidths=0.3)
        k = seg_of[i]
        colour = _SEGMENT_COLOURS[k % len(_SEGMENT_COLOURS)]
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3.0)
        ax.set_xticks([])
        ax.set_yticks([])
        t = "" if np.isnan(times[i]) else f" {times[i]:.1f}s"
        title = f"#{int(clip.indices[i])}{t}  kept {int(kept[i].sum())}"
        if budgets[k] is not None and segments[k][0] == i:
            title = f"S{k}  B={budgets[k]}\n" + title
            ax.set_title(title, fontsize=6.5, color=colour, fontweight="bold", pad=2)
        else:
            ax.set_title(title, fontsize=6.5, pad=2)

    # timeline of segments and budgets
    tl = fig.add_subplot(grid[rows, :])
    for k, (s, e) in enumerate(segments):
        colour = _SEGMENT_COLOURS[k % len(_SEGMENT_COLOURS)]
        tl.add_patch(
            Rectangle((s, 0), e - s, 1, facecolor=colour, alpha=0.6, edgecolor="black", linewidth=0.5)
        )
        label = f"S{k}" if budgets[k] is None else f"S{k}\nB={budgets[k]}"
        tl.text((s + e) / 2, 0.5, label, ha="center", va="center", fontsize=7)
    tl.set_xlim(0, nf)
    tl.set_ylim(0, 1)
    tl.set_yticks([])
    tl.set_xticks(range(0, nf + 1, max(1, nf // 16)))
    tl.set_xlabel("sampled frame (segments: colour; B = context budget)", fontsize=8)
    tl.tick_params(labelsize=7)

    info = answer.info
    total = nf * n
    if config is None:
        head = f"no compression: all {total} video tokens kept"
    else:
        head = (
            f"{info.get('method')} r={info.get('retention'):g} ({info.get('compress_backend')}): kept "
            f"{int(kept.sum())} of {total} tokens, {len(segments)} segments; red box = salient, "
            "cyan dot = merge anchor, dimmed = dropped"
        )
    fig.suptitle(f"{Path(str(clip.path)).name}  |  {info.get('backbone')}  |  {head}", fontsize=9, y=0.995)

    from PIL import Image

    from infomerge.artifacts.atomic import atomic_path

    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)
        with Image.open(tmp) as im:  # a 256-colour palette PNG is a third of the size
            palette = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            palette.save(tmp, format="PNG", optimize=True)
    return out


__all__ = ["save_visualization"]
