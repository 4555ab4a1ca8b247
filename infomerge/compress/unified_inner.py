"""Unified, the inner-LLM stage: text-aware merging of the video tokens inside the LLM (prefill only).

Du et al., arXiv 2603.21957, Eq. 9 (after HoliTom, arXiv 2505.21334). Before decoder layer K (18):

    A_m(v) = max_{t in T} mean_heads softmax(q_t k^T / sqrt(d))[v]     layer K-1's attention, t -> v
    S_m(v) = max_{t in T} cos(x_v, x_t)                                   x = states leaving layer K-1
    I(v)   = (1 - lambda) minmax(A_m)(v) + lambda minmax(S_m)(v)          minmax: zeros if flat
    keep the top round(R |V|) of I (ties to the lower index); every other video token merges into
    its most cosine-similar kept token (same x), in increasing sequence order: kept <- (kept + v) / 2

V = the video tokens (the newline excluded), T = the rows after the video span (question and chat
suffix). HoliTom's inner merge is the same loop with T = the last prompt row and lambda = 0.
FlashVID's inner stage (FastV, ``InnerMerge.prune``) ranks as HoliTom does and keeps the top
ceil(R |V|) unchanged: the other video rows are dropped from layer K on, no merge (its choices:
``docs/methods.md``, FlashVID). The runtime (:mod:`infomerge.runtime.llm_torch`) runs the layers
and calls these functions; the design and the choices are in ``docs/compression.md``, section
"Unified", "Inner-LLM merge".
All maths in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InnerMerge:
    """Where and how a prefill merges the video tokens (the runtime's switch of the inner stage).

    Attributes:
        start, stop: the video tokens are sequence rows ``[start, stop)`` of the prompt (newline
            excluded).
        queries: first row of T; T = rows ``[queries, T_len)`` (the text after the video span).
        layer: K; layers ``0 .. K-1`` see every row, layers ``K ..`` the merged rows. 1 <= K < depth.
        keep: kept video tokens, ``round(R |V|)`` (Python round, half to even) [HoliTom].
        lam: lambda of Eq. 9 (0.5).
        prune: False: merge every other video token into a kept one (Unified, HoliTom); True:
            drop the other video rows from layer K on, the kept rows unchanged and at their
            original positions (FlashVID's FastV stage, ``flashvid/utils.py`` ``fastv_prune``).
    """

    start: int
    stop: int
    queries: int
    layer: int
    keep: int
    lam: float = 0.5
    prune: bool = False

    @property
    def video(self) -> int:
        return self.stop - self.start


def inner_keep(n_video: int, ratio: float = 0.5, rounding: str = "round") -> int:
    """Kept video tokens at layer K, at least 1 (0 when there is no video token).

    ``rounding="round"``: Python ``round(ratio * n_video)`` (half to even): 125 -> 62, 314 -> 157,
    627 -> 314 (the paper's R = 50%; HoliTom rounds so). ``"ceil"``: ``ceil(ratio * n_video)``
    (FlashVID's ``fastv_prune``, ``math.ceil(visual_token_length * llm_retention_ratio)``):
    ratio 0.3: 10 -> 3, 125 -> 38, 1230 -> 369 (no slack: the official float product).

    Raises:
        ValueError: another ``rounding``.
    """
    if rounding not in ("round", "ceil"):
        raise ValueError(f"inner_keep: rounding must be 'round' or 'ceil', got {rounding!r}")
    if n_video <= 0:
        return 0
    x = float(ratio) * n_video
    return max(1, math.ceil(x) if rounding == "ceil" else int(round(x)))


def attention_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Head-mean attention probabilities of a few query rows against every key (causal).

    Args:
        q: (H, Tq, d) queries of the rows, RoPE applied (any float dtype; computed in fp32).
        k: (Hkv, S, d) keys of every row, RoPE applied; H must be a multiple of Hkv (GQA: each
            kv head serves H / Hkv query heads, consecutive, as ``repeat_kv``).
        rows: (Tq,) int64 sequence rows of the queries; a query sees keys ``<= row`` (causal).

    Returns:
        (Tq, S) float32: ``mean_h softmax(q_h k_h^T / sqrt(d))`` with the causal mask, the
        softmax in fp32 over all S keys [paper Eq. 9's A; HoliTom's layer K-1 attention].
    """
    h, hkv, d = q.shape[0], k.shape[0], q.shape[-1]
    kk = k.float().repeat_interleave(h // hkv, dim=0)  # (H, S, d)
    logits = q.float() @ kk.transpose(1, 2) / d**0.5  # (H, Tq, S)
    future = torch.arange(k.shape[1], device=k.device)[None, :] > rows[:, None].to(k.device)
    logits = logits.masked_fill(future[None], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(0)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return torch.zeros_like(x) if bool(hi <= lo) else (x - lo) / (hi - lo)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def importance(
    attn_tv: torch.Tensor, x_video: torch.Tensor, x_text: torch.Tensor, lam: float
) -> torch.Tensor:
    """I(v) of paper Eq. 9 for every video token.

    Args:
        attn_tv: (|T|, |V|) head-mean attention probabilities text row -> video token.
        x_video: (|V|, D) hidden states of the video rows leaving layer K-1.
        x_text: (|T|, D) hidden states of the T rows leaving layer K-1.
        lam: lambda (0.5): weight of the similarity term.

    Returns:
        (|V|,) float32 ``(1 - lam) minmax(max_t A) + lam minmax(max_t cos(x_v, x_t))``; with
        ``lam == 0``, ``max_t A`` itself (HoliTom's importance: the same order as its min-max
        rescaling, without the ties that rescaling's rounding could create).
    """
    a_m = attn_tv.float().max(dim=0).values
    if lam == 0.0:
        return a_m
    s_m = (_unit(x_video.float()) @ _unit(x_text.float()).T).max(dim=1).values
    return (1.0 - lam) * _minmax(a_m) + lam * _minmax(s_m)


def top_kept(score: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring video positions, ascending (ties to the lower index).

    Args:
        score: (|V|,) importance. keep: 1 <= keep <= |V|.

    Returns:
        (keep,) int64 positions in ``0 .. |V|-1``, ascending [FastV / HoliTom top-k; the official
        ``torch.topk`` leaves the order of ties unspecified].
    """
    order = torch.sort(score.float(), descending=True, stable=True).indices
    return torch.sort(order[:keep]).values


def merge_video(
    x_video: torch.Tensor, score: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the top ``keep`` video tokens by ``score``; merge each other one into its nearest kept one.

    Args:
        x_video: (|V|, D) hidden states of the video rows leaving layer K-1 (any float dtype).
        score: (|V|,) importance I.
        keep: kept count, 1 <= keep <= |V|.

    Returns:
        ``(kept, target, merged)``: kept (keep,) int64 video positions, ascending; target (|V|,)
        int64, for each video token the position *in kept* it went into (a kept token: itself);
        merged (keep, D) float32 states: a kept token, then in increasing sequence order each token
        merged into it, ``kept <- (kept + v) / 2`` [HoliTom]. Nearest = highest cosine on the
        unmerged states, ties to the lower index; top-k ties to the lower index.
    """
    n = x_video.shape[0]
    kept = top_kept(score, keep)
    x = x_video.float()
    xn = _unit(x)
    sim = xn @ xn[kept].T  # (|V|, keep)
    target = sim.argmax(dim=1)
    target[kept] = torch.arange(keep, device=x.device)
    is_kept = torch.zeros(n, dtype=torch.bool, device=x.device)
    is_kept[kept] = True
    merged = x[kept].clone()
    for v in (~is_kept).nonzero().squeeze(1).tolist():  # increasing sequence order
        j = int(target[v])
        merged[j] = (merged[j] + x[v]) / 2
    return kept, target, merged


__all__ = ["InnerMerge", "attention_rows", "importance", "inner_keep", "merge_video", "top_kept"]
