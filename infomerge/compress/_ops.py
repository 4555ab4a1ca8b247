"""Small tensor helpers shared by the compression steps.

Deterministic tie-breaking (spec step 6, [D]): in every top-k of the algorithm (segmentation,
attention selection, static candidates, density score) equal values are ordered by index, the
lower index first. ``torch.topk`` does not promise that, so every top-k here is a stable sort.
"""

from __future__ import annotations

import torch
from torch import nn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes in: float64 for float64 input, float32 for everything else.

    fp16 / bf16 inputs are scored in fp32 (spec: the spectral entropy "computed in fp32"; the
    remaining scores follow it), and their outputs are cast back to the input dtype at the end.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def stable_topk(x: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the ``k`` largest (or smallest) entries along the last dimension, best first.

    Ties go to the lower index (a stable sort), unlike ``torch.topk``. ``k`` is clipped to the
    size of the last dimension; ``k <= 0`` gives an empty index tensor.

    Args:
        x: (..., M) scores. ``-inf`` sorts last for ``largest=True`` (masked entries).
        k: how many indices to return.
        largest: ``True`` for the largest values, ``False`` for the smallest.

    Returns:
        (..., min(k, M)) int64 indices into the last dimension, in rank order.
    """
    k = max(0, min(int(k), x.shape[-1]))
    order = torch.sort(x, dim=-1, descending=largest, stable=True).indices
    return order[..., :k]


def topk_mask(x: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Bool mask (same shape as ``x``) of the :func:`stable_topk` entries along the last dim."""
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    idx = stable_topk(x, k, largest)
    if idx.shape[-1]:
        mask.scatter_(-1, idx, True)
    return mask


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / ||x||`` along the last dim; an all-zero vector stays zero (its cosines are 0)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def check_features(method: str, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor) -> None:
    """The common input check of a compressor's reference: H (L, N, D), A (L, N), g (L, G), finite.

    Raises:
        ValueError: a shape that does not match, or NaN / infinite values in H or A (named with
            ``method``, the fix being to check the vision features).
    """
    if H.dim() != 3 or A.shape != H.shape[:2] or g.dim() != 2 or g.shape[0] != H.shape[0]:
        raise ValueError(
            f"{method}: expected H (L, N, D), A (L, N), g (L, G); got {tuple(H.shape)}, "
            f"{tuple(A.shape)}, {tuple(g.shape)}"
        )
    if not (torch.isfinite(H).all() and torch.isfinite(A).all()):
        raise ValueError(f"{method}: H or A has NaN or infinite values; check the vision features")


class FixedShapeModule(nn.Module):
    """Base of the peer methods' fixed-budget modules: the static shape (L, N, D) they are built for.

    Holds ``config``, ``frames`` (L), ``n`` (N, tokens per frame) and ``hidden`` (D); subclasses add
    their budget. Shapes are constants of the exported graph, so they are checked here, once.

    Raises:
        ValueError: a dimension < 1 (constructor); H not (L, N, D) in eager mode
            (:meth:`check_shape`), named with the subclass.
    """

    def __init__(self, config, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__()
        if frames < 1 or tokens_per_frame < 1 or hidden < 1:
            raise ValueError(
                f"{type(self).__name__}: need L, N, D >= 1, got {frames}, {tokens_per_frame}, {hidden}"
            )
        self.config = config
        self.frames, self.n, self.hidden = int(frames), int(tokens_per_frame), int(hidden)

    def check_shape(self, H: torch.Tensor) -> None:
        """Raise ValueError unless H is (L, N, D) (skipped while tracing: the shape is static)."""
        L, N, D = self.frames, self.n, self.hidden
        if not torch.jit.is_tracing() and tuple(H.shape) != (L, N, D):
            raise ValueError(f"{type(self).__name__}({L}x{N}x{D}): got H {tuple(H.shape)}")
