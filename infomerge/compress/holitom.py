"""HoliTom (Shao et al., NeurIPS 2025, arXiv 2505.21334): holistic token merging, its outer-LLM stage.

Three steps on the projected, pooled tokens ``H`` (L frames x N tokens x D) and an attention
``a`` (L, N) (paper: "Temporal merging", "Spatial merging"; official code
github.com/cokeshao/HoliTom, ``holitom/llava_arch.py``, read 2026-12-01)::

    s_{t,p}  = cos(H[t, p], H[t+1, p]) > tau                         adjacent-frame static flags
    R(s, e)  = (e - s) * #{p : s_{t,p} for all t in [s, e-1]}        removable tokens of window [s, e]
    dp(i)    = max( dp(i-1),  max_{s < i} dp(s-1) + R(s, i) ),  dp(-1) = 0      (global DP)
    windows  = the backtracked argmax; R* = dp(L-1)
    r'       = min(r / ((L N - R*) / (L N)), 1)                      retention of what is left
    window [s, e], e > s:  static positions P_s = {p : s_{t,p}, t in [s, e-1]}
        static token   x_p = mean_{t in [s, e]} H[t, p]             (merged into frame s)
        C = round(|P_s| r') DPC-kNN centres of {x_p}; centre c <- beta x_c + (1 - beta) mean(members)
        dynamic: every frame keeps its ceil((N - |P_s|) r') non-static tokens of largest a
    window [s, s]:  the frame keeps its ceil(N r') tokens of largest a

``select_static_windows`` (the DP: singleton first, then the shortest window on equal values),
``get_static_dynamic_features`` (static mask, window mean), ``merge_tokens_by_density`` /
``cluster_dpc_knn`` / ``merge_tokens_by_clustering`` (static clusters) and
``merge_tokens_by_attention_density`` (dynamic tokens; with the default ``D = 0`` it keeps the
``ceil(n r')`` largest-attention tokens and merges nothing) are the official functions.

Which attention: the official code uses the last kept SigLIP layer's self-attention averaged over
heads and over the 729 queries (the attention each patch RECEIVES), bilinearly pooled 27x27 ->
14x14 (its ``siglip_encoder.py``). This toolkit's vision graph outputs ``A``, the SigLIP head's
probe attention (one learned query on the post-layernormed output). [D] The registered method uses
``A``; the official statistic is ``VisionEncoder.extra_outputs = ("attention",)`` and
:func:`reference` / :class:`FixedBudgetHoliTom` accept it as ``attention=`` (as for VisionZip; the
pipeline does not carry it yet, see ``docs/methods.md``).

Decisions where the paper and code are silent ([D], see ``docs/methods.md``):

- [D] tau: 0.65 at r <= 0.10 and 0.80 above (the official scripts: 0.65 at r = 0.10, 0.80 at
  0.15 / 0.20 / 0.25; r = 0.05 takes the low-retention value).
- [D] ``ceil(n r' - 1e-4)``: the official ``math.ceil(n * r')`` keeps one more token where float
  rounding lifts an integer product (``20 * 0.15 = 3.0000000000000004``).
- [D] Ties: attention ties and equal DPC-kNN scores go to the lower position; "denser" ties to the
  lower position (the official code adds 1e-6 random noise to the density).
- [D] A static cluster token takes the index ``s N + p_centre`` (the official code puts it in
  frame s at the centre's position); the output is in index order.
- [D] The reference computes cosines and window means in float64, DPC-kNN distances exactly
  (:mod:`infomerge.compress.dpc_knn`); merged tokens are returned in H's dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from infomerge.compress._ops import FixedShapeModule, check_features, stable_topk
from infomerge.compress.dpc_knn import dpc_knn
from infomerge.compress.exact_arith import chunked_sum
from infomerge.compress.fixed_budget import compact, rank_desc
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

CEIL_SLACK = 1e-4  # ceil(x - slack): the float rounding of n * r' never adds a token [D]


def default_tau(retention: float) -> float:
    """tau of the official scripts: 0.65 at r <= 0.10, 0.80 above ([D] for r < 0.10)."""
    return 0.65 if float(retention) <= 0.10 + 1e-9 else 0.80


@dataclass(frozen=True)
class HoliTomConfig:
    """HoliTom's hyperparameters (official defaults).

    Attributes:
        retention: r in (0, 1].
        tau: static threshold on the adjacent-frame cosine (None: :func:`default_tau`).
        beta: weight of a cluster centre in its merged token (``BETA`` 0.6).
        knn: DPC-kNN neighbours, ``k = min(knn, C)`` for C centres (``K`` 7).
        max_window: longest window of the DP (``MAX_WINDOW_SIZE`` 1024; None: unlimited).
        inner_merge: the inner-LLM merge in the torch LLM backend (True: the paper's "HoliTom";
            False: "HoliTom (w/o M)"; the official scripts run both). Before decoder layer K the
            video tokens are ranked by layer K-1's head-mean attention from the LAST prompt row;
            the top ``round(inner_ratio |V|)`` stay, every other one is merged into its most
            cosine-similar kept token, ``kept <- (kept + v) / 2`` in sequence order
            (``Qwen2Model_holitom.forward``); the runtime's loop is
            :mod:`infomerge.compress.unified_inner` with T = the last row and importance =
            attention (``inner_queries``, ``inner_lambda`` below). ONNX Runtime / TensorRT LLMs
            run the outer stage only (one graph).
        inner_layer: K = 18 (``HOLITOM_k``); an LLM with <= K layers merges before its last layer.
        inner_ratio: share of the video tokens kept at layer K, ``1 - HOLITOM_r`` = 0.5.

    Raises:
        BudgetError: a value out of range (named in the message).
    """

    retention: float
    tau: float | None = None
    beta: float = 0.6
    knn: int = 7
    max_window: int | None = None
    inner_merge: bool = True
    inner_layer: int = 18
    inner_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"HoliTom: retention must be in (0, 1], got {self.retention!r}")
        if self.tau is None:
            object.__setattr__(self, "tau", default_tau(self.retention))
        if not (-1.0 <= float(self.tau) <= 1.0) or not (0.0 <= float(self.beta) <= 1.0):
            raise BudgetError(f"HoliTom: need tau in [-1, 1] and beta in [0, 1], got {self.tau}, {self.beta}")
        if self.knn < 1 or (self.max_window is not None and self.max_window < 1):
            raise BudgetError(
                f"HoliTom: need knn >= 1 and max_window >= 1, got {self.knn}, {self.max_window}"
            )
        if self.inner_layer < 1 or not (0.0 < float(self.inner_ratio) <= 1.0):
            raise BudgetError(
                f"HoliTom: need inner_layer >= 1 and inner_ratio in (0, 1], got {self.inner_layer}, "
                f"{self.inner_ratio}"
            )

    # read by the runtime's inner merge (infomerge.runtime.pipeline.Pipeline.inner_merge)
    inner_lambda = 0.0  # importance = attention only (no similarity term)
    inner_queries = "last"  # the last prompt row's attention (the official Qwen2Model_holitom)

    def longest_window(self, frames: int) -> int:
        """The DP's longest window for a video of ``frames`` frames."""
        return frames if self.max_window is None else min(frames, int(self.max_window))

    def per_frame(self, n: int) -> int:
        """Tokens a frame of ``n`` keeps when no window is static: ``ceil(r n)`` (at least 1)."""
        if n < 1:
            raise BudgetError(f"HoliTom: a frame needs at least one token, got {n}")
        return min(n, max(1, math.ceil(float(self.retention) * n - CEIL_SLACK)))

    def total_budget(self, frames: int, n: int) -> int:
        """B = L ceil(r N): exactly what the reference keeps on a video with no static window
        (the fixed-budget graph keeps exactly B; the reference a few more or fewer otherwise)."""
        if frames < 1:
            raise BudgetError(f"HoliTom: empty video {frames}x{n}")
        return int(frames) * self.per_frame(n)

    def to_dict(self) -> dict:
        return asdict(self)


def kept_count(n: int, ratio: float) -> int:
    """``ceil(n r' - 1e-4)`` for ``n >= 0`` tokens (``merge_tokens_by_attention_density``, D = 0)."""
    return max(0, math.ceil(n * ratio - CEIL_SLACK))


def left_ratio(retention: float, total: int, removed: int) -> float:
    """``r' = min(r / ((T - R*) / T), 1)``, Python floats in the official order of operations."""
    return min(float(retention) / ((total - removed) / total), 1.0)


# ---- temporal merging: the global segmentation ---------------------------------------------------
def static_flags(H: torch.Tensor, tau: float) -> torch.Tensor:
    """(L-1, N) bool ``cos(H[t, p], H[t+1, p]) > tau`` in float64 (zero tokens: cos 0).

    Args:
        H: (L, N, D) float tokens. tau: the threshold.
    """
    x = H.to(torch.float64)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (x[:-1] * x[1:]).sum(-1) > float(tau)


def removable(flags: torch.Tensor) -> torch.Tensor:
    """(L, L) int64 ``R(s, e) = (e - s) * #{p: flags[t, p] for t in [s, e-1]}``; 0 for e <= s.

    ``pruned_static_count`` of the official ``select_static_windows``: a window of W frames keeps
    each static position once, so it removes ``W - 1`` tokens per static position.

    Args:
        flags: (L-1, N) bool static flags.
    """
    L = flags.shape[0] + 1
    out = torch.zeros(L, L, dtype=torch.int64)
    for s in range(L - 1):
        run = torch.cumprod(flags[s:].to(torch.int64), 0).sum(-1)  # (L-1-s,) static count of [s, s+1+k]
        out[s, s + 1 :] = run * torch.arange(1, L - s)
    return out


def segment(counts: torch.Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """The windows maximising the removable tokens (the official DP, its tie order).

    ``dp(i) = max(dp(i-1), max_{w = 2 .. min(i+1, max_window)} dp(i-w) + R(i-w+1, i))``: the
    singleton first, then windows by increasing length, a later candidate only if STRICTLY better.

    Args:
        counts: (L, L) int64 :func:`removable`. max_window: the longest window (>= 1).

    Returns:
        ``([(start, end), ...] inclusive, in temporal order, R* = dp(L-1))``.
    """
    L = counts.shape[0]
    c = counts.tolist()
    dp, prev = [0] * L, [0] * L
    for i in range(L):
        best, best_s = (dp[i - 1] if i > 0 else 0), i
        for w in range(2, min(i + 1, max_window) + 1):
            s = i - w + 1
            value = (dp[s - 1] if s > 0 else 0) + c[s][i]
            if value > best:
                best, best_s = value, s
        dp[i], prev[i] = best, best_s
    windows, i = [], L - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], dp[L - 1]


# ---- the reference ------------------------------------------------------------------------------
@dataclass
class HoliTomResult:
    """Reference output: ``tokens`` (K, D) in H's dtype, ``index`` (K,) int64 sorted flat
    positions ``l * N + p``; ``windows`` [(start, end)] inclusive; ``removed`` R*; ``ratio`` r';
    ``static`` (L, N) bool, the static positions of each frame's window (False in singletons);
    ``centres`` (K,) bool, which kept tokens are static cluster tokens."""

    tokens: torch.Tensor
    index: torch.Tensor
    windows: list[tuple[int, int]]
    removed: int
    ratio: float
    static: torch.Tensor
    centres: torch.Tensor

    @property
    def kept(self) -> int:
        return int(self.index.numel())


def _clusters(x: torch.Tensor, n_centres: int, config: HoliTomConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Static cluster tokens of one window: (C,) centre positions in ``x`` (ascending) and (C, D)
    float64 merged tokens ``beta x_c + (1 - beta) mean(members)`` (no member: ``x_c``)."""
    cl = dpc_knn(x, n_centres, knn=min(config.knn, n_centres), densest="global")
    merged = []
    for c in cl.centres.tolist():
        members = (cl.nearest == c).nonzero().squeeze(1)
        members = members[members != c]
        if members.numel():
            merged.append(config.beta * x[c] + (1.0 - config.beta) * x[members].mean(0))
        else:
            merged.append(x[c])
    return cl.centres, torch.stack(merged)


def reference(
    H: torch.Tensor,
    A: torch.Tensor,
    g: torch.Tensor,
    config: HoliTomConfig,
    attention: torch.Tensor | None = None,
) -> HoliTomResult:
    """HoliTom's outer-LLM stage (temporal + spatial merging), the official algorithm.

    Args:
        H: (L, N, D) float tokens (LLM input space, after the projector and 2x2 pooling).
        A: (L, N) float attention (used unless ``attention`` is given). g: (L, G): checked only.
        config: :class:`HoliTomConfig`.
        attention: (L, N) float, the official attention received (last SigLIP layer), or None.

    Returns:
        :class:`HoliTomResult` (its count is data-dependent: about ``r L N``).

    Raises:
        ValueError: bad shapes or non-finite values. BudgetError: from the config.
    """
    check_features("HoliTom", H, A, g)
    a = (A if attention is None else attention).to(torch.float64)
    if a.shape != A.shape or not torch.isfinite(a).all():
        raise ValueError(f"HoliTom: attention must be finite (L, N) = {tuple(A.shape)}")
    L, N, D = H.shape
    x = H.to(torch.float64)
    flags = static_flags(H, config.tau)  # (L-1, N)
    dev = H.device
    windows, removed = segment(removable(flags.cpu()), config.longest_window(L)) if L > 1 else ([(0, 0)], 0)
    ratio = left_ratio(config.retention, L * N, removed)
    static = torch.zeros(L, N, dtype=torch.bool, device=dev)
    out_index, out_tokens, out_centre = [], [], []
    for s, e in windows:
        mask = flags[s:e].all(0) if e > s else torch.zeros(N, dtype=torch.bool, device=dev)
        static[s : e + 1] = mask
        n_static = int(mask.sum())
        if n_static:
            positions = mask.nonzero().squeeze(1)
            means = x[s : e + 1, positions].mean(0)  # (n_s, D) static tokens of the window
            n_centres = round(n_static * ratio)
            if n_centres > 0:
                centres, merged = _clusters(means, n_centres, config)
                out_index.append(s * N + positions[centres])
                out_tokens.append(merged)
                out_centre.append(torch.ones(len(centres), dtype=torch.bool, device=dev))
        dynamic = (~mask).nonzero().squeeze(1)
        q = kept_count(int(dynamic.numel()), ratio)
        for t in range(s, e + 1):
            top = dynamic[stable_topk(a[t, dynamic], q)]
            out_index.append(t * N + top)
            out_tokens.append(x[t, top])
            out_centre.append(torch.zeros(len(top), dtype=torch.bool, device=dev))
    index = torch.cat(out_index)
    order = torch.argsort(index)
    return HoliTomResult(
        tokens=torch.cat(out_tokens)[order].to(H.dtype),
        index=index[order].to(torch.int64),
        windows=windows,
        removed=int(removed),
        ratio=ratio,
        static=static,
        centres=torch.cat(out_centre)[order],
    )


# ---- the fixed-budget, shape-static form ----------------------------------------------------------
@dataclass
class HoliTomDecisions:
    """Every intermediate decision of :class:`FixedBudgetHoliTom` (eager use: tests, studies).

    Attributes:
        start, end: (L,) int64 the first / last frame of each frame's window.
        removed: () int64 R*. ratio: () float32 r'.
        static: (L, N) bool static positions of each frame's window (False in singletons).
        centres: (L, N) bool static cluster centres (in window-start rows).
        dynamic: (L, N) bool dynamic tokens kept by attention.
        selected: (L, N) bool ``centres | dynamic``: the reference's kept set.
        kept: (L, N) bool the B kept tokens (``selected`` trimmed or filled to B).
        tokens: (B, D) in H's dtype; index: (B,) int64 sorted.
    """

    start: torch.Tensor
    end: torch.Tensor
    removed: torch.Tensor
    ratio: torch.Tensor
    static: torch.Tensor
    centres: torch.Tensor
    dynamic: torch.Tensor
    selected: torch.Tensor
    kept: torch.Tensor
    tokens: torch.Tensor
    index: torch.Tensor

    def windows(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` inclusive, like :attr:`HoliTomResult.windows`."""
        return sorted({(int(s), int(e)) for s, e in zip(self.start.tolist(), self.end.tolist())})


class FixedBudgetHoliTom(FixedShapeModule):
    """HoliTom as a fixed-budget, shape-static graph for one video shape (L, N, D).

    Exactly ``B = L ceil(r N)`` tokens, sorted indices. No NonZero, TopK, Loop, If, boolean
    indexing or value-dependent Python control flow; every Python loop runs over L (static):

    - static flags: ``sign(dot) dot^2 > tau |tau| |a|^2 |b|^2`` (the cosine test without Sqrt)
      from fixed-order elementwise sums, bit-identical in torch and ONNX Runtime;
    - R(s, e): a prefix count of the non-static flags per position, ``(L, L, N)`` equalities;
    - the DP unrolled over the L frames: step i takes the max over the ``<= max_window`` candidate
      starts (a ReduceMax) and the latest start reaching it (the official tie order), integers
      only; the backtracking unrolled from the last frame (one-hot updates). Cost: O(L^2) small
      integer ops, about ``10 L`` graph nodes;
    - per-frame quotas ``ceil(n r' - 1e-4)`` and cluster counts ``round(n_s r')`` in fp32 from the
      graph's integers (``r'`` from R*);
    - dynamic tokens: the rank of each non-static token by attention in its frame (``(L, N, N)``
      comparisons of the input), kept where rank < quota;
    - static clusters per window-start row: window means by a one-hot MatMul; DPC-kNN on them with
      squared distances from the Gram form, the k <= knn smallest unrolled (min, count ties,
      take), denser by the exponent, centres by rank, members to the nearest centre (lowest
      index on ties), merged by one-hot MatMuls;
    - exactly B: the reference's set (``selected``) is trimmed (the worst-ranked dynamic tokens go
      first) or filled (unkept tokens, best attention rank first) by one integer key per token, a
      ScatterElements and a cumsum; compacted to B sorted indices.

    Differences from :func:`reference`: fp32 instead of float64 (cosines near tau, DPC-kNN
    distances), the count fixed at B (the reference keeps about ``sum ceil`` over frames).

    Args:
        config: :class:`HoliTomConfig`. frames, tokens_per_frame, hidden: L, N, D.

    Raises:
        BudgetError: from the config. ValueError: a dimension < 1.
    """

    def __init__(self, config: HoliTomConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__(config, frames, tokens_per_frame, hidden)
        self.budget = config.total_budget(self.frames, self.n)
        self.window = config.longest_window(self.frames)
        tau = float(config.tau)
        self.tau_sq = tau * abs(tau)  # compared with sign(cos) cos^2

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return chunked_sum(t, self.hidden)  # (..., D) -> (...), backend-exact

    def forward(
        self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``B = budget`` tokens.

        Args:
            H: (L, N, D) float32 or float16. A: (L, N) float. g: (L, G): unused (a graph input).
            attention: (L, N) float attention received (None: ``A``); fixed when traced.

        Returns:
            ``tokens`` (B, D) in H's dtype, ``index`` (B,) int64 sorted flat positions.
        """
        d = self.decisions(H, A, g, attention)
        return d.tokens, d.index

    # ---- the steps ----------------------------------------------------------------------------
    def _flags(self, x: torch.Tensor) -> torch.Tensor:
        """(L-1, N) bool: cos(x_t, x_{t+1}) > tau, tested as sign(dot) dot^2 > tau|tau| |a|^2 |b|^2."""
        a, b = x[:-1], x[1:]
        dot = self._sum(a * b)
        nn2 = self._sum(a * a) * self._sum(b * b)
        return dot * dot.abs() > self.tau_sq * nn2

    def _windows(self, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The DP: (L,) start and end frame of each frame's window, () R*."""
        L, dev = self.frames, flags.device
        zero = torch.zeros(1, flags.shape[1], dtype=torch.int64, device=dev)
        breaks = torch.cat([zero, torch.cumsum((~flags).to(torch.int64), 0)])  # (L, N) prefix count
        same = (breaks.unsqueeze(1) == breaks.unsqueeze(0)).to(torch.int64).sum(-1)  # (L, L) [s, e]
        frame = torch.arange(L, device=dev)
        length = (frame.unsqueeze(0) - frame.unsqueeze(1)).clamp_min(0)  # [s, e] = max(e - s, 0)
        counts = same * length  # R(s, e)
        shifted = torch.zeros(L + 1, dtype=torch.int64, device=dev)  # [s] = dp(s - 1), dp(-1) = 0
        slot = torch.arange(L + 1, device=dev)
        prev = []
        for i in range(L):  # unrolled over the static frame count
            lo = max(0, i - self.window + 1)
            values = shifted[lo : i + 1] + counts[lo : i + 1, i]  # start s = lo .. i (s = i: singleton)
            best = values.max()
            starts = torch.arange(lo, i + 1, device=dev)
            prev.append(torch.where(values == best, starts, -1).max())  # the latest start: official tie order
            shifted = shifted + (slot == i + 1).to(torch.int64) * best
        removed = shifted[L]
        prev_t = torch.stack(prev)  # (L,)
        is_end = (frame == L - 1).to(torch.int64)
        is_start = torch.zeros(L, dtype=torch.int64, device=dev)
        for i in range(L - 1, -1, -1):  # backtracking, unrolled: frame i ends a window?
            e_i = is_end[i]
            is_start = is_start + e_i * (frame == prev_t[i]).to(torch.int64)
            is_end = is_end + e_i * (frame == prev_t[i] - 1).to(torch.int64)
        before = frame.unsqueeze(0) <= frame.unsqueeze(1)  # [t, t'] = t' <= t
        start = torch.where(before & (is_start > 0).unsqueeze(0), frame.unsqueeze(0), 0).amax(-1)
        end = torch.where(before.t() & (is_end > 0).unsqueeze(0), frame.unsqueeze(0), L).amin(-1)
        return start, end, removed

    def _clusters(
        self, x: torch.Tensor, cand: torch.Tensor, n_centres: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DPC-kNN per row over the candidates: (L, N) bool centres, (L, N, D) merged tokens.

        Args:
            x: (L, N, D) float32 static window means (valid in the candidates). cand: (L, N) bool.
            n_centres: (L,) int64 C per row (0 where the row has no candidate).
        """
        L, N, D = x.shape
        dev = x.device
        idx = torch.arange(N, device=dev)
        xc = x - x.mean(1, keepdim=True)  # translation-invariant; less cancellation in the Gram form
        sq = (xc * xc).sum(-1)
        d2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (xc @ xc.transpose(1, 2))).clamp_min(0.0) / D
        d2 = torch.where(idx.unsqueeze(0) == idx.unsqueeze(1), 0.0, d2)
        pair = cand.unsqueeze(-1) & cand.unsqueeze(-2)
        big = 3.0e38
        # rho: mean of the k = min(knn, C) smallest d^2 (self included), the k unrolled with ties
        k = n_centres.clamp(1, int(self.config.knn))
        left = k.unsqueeze(1).expand(L, N).to(x.dtype)
        rest = torch.where(pair, d2, big)
        total = torch.zeros(L, N, dtype=x.dtype, device=dev)
        for _ in range(self.config.knn):
            low = rest.amin(-1, keepdim=True)  # (L, N, 1)
            tie = rest == low
            take = torch.minimum(tie.to(x.dtype).sum(-1), left)
            total = total + torch.where(take > 0, take * low.squeeze(-1), 0.0)
            left = left - take
            rest = torch.where(tie, big, rest)
        m = total / k.unsqueeze(1).to(x.dtype)  # rho = exp(-m)
        # delta^2: nearest denser candidate (m_j < m_i, equal m: lower index); densest: matrix max
        mi, mj = m.unsqueeze(-1), m.unsqueeze(-2)
        denser = ((mj < mi) | ((mj == mi) & (idx.unsqueeze(0) < idx.unsqueeze(1)))) & pair
        to_denser = torch.where(denser, d2, big).amin(-1)
        far = torch.where(pair, d2, 0.0).amax((-1, -2)).unsqueeze(-1)  # (L, 1)
        delta2 = torch.where(denser.any(-1), to_denser, far)
        gamma = torch.where(cand, torch.exp(-m) * delta2.sqrt(), float("-inf"))
        centres = (rank_desc(gamma) < n_centres.unsqueeze(1)) & cand
        # members: every other candidate to its nearest centre (the lowest index on ties)
        to_centre = torch.where(centres.unsqueeze(1), d2, big)  # (L, i, j)
        near = to_centre.amin(-1, keepdim=True)
        first = torch.where(to_centre == near, idx, N).amin(-1)  # (L, N)
        member = cand & ~centres
        assign = ((first.unsqueeze(-1) == idx) & member.unsqueeze(-1)).to(x.dtype)  # (L, i, j)
        count = assign.sum(1).unsqueeze(-1)  # (L, N, 1)
        mean = (assign.transpose(1, 2) @ x) / count.clamp_min(1.0)
        beta = float(self.config.beta)
        merged = torch.where(count > 0, beta * x + (1.0 - beta) * mean, x)
        return centres, merged

    def decisions(
        self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None = None
    ) -> HoliTomDecisions:
        """Like :meth:`forward`, with every intermediate decision."""
        L, N, D = self.frames, self.n, self.hidden
        self.check_shape(H)
        dev = H.device
        f32 = torch.float32
        x = H.to(f32)
        a = (A if attention is None else attention).to(f32)
        frame = torch.arange(L, device=dev)
        if L > 1:
            flags = self._flags(x)
            start, end, removed = self._windows(flags)
            zero = torch.zeros(1, N, dtype=torch.int64, device=dev)
            breaks = torch.cat([zero, torch.cumsum((~flags).to(torch.int64), 0)])
            same = breaks.index_select(0, end) == breaks.index_select(0, start)
            static = same & (end > start).unsqueeze(1)
        else:
            start = end = torch.zeros(1, dtype=torch.int64, device=dev)
            removed = torch.zeros((), dtype=torch.int64, device=dev)
            static = torch.zeros(1, N, dtype=torch.bool, device=dev)
        total = L * N
        rt = float(self.config.retention) * total
        ratio = torch.clamp(rt / (total - removed).to(f32), max=1.0)  # r'
        n_static = static.to(torch.int64).sum(1)  # (L,)
        quota = torch.ceil((N - n_static).to(f32) * ratio - 1e-4).clamp_min(0).to(torch.int64)
        head = (frame == start) & (end > start)  # window-start rows that hold the static tokens
        n_centres = torch.where(head, torch.round(n_static.to(f32) * ratio).to(torch.int64), 0)

        # dynamic tokens: the quota of largest attention among the frame's non-static positions
        rank = rank_desc(torch.where(static, float("-inf"), a))  # (L, N), static ones last
        dynamic = (rank < quota.unsqueeze(1)) & ~static

        # static tokens: window means in the start rows, clustered per row
        member = ((start.unsqueeze(1) == frame.unsqueeze(0)) & (end > start).unsqueeze(1)).to(f32)  # [t', t]
        width = (end - start + 1).to(f32)
        means = ((member.t() / width.unsqueeze(1)) @ x.reshape(L, N * D)).reshape(L, N, D)
        cand = static & head.unsqueeze(1)
        centres, merged = self._clusters(means, cand, n_centres)
        selected = centres | dynamic

        # exactly B: key = class * L N + (rank * L + frame); centres, kept dynamic, then the rest
        order = rank * L + frame.unsqueeze(1)
        klass = torch.where(centres, 0, torch.where(dynamic, 1, 2))
        key = (klass * total + order).reshape(total)
        flat = torch.zeros(3 * total, dtype=torch.int64, device=dev).scatter(
            0, key, torch.ones(total, dtype=torch.int64, device=dev)
        )
        take = (torch.cumsum(flat, 0) <= self.budget) & (flat > 0)
        kept = take.gather(0, key).reshape(L, N)
        index, _ = compact(kept.reshape(total), self.budget)
        out = torch.where(centres.unsqueeze(-1), merged, x).reshape(total, D)
        tokens = out.index_select(0, index).to(H.dtype)
        unused = g.sum() if attention is None else g.sum() + A.sum()  # graph inputs all the same
        tokens = tokens + (0.0 * unused).to(tokens.dtype)
        return HoliTomDecisions(
            start=start,
            end=end,
            removed=removed,
            ratio=ratio,
            static=static,
            centres=centres,
            dynamic=dynamic,
            selected=selected,
            kept=kept,
            tokens=tokens,
            index=index,
        )


METHOD = Method(
    name="holitom",
    summary="HoliTom: DP temporal segmentation, static tokens merged by DPC-kNN, dynamic by attention",
    config=HoliTomConfig,
    reference=reference,
    fixed_budget=FixedBudgetHoliTom,
    vision_outputs=("attention",),
)

__all__ = [
    "METHOD",
    "FixedBudgetHoliTom",
    "HoliTomConfig",
    "HoliTomDecisions",
    "HoliTomResult",
    "default_tau",
    "kept_count",
    "left_ratio",
    "reference",
    "removable",
    "segment",
    "static_flags",
]
