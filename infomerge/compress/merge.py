"""Density-based token merging (DTM), standard form: assign tokens to anchors, merge by weight.

This is the contract shared by the paper-exact reference, the shape-static export graph (where it
is the standard-ONNX form that ONNX Runtime runs), the Triton kernel and the TensorRT plugin: all
of them compute exactly :func:`merge_to_anchors`.

Source: spec step 6 (InfoMerge eqs. 12, 31-34; FastVID's DTM): every candidate token of the scope
is assigned to its nearest anchor by cosine similarity; the merged token of an anchor is
``w * anchor + (1 - w) * mean(anchor and its assigned tokens)`` with ``w = max(1 / (n + 1), mu)``,
``n`` the number of tokens assigned to it (the anchor itself not counted).

Only static-shape operations are used (normalise, MatMul, ArgMax, one-hot compare, MatMul), so the
function traces to a graph that TensorRT and ONNX Runtime both run.
"""

from __future__ import annotations

import torch

# A cosine is in [-1, 1]; an invalid anchor gets this much subtracted so it never wins an argmax.
_INVALID_ANCHOR_PENALTY = 4.0


def assign_to_anchors(
    x: torch.Tensor, anchor_index: torch.Tensor, anchor_valid: torch.Tensor
) -> torch.Tensor:
    """Nearest valid anchor of every token, by cosine similarity.

    Args:
        x: (..., M, D) float tokens of the merge scope.
        anchor_index: (..., K) int64 positions of the anchors in ``x`` (along M).
        anchor_valid: (..., K) float or bool, 1 where the anchor slot is used.

    Returns:
        (..., M) int64 anchor slot in [0, K) of each token; ties go to the lower slot (ONNX ArgMax
        default). An anchor token is always assigned to its own slot.
    """
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    anchors = torch.gather(xn, -2, anchor_index.unsqueeze(-1).expand(*anchor_index.shape, x.shape[-1]))
    sim = xn @ anchors.transpose(-1, -2)  # (..., M, K)
    valid = anchor_valid.to(sim.dtype)
    sim = sim - _INVALID_ANCHOR_PENALTY * (1.0 - valid).unsqueeze(-2)
    # an anchor token belongs to its own slot, whatever other anchors point the same way
    own = _anchor_onehot(anchor_index, anchor_valid, x.shape[-2], sim.dtype)  # (..., M, K)
    sim = sim + 2.0 * _INVALID_ANCHOR_PENALTY * own
    return sim.argmax(dim=-1)


def _anchor_onehot(anchor_index: torch.Tensor, anchor_valid: torch.Tensor, m: int, dtype) -> torch.Tensor:
    """(..., M, K) one-hot: 1 at [anchor_index[k], k] for every valid anchor slot k."""
    positions = torch.arange(m, device=anchor_index.device)
    hit = positions.view(*([1] * (anchor_index.dim() - 1)), m, 1) == anchor_index.unsqueeze(-2)
    return hit.to(dtype) * anchor_valid.to(dtype).unsqueeze(-2)


def merge_to_anchors(
    x: torch.Tensor,
    member: torch.Tensor,
    anchor_index: torch.Tensor,
    anchor_valid: torch.Tensor,
    mu: float,
) -> torch.Tensor:
    """Merge the member tokens of a scope into its anchors (spec step 6, standard form).

    Args:
        x: (..., M, D) float tokens of the scope (fp16, fp32 or fp64; fp16 accumulates in fp32).
        member: (..., M) float {0, 1}: 1 for the candidate tokens that take part in the merge.
        anchor_index: (..., K) int64 positions of the anchors in ``x``; anchors must be members.
        anchor_valid: (..., K) float or bool {0, 1}: 1 where the slot holds a real anchor (budgets
            smaller than K leave slots unused).
        mu: anchor weight (FastVID ``DTM_beta``), 0.6 in the paper.

    Returns:
        (..., K, D) merged context tokens in x's dtype. Invalid slots return the (unmerged) token
        at their ``anchor_index``; callers drop them.

    Raises:
        ValueError: when shapes disagree.
    """
    if x.shape[:-1] != member.shape or anchor_index.shape != anchor_valid.shape:
        raise ValueError(
            f"merge_to_anchors: x {tuple(x.shape)}, member {tuple(member.shape)}, "
            f"anchor_index {tuple(anchor_index.shape)}, anchor_valid {tuple(anchor_valid.shape)} disagree"
        )
    k = anchor_index.shape[-1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # fp16 input accumulates in fp32
    slot = assign_to_anchors(x, anchor_index, anchor_valid)  # (..., M)
    own = _anchor_onehot(anchor_index, anchor_valid, x.shape[-2], acc)  # (..., M, K)
    is_anchor = own.sum(-1).clamp(max=1.0)  # (..., M)
    weight = member.to(acc) * (1.0 - is_anchor)  # assigned, anchors excluded
    slots = torch.arange(k, device=x.device)
    assign = (slot.unsqueeze(-1) == slots).to(acc) * weight.unsqueeze(-1)  # (..., M, K)
    n = assign.sum(-2)  # (..., K) tokens assigned to each anchor
    summed = assign.transpose(-1, -2) @ x.to(acc)  # (..., K, D)
    anchors = torch.gather(x, -2, anchor_index.unsqueeze(-1).expand(*anchor_index.shape, x.shape[-1]))
    return combine_merge(anchors.to(acc), summed, n, mu).to(x.dtype)


def combine_merge(anchors: torch.Tensor, summed: torch.Tensor, n: torch.Tensor, mu: float) -> torch.Tensor:
    """The merged tokens from each anchor, the sum of its assigned tokens and their count.

    ``merged = w * anchor + (1 - w) * (anchor + summed) / (n + 1)``, ``w = max(1 / (n + 1), mu)``
    (spec step 6, eq. 12; FastVID's DTM with ``DTM_beta = mu``).

    Args:
        anchors: (..., K, D) anchor tokens (float32 or float64).
        summed: (..., K, D) sum of the tokens assigned to each anchor (the anchor not included).
        n: (..., K) number of those tokens, same dtype.
        mu: anchor weight, 0.6 in the paper.

    Returns:
        (..., K, D) merged tokens in ``anchors``' dtype.
    """
    mean = (anchors + summed) / (n + 1.0).unsqueeze(-1)
    w = torch.maximum(1.0 / (n + 1.0), torch.full_like(n, float(mu))).unsqueeze(-1)
    return w * anchors + (1.0 - w) * mean
