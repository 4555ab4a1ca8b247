"""FlashVID (Fan et al., ICLR 2026, arXiv 2602.08024): ADTS selection + tree-based spatiotemporal
merging (TSTM), its vision-side stage on LLaVA-OneVision, and its inner-LLM FastV stage as a switch.

The paper's two modules, in the order of the official code (github.com/Fanziyang-v/FlashVID, MIT,
``flashvid/utils.py`` ``flashvid_compression`` / ``segment_compression`` /
``spatiotemporal_compression`` / ``dpc_knn``, ``flashvid/token_selection.py``
``attn_div_v2_based_token_selection``, ``flashvid/llava_arch.py``, ``flashvid/siglip_encoder.py``;
read 2026-12-01). On the pooled, projected tokens x (L, N, D) and the attention a (L, N) each token
receives::

    T   = ceil(N r e),  n_a = ceil(alpha T) ADTS tokens,  n_s = T - n_a STTM tokens   (per frame)

    1. DySeg (frame segmentation). f_t = mean_p x_{t,p}; s_t = cos(f_t, f_{t+1}), t < L - 1.
       Cut after frame t where s_t < tau_seg; while fewer than S_min segments, also cut at the
       lowest remaining s_t (complementary cuts).
    2. ADTS, per frame t of a segment G (a calibrated Max-Min Diversity Problem):
         d(i, j) = 1 - cos(x_i, x_j)                         (cosine distance)
         w_j     = a_j * <x_j, mean_{u in G} f_u>           ([CLS] attention x event relevance)
         D(i, j) = d(i, j) w_j                               (column-calibrated distances)
         s_1     = argmax_j (second smallest of column j of D)
         s_k     = argmax_{j not in S} min_{s in S} D(s, j),  k = 2 .. n_a
    3. TSTM, inside a segment of F frames, on the tokens ADTS did not select:
         p(t, i) = argmax_j cos(x_{t,i}, x_{t-1,j})          (parent in the previous frame)
         token (t, i) joins its parent's tree iff that max cosine > tau   (t > 0; frame 0: roots)
         if fewer than T F tokens (selected ones included) stay roots: join iff the max cosine is
         above the (F N - T F)-th largest max cosine of the segment (and above -1 + 1e-6)
       every tree is replaced by the mean of its tokens, at its root's position.
    4. Spatial merge (DPC-kNN) per frame, on the m_t roots of frame t:
         M = sum_t m_t over the segment;  c_t = ceil(m_t n_s F / M)  clusters  (all roots if M <= n_s F)
         d_ij = ||v_i - v_j|| / sqrt(D);  rho_i = exp(-mean of the k smallest d_ij^2), k = min(c_t, 7)
         delta_i = min_{j denser} d_ij (the densest: max d over the frame's roots)
         centres = the c_t largest rho delta; every root joins its nearest centre
       a cluster becomes the mean of its roots, at its centre's position.

Kept: the ADTS tokens unchanged and one token per cluster, in original order (index l N + p).

Hyperparameters (the official scripts' fixed values, ``scripts/llava_ov.sh``): alpha = 0.7,
tau = 0.8, tau_seg = 0.9, S_min = 8, k_nn = 7; e (``expansion``) = 1.25 together with an
inner-LLM FastV pruning at layer 20 keeping 30% of the video tokens (see below).

Inputs in the official LLaVA-OneVision form: x = the projected tokens after LLaVA-OneVision's 2x2
bilinear pooling (our ``H``); a = the last SigLIP layer's self-attention averaged over heads and
then over all 729 queries, pooled the same way (``siglip_encoder.py``; the same statistic as
VisionZip's video form, :mod:`infomerge.compress.visionzip`).

Decisions [D] where the paper and code are silent, or where this toolkit's contract differs:

- [D] **Attention input (approximation).** The pipeline carries H, A, g; the registered method
  uses a := ``A`` (the SigLIP head's probe attention). The official a is accepted as the
  ``attention`` argument (``VisionEncoder.extra_outputs = ("attention",)`` computes it), as for
  VisionZip.
- [D] **Inner-LLM stage off by default (``FlashVIDConfig.inner_merge``).** The official method
  keeps T = ceil(1.25 r N) per frame at the vision side and, before LLM layer 20 (of 28), keeps
  the top ceil(0.3 V) video tokens by the last prompt row's head-mean attention at layer 19
  (FastV; ``modeling_qwen2.py`` ``Qwen2Model_forward``, ``utils.py`` ``fastv_prune``): r is then
  the layer-averaged retention, 1.25 (20 + 8 x 0.3) / 28 = 1. ``inner_merge=True`` runs exactly
  that in the torch LLM backend (e = 1.25, K = ``inner_layer`` = 20, clamped to depth - 1 on
  smaller LLMs, ``inner_ratio`` = 0.3, ceil); the default (off, e = 1) keeps this toolkit's
  contract that r is the share of video tokens entering the LLM, which every backend (ONNX
  Runtime / TensorRT LLM graphs, the exported fixed budget B) can honour. Unlike Unified and
  HoliTom (whose inner stage leaves the vision-side budget alone, on by default), FlashVID's
  stage changes the vision budget, so ``inner_merge=True`` is refused where the stage cannot run
  (a non-torch LLM or compress backend, a "grid" backbone).
- [D] ADTS excludes selected tokens explicitly (the official ``attn_div_v2`` relies on
  D(s, s) = 0, which a negative w or duplicates break); ties go to the lower position. The
  official attention factor 1e6 (a uniform positive scale) is left out.
- [D] Complementary cuts are taken among the transitions not yet cut (the official code sets cut
  similarities to 1.0, which can tie with identical frames and cut twice); ties: lower t.
- [D] A single-frame segment clusters only its unselected tokens (the official code passes the
  whole frame, selected tokens included, so a token could be kept twice).
- [D] Ties: parent = lowest j; DPC "denser" on equal density = lower position (the official code
  adds 1e-6 random noise); centres by a stable ranking; a root joins the nearest centre, the
  lower position on ties. Zero norms are clamped at 1e-12. c_t is an integer ceil (the official
  float product can land an ulp above an integer).
- [D] The reference computes in float64 (the official code in the model dtype, distances in fp32).

:class:`FixedBudgetFlashVID` is the shape-static export form (see its docstring): exactly
``L T`` tokens; the only change in the selection rule is c_t (see there).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from infomerge.compress._ops import FixedShapeModule, check_features
from infomerge.compress.dpc_knn import density
from infomerge.compress.exact_arith import exp_neg, row_sq_dist
from infomerge.compress.fixed_budget import compact, rank_asc, rank_desc
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

_BIG = 1.0e30  # sentinel of excluded entries (weighted distances stay far below it)


@dataclass(frozen=True)
class FlashVIDConfig:
    """FlashVID's hyperparameters (official defaults; ``inner_merge`` and ``expansion`` see [D]).

    Attributes:
        retention: r in (0, 1].
        alpha: ADTS share of the per-frame budget (0.7).
        temporal_threshold: tau, the TSTM cosine threshold (0.8).
        segment_threshold: tau_seg, the DySeg transition threshold (0.9).
        min_segments: S_min (8).
        knn: the DPC-kNN neighbour cap (7).
        inner_merge: the inner-LLM stage (FastV pruning in the torch LLM backend; False by
            default, see [D] in the module docstring). True: the official method, r = the
            layer-averaged retention.
        inner_layer: K = 20 (``pruning_layer``): layers 0 .. K-1 see every video token, K .. the
            kept ones; ranked by layer K-1's attention. An LLM with <= K layers prunes before its
            last layer (tiny: K = 1).
        inner_ratio: share of the video tokens kept at layer K, ``ceil(0.3 V)``
            (``llm_retention_ratio``).
        expansion: e, T = ceil(N r e); None (default): 1.25 with the inner stage (the official
            ``expansion``), 1.0 without it.

    Raises:
        BudgetError: retention outside (0, 1], or another field outside its range.
    """

    retention: float
    alpha: float = 0.7
    temporal_threshold: float = 0.8
    segment_threshold: float = 0.9
    min_segments: int = 8
    knn: int = 7
    inner_merge: bool = False
    inner_layer: int = 20
    inner_ratio: float = 0.3
    expansion: float | None = None

    # read by the runtime's inner stage (infomerge.runtime.pipeline.Pipeline.inner_merge)
    inner_lambda = 0.0  # rank by attention only
    inner_queries = "last"  # the last prompt row's attention (``attentions[:, :, -1, :]``)
    inner_rounding = "ceil"  # ``math.ceil(visual_token_length * llm_retention_ratio)``
    inner_prune = True  # FastV: drop, no merge

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"FlashVID: retention must be in (0, 1], got {self.retention!r}")
        if not (0.0 <= float(self.alpha) <= 1.0) or self.min_segments < 1 or self.knn < 1:
            raise BudgetError(
                f"FlashVID: need 0 <= alpha <= 1, min_segments >= 1, knn >= 1; got {self.alpha}, "
                f"{self.min_segments}, {self.knn}"
            )
        if not (float(self.vision_expansion) > 0.0):
            raise BudgetError(f"FlashVID: expansion must be > 0, got {self.expansion!r}")
        if self.inner_layer < 1 or not (0.0 < float(self.inner_ratio) <= 1.0):
            raise BudgetError(
                f"FlashVID: need inner_layer >= 1 and inner_ratio in (0, 1], got {self.inner_layer}, "
                f"{self.inner_ratio}"
            )

    @property
    def vision_expansion(self) -> float:
        """e: ``expansion``, or where it is None, 1.25 with the inner stage and 1.0 without."""
        if self.expansion is not None:
            return float(self.expansion)
        return 1.25 if self.inner_merge else 1.0

    @property
    def needs_inner_stage(self) -> bool:
        """True when the vision-side budget counts on the inner stage (``inner_merge``): a pipeline
        that cannot run it must refuse rather than keep e r of the tokens in every layer."""
        return bool(self.inner_merge)

    def per_frame(self, n: int) -> tuple[int, int]:
        """(n_a, n_s): ADTS and STTM tokens per frame; n_a + n_s = T = min(N, ceil(N r e)).

        The official rounding: ``ceil(N * r * e)``, then ``ceil(T * alpha)``.

        Raises:
            BudgetError: n < 1.
        """
        if n < 1:
            raise BudgetError(f"FlashVID: a frame needs at least one token, got {n}")
        t = min(n, max(1, math.ceil(n * float(self.retention) * self.vision_expansion)))
        n_a = min(t, math.ceil(t * float(self.alpha)))
        return n_a, t - n_a

    def total_budget(self, frames: int, n: int) -> int:
        """B = L T, exactly for the fixed-budget graph (the reference keeps L n_a + sum_t c_t,
        at least B and at most B + L - 1)."""
        n_a, n_s = self.per_frame(n)
        return int(frames) * (n_a + n_s)

    def to_dict(self) -> dict:
        """The fields, ``expansion`` resolved to e."""
        return {**asdict(self), "expansion": self.vision_expansion}


@dataclass
class FlashVIDResult:
    """Reference output.

    Attributes:
        tokens: (K, D) in H's dtype, in index order. index: (K,) int64 sorted flat positions.
        segments: DySeg segment lengths (sum L).
        selected: (L, N) bool ADTS tokens. roots: (L, N) bool TSTM tree roots (unselected).
        centres: (L, N) bool DPC cluster centres (the kept merged tokens).
    """

    tokens: torch.Tensor
    index: torch.Tensor
    segments: list[int]
    selected: torch.Tensor
    roots: torch.Tensor
    centres: torch.Tensor


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---- 1. DySeg ---------------------------------------------------------------------------------
def dyseg(frame_means: torch.Tensor, threshold: float, min_segments: int) -> list[int]:
    """Segment lengths (list of ints, sum L) from the frame means (L, D) (step 1).

    Cut after frame t where cos(f_t, f_{t+1}) < threshold; then, while fewer than
    ``min_segments`` segments, at the lowest similarity among the uncut transitions (ties: lower t).
    """
    L = frame_means.shape[0]
    if L == 1:
        return [1]
    fn = _normalize(frame_means)
    s = (fn[:-1] * fn[1:]).sum(-1)  # (L-1,) transition similarities
    cut = (s < threshold).tolist()
    need = min(min_segments - 1, L - 1) - sum(cut)
    if need > 0:
        rest = sorted((float(s[t]), t) for t in range(L - 1) if not cut[t])
        for _, t in rest[:need]:
            cut[t] = True
    bounds = [0] + [t + 1 for t in range(L - 1) if cut[t]] + [L]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


# ---- 2. ADTS ----------------------------------------------------------------------------------
def adts(x: torch.Tensor, a: torch.Tensor, n_select: int) -> torch.Tensor:
    """ADTS on one segment: (F, n_select) int64 selected positions per frame, in selection order.

    Args:
        x: (F, N, D) float tokens of the segment. a: (F, N) attention received.
        n_select: n_a <= N.
    """
    F, N, _ = x.shape
    out = torch.zeros(F, n_select, dtype=torch.int64, device=x.device)
    if n_select == 0:
        return out
    seg_mean = x.mean(1).mean(0)  # (D,) mean over the segment's frame means
    xn = _normalize(x)
    for f in range(F):
        w = a[f] * (x[f] @ seg_mean)  # (N,) attention x event relevance
        D = (1.0 - xn[f] @ xn[f].T) * w.unsqueeze(0)  # (N, N), column j scaled by w_j
        second = D.sort(dim=0).values[1] if N > 1 else D[0]  # (N,) 2nd smallest of each column
        order = [int(torch.argmax(second))]
        running = D[order[0]].clone()
        taken = torch.zeros(N, dtype=torch.bool, device=x.device)
        taken[order[0]] = True
        for _ in range(1, n_select):
            s = int(torch.argmax(torch.where(taken, -math.inf, running)))
            order.append(s)
            taken[s] = True
            running = torch.minimum(running, D[s])
        out[f] = torch.tensor(order, dtype=torch.int64)
    return out


# ---- 3. TSTM ----------------------------------------------------------------------------------
def tstm(x: torch.Tensor, selected: torch.Tensor, lower_bound: int, tau: float):
    """Tree-based spatiotemporal merging inside one segment (step 3).

    Args:
        x: (F, N, D) float tokens. selected: (F, N) bool ADTS tokens (neither parent nor child).
        lower_bound: T F, the fewest tokens (selected ones included) that stay roots.
        tau: the cosine threshold.

    Returns:
        ``(roots (F, N) bool unselected roots, values (F, N, D) tree means at the roots,
        parent (F, N) int64, merged (F, N) bool)``.
    """
    F, N, _ = x.shape
    xn = _normalize(x)
    msim = torch.full((F, N), -1.0, dtype=x.dtype, device=x.device)
    parent = torch.zeros(F, N, dtype=torch.int64, device=x.device)
    for t in range(1, F):
        cs = xn[t] @ xn[t - 1].T  # (N, N): rows frame t, columns frame t-1
        cs = torch.where(selected[t].unsqueeze(1) | selected[t - 1].unsqueeze(0), -1.0, cs)
        msim[t], parent[t] = cs.max(dim=1).values, torch.argmax(cs, dim=1)
    merged = msim > tau
    if int((~merged).sum()) < lower_bound:
        k = F * N - lower_bound  # merge at most k - 1: the values above the k-th largest
        soft = math.inf  # k = 0 (T = N): nothing may merge
        if k:
            soft = max(float(msim.reshape(-1).sort(descending=True).values[k - 1]), -1.0 + 1e-6)
        merged = msim > soft
    sums, count = x.clone(), torch.ones(F, N, dtype=x.dtype, device=x.device)
    for t in range(F - 1, 0, -1):  # leaves first: every subtree's sum reaches its root
        for i in torch.arange(N, device=x.device)[merged[t]].tolist():
            sums[t - 1, parent[t, i]] += sums[t, i]
            count[t - 1, parent[t, i]] += count[t, i]
    return (~merged) & (~selected), sums / count.unsqueeze(-1), parent, merged


# ---- 4. DPC-kNN -------------------------------------------------------------------------------
def dpc_knn_frame(v: torch.Tensor, clusters: int, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashVID's DPC-kNN on the m roots of one frame (step 4).

    Args:
        v: (m, D) float roots, m >= clusters >= 1. clusters: c. knn: the cap k_nn (k = min(c, k_nn)).

    Returns:
        ``(centres (c,) int64 ascending positions in 0..m-1, join (m,) int64 the centre each root
        joins)``.
    """
    m, dim = v.shape
    d = torch.cdist(v, v) / math.sqrt(dim)  # (m, m)
    d.fill_diagonal_(0.0)
    rho = density(d, min(clusters, knn))  # exp(-mean of the k smallest d^2, self included)
    idx = torch.arange(m, device=v.device)
    ri, rj = rho.unsqueeze(1), rho.unsqueeze(0)
    denser = (rj > ri) | ((rj == ri) & (idx.unsqueeze(0) < idx.unsqueeze(1)))  # [i, j]: j denser
    delta = torch.where(denser, d, d.max()).amin(1)  # the densest: max over the frame's roots
    gamma = rho * delta
    centres = torch.sort(gamma, descending=True, stable=True).indices[:clusters].sort().values
    join = centres[d.index_select(1, centres).argmin(1)]  # lower position on ties
    join[centres] = centres
    return centres, join


def flashvid(H: torch.Tensor, attention: torch.Tensor, config: FlashVIDConfig) -> FlashVIDResult:
    """FlashVID's vision-side compression with an explicit attention (steps 1-4).

    Args:
        H: (L, N, D) float tokens. attention: (L, N) float, attention each token receives.
        config: :class:`FlashVIDConfig`.

    Returns:
        :class:`FlashVIDResult` (L n_a + sum_t c_t tokens).

    Raises:
        ValueError: attention of the wrong shape or not finite. BudgetError: from the config.
    """
    if attention.shape != H.shape[:2] or not torch.isfinite(attention).all():
        raise ValueError(f"FlashVID: attention must be finite (L, N) = {tuple(H.shape[:2])}")
    L, N, D = H.shape
    n_a, n_s = config.per_frame(N)
    x, a = H.to(torch.float64), attention.to(torch.float64)
    lengths = dyseg(x.mean(1), config.segment_threshold, config.min_segments)
    selected = torch.zeros(L, N, dtype=torch.bool, device=H.device)
    roots = torch.zeros_like(selected)
    centres = torch.zeros_like(selected)
    out = x.clone()
    start = 0
    for F in lengths:
        seg = slice(start, start + F)
        picks = adts(x[seg], a[seg], n_a)
        selected[seg].scatter_(1, picks, True)
        if F > 1:
            root, values, _, _ = tstm(x[seg], selected[seg], (n_a + n_s) * F, config.temporal_threshold)
        else:
            root, values = ~selected[seg], x[seg]
        roots[seg] = root
        total = int(root.sum())
        for f in range(F):
            pos = torch.arange(N, device=H.device)[root[f]]
            m = pos.numel()
            if n_s == 0 or m == 0:
                continue
            c = m if total <= n_s * F else -(-m * n_s * F // total)  # ceil(m n_s F / M)
            if c >= m:  # every root is its own cluster
                centres[start + f, pos] = True
                out[start + f, pos] = values[f, pos]
                continue
            cen, join = dpc_knn_frame(values[f, pos], c, config.knn)
            for j in cen.tolist():
                members = values[f, pos[join == j]]
                centres[start + f, pos[j]] = True
                out[start + f, pos[j]] = members.mean(0)
        start += F
    keep = (selected | centres).reshape(L * N)
    index = torch.arange(L * N, device=H.device)[keep]
    tokens = out.reshape(L * N, D)[index].to(H.dtype)
    return FlashVIDResult(tokens, index, lengths, selected, roots, centres)


def reference(
    H: torch.Tensor,
    A: torch.Tensor,
    g: torch.Tensor,
    config: FlashVIDConfig,
    attention: torch.Tensor | None = None,
) -> FlashVIDResult:
    """The registered reference: :func:`flashvid` on the official ``attention`` (the last vision
    layer's, the method's extra vision output) or, where it is not given, on ``A`` ([D]).

    Args:
        H: (L, N, D) float tokens. A: (L, N) float. g: (L, G): checked, not used.
        config: :class:`FlashVIDConfig`. attention: (L, N) float, or None.

    Raises:
        ValueError: bad shapes or non-finite values. BudgetError: from the config.
    """
    check_features("FlashVID", H, A, g)
    return flashvid(H, A if attention is None else attention, config)


# ---- the fixed-budget, shape-static form --------------------------------------------------------
class FixedBudgetFlashVID(FixedShapeModule):
    """FlashVID as a fixed-budget, shape-static graph for one video shape (L, N, D).

    Exactly ``B = L T`` tokens, sorted indices; every step of :func:`flashvid` batched over the
    frames with static shapes (no NonZero, TopK, Loop, If, boolean indexing or value-dependent
    Python control flow; every Python loop runs over L, n_a or k_nn):

    - DySeg: cuts as a boolean vector over the L - 1 transitions, complementary cuts by a rank
      count; segment ids by cumsum and an (L, L) same-segment mask.
    - ADTS: (L, N, N) calibrated distances by one batched MatMul; the second smallest of a column
      is the minimum after masking the (first) argmin row; the greedy loop is unrolled n_a - 1
      times (ArgMax, GatherElements, Min per step) over all frames at once, selected tokens set to
      -1e30 on their own column so that they never win again.
    - TSTM: (L-1, N, N) cosines of consecutive frames (MatMul), masked at selected tokens and at
      segment starts; parent = ArgMax; the lower-bound fallback counts, per token, the tokens of
      its segment with a max cosine >= its own (L unrolled (L, N, N) comparisons, no sort); tree
      sums by one-hot MatMuls from the last frame to the first (L - 1 unrolled steps).
    - DPC-kNN: distances by the MatMul form on frame-centred roots; the k smallest of a row by k_nn
      unrolled min-and-mask steps (k per frame, no TopK); delta, gamma and the centres by rank
      counts; assignment by ArgMin and one-hot MatMuls.
    - output: the kept mask compacted by cumsum + ScatterElements
      (:func:`~infomerge.compress.fixed_budget.compact`); tokens by Gather.

    The one change in the rule [D]: cluster counts. The reference gives frame t
    ``c_t = ceil(m_t n_s F / M)`` (data-dependent total, up to F - 1 over n_s F per segment); here
    the segment's exact n_s F is split over its frames in proportion to m_t by largest remainder
    (each c_t is the floor or the ceil of the share; ties: lower frame), so B = L T for every
    input. The kNN size stays the reference's min(ceil(m_t n_s F / M), k_nn). Counts use fp32
    arithmetic on integers below 2^24 (exact). All other maths in fp32 (the reference: float64).

    Args:
        config: :class:`FlashVIDConfig`. frames, tokens_per_frame, hidden: L, N, D.

    Raises:
        BudgetError: from the config. ValueError: a dimension < 1.
    """

    def __init__(self, config: FlashVIDConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__(config, frames, tokens_per_frame, hidden)
        self.n_a, self.n_s = config.per_frame(self.n)
        self.budget = config.total_budget(self.frames, self.n)

    # -- 1. DySeg: (L, L) same-segment mask, (L-1,) frame t+1 continues frame t's segment ----
    def _segments(self, fm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.frames
        if L == 1:
            return torch.ones(1, 1, dtype=torch.bool, device=fm.device), torch.ones(0, dtype=torch.bool)
        fn = _normalize(fm)
        s = (fn[:-1] * fn[1:]).sum(-1)  # (L-1,)
        cut = s < self.config.segment_threshold
        need = min(self.config.min_segments - 1, L - 1) - cut.to(torch.int64).sum()
        extra = (rank_asc(torch.where(cut, math.inf, s)) < need) & ~cut
        step = (cut | extra).to(torch.int64)
        seg = torch.cat([torch.zeros(1, dtype=torch.int64, device=fm.device), torch.cumsum(step, 0)])
        return seg.unsqueeze(0) == seg.unsqueeze(1), step == 0

    # -- 2. ADTS: (L, N) selected mask ---------------------------------------------------------
    def _adts(self, x, xn, a, fm, same) -> torch.Tensor:
        L, N = self.frames, self.n
        if self.n_a == 0:
            return torch.zeros(L, N, dtype=torch.bool, device=x.device)
        samef = same.to(x.dtype)
        seg_mean = (samef @ fm) / samef.sum(1, keepdim=True)  # (L, D)
        w = a * (x @ seg_mean.unsqueeze(-1)).squeeze(-1)  # (L, N)
        Dm = (1.0 - xn @ xn.transpose(1, 2)) * w.unsqueeze(1)  # (L, N, N) columns calibrated
        rows = torch.arange(N, device=x.device)
        r1 = torch.argmin(Dm, dim=1)  # (L, N) the smallest of each column
        second = Dm[:, 0]  # (L, N); N = 1: the only entry
        if N > 1:
            second = torch.where(rows.reshape(1, N, 1) == r1.unsqueeze(1), _BIG, Dm).amin(1)
        eye = rows.unsqueeze(0) == rows.unsqueeze(1)
        Dsel = torch.where(eye, -_BIG, Dm)  # a selected token's own column entry
        s = torch.argmax(second.unsqueeze(1), dim=2, keepdim=True)  # (L, 1, 1)
        running = torch.gather(Dsel, 1, s.expand(L, 1, N))  # (L, 1, N)
        for _ in range(self.n_a - 1):  # unrolled greedy: the count is static
            s = torch.argmax(running, dim=2, keepdim=True)
            running = torch.minimum(running, torch.gather(Dsel, 1, s.expand(L, 1, N)))
        return running.squeeze(1) < -_BIG / 2

    # -- 3. TSTM: (L, N) merged mask, parent -----------------------------------------------------
    def _tstm(self, xn, sel, same, cont):
        L, N, T = self.frames, self.n, self.n_a + self.n_s
        dev = xn.device
        neg = torch.full((1, N), -1.0, dtype=xn.dtype, device=dev)
        if L > 1:
            cs = xn[1:] @ xn[:-1].transpose(1, 2)  # (L-1, N, N) rows frame t, columns frame t-1
            cs = torch.where(sel[1:].unsqueeze(2) | sel[:-1].unsqueeze(1), -1.0, cs)
            msim = torch.cat([neg, torch.where(cont.unsqueeze(1), cs.amax(2), -1.0)])  # (L, N)
            parent = torch.cat([torch.zeros(1, N, dtype=torch.int64, device=dev), torch.argmax(cs, dim=2)])
        else:
            msim, parent = neg, torch.zeros(1, N, dtype=torch.int64, device=dev)
        samef = same.to(xn.dtype)
        frames_in = samef.sum(1)  # (L,) F of each frame's segment
        merged0 = msim > self.config.temporal_threshold
        kept0 = samef @ (~merged0).to(xn.dtype).sum(1)  # (L,) roots + selected in the segment
        fallback = (kept0 < T * frames_in).unsqueeze(1)  # (L, 1)
        ge = torch.zeros(L, N, dtype=xn.dtype, device=dev)
        for u in range(L):  # tokens of the same segment with a max cosine >= mine
            cmp = (msim[u].reshape(1, 1, N) >= msim.unsqueeze(-1)).to(xn.dtype).sum(-1)
            ge = ge + samef[:, u : u + 1] * cmp
        k = (N - T) * frames_in.unsqueeze(1)  # (L, 1): F N - T F
        merged_soft = (ge <= k - 1) & (msim > -1.0 + 1e-6)
        return (fallback & merged_soft) | (~fallback & merged0), parent  # no bool Where in ORT

    def _tree_means(self, x, merged, parent) -> torch.Tensor:
        L, N = self.frames, self.n
        cols = torch.arange(N, device=x.device)
        sums = list(torch.cat([x, torch.ones_like(x[..., :1])], -1).unbind(0))  # [sum | count]
        for t in range(L - 1, 0, -1):  # leaves first
            link = ((parent[t].unsqueeze(1) == cols) & merged[t].unsqueeze(1)).to(x.dtype)  # (N, N)
            sums[t - 1] = sums[t - 1] + link.transpose(0, 1) @ sums[t]
        st = torch.stack(sums)
        return st[..., :-1] / st[..., -1:]

    # -- 4. cluster counts and DPC-kNN ---------------------------------------------------------
    def _counts(self, roots, same):
        """(c (L,), k (L,)) as fp32 integers: largest-remainder cluster counts and kNN sizes."""
        samef = same.to(torch.float32)
        m = roots.to(torch.float32).sum(1)  # (L,)
        total = (samef @ m).clamp_min(1.0)  # M of the frame's segment
        num = m * float(self.n_s) * samef.sum(1)  # m_t n_s F
        base = torch.floor(num / total)
        rem = num - base * total
        need = float(self.n_s) * samef.sum(1) - samef @ base
        t = torch.arange(self.frames, device=roots.device)
        ri, rj = rem.unsqueeze(1), rem.unsqueeze(0)
        ahead = same & ((rj > ri) | ((rj == ri) & (t.unsqueeze(0) < t.unsqueeze(1))))  # [t, u]
        rank = ahead.to(torch.float32).sum(1)
        c = base + (rank < need).to(torch.float32)
        k = torch.clamp(base + (rem > 0).to(torch.float32), 1.0, float(self.config.knn))
        return c, k

    def _dpc(self, v, roots, c, k):
        """(centres (L, N) bool, join (L, N) int64): DPC-kNN per frame over its roots.

        Exact across backends (as the InfoMerge graph's density step, ``fixed_budget._density``):
        the MatMul form of the squared distances (frame-centred) only CHOOSES pairs (a margin of
        2 k_nn nearest, the k_nn nearest denser, the farthest, the 2 nearest centres); the chosen
        pairs' d^2 are recomputed by fixed-order elementwise sums (``row_sq_dist``); "denser"
        compares m = mean kNN d^2 (rho = exp(-m)); centres are ranked by
        ``(rho delta)^2 / rho_max^2 = exp(-2 (m - m_min)) delta^2`` with the Mul/Add ``exp_neg``
        (no Exp or Sqrt, whose last bits differ between torch and ONNX Runtime).
        """
        L, N, D = self.frames, self.n, self.hidden
        dev = v.device
        cols = torch.arange(N, device=dev)
        rf = roots.to(v.dtype)
        mean = (v * rf.unsqueeze(-1)).sum(1, keepdim=True) / rf.sum(1).clamp_min(1.0).reshape(L, 1, 1)
        y = v - mean  # frame-centred: less cancellation in the MatMul form
        sq = (y * y).sum(-1)
        d2 = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * (y @ y.transpose(1, 2))).clamp_min(0.0)
        d2 = torch.where(cols.unsqueeze(0) == cols.unsqueeze(1), 0.0, d2)  # (L, N, N) choice only
        valid = roots.unsqueeze(2) & roots.unsqueeze(1)
        vf = v.reshape(L * N, D)
        base = (torch.arange(L, device=dev) * N).reshape(L, 1, 1)

        def exact(at: torch.Tensor, j: int) -> torch.Tensor:
            """(L, N, j) exact d^2 / D from token i to the tokens ``at`` (L, N, j) of its frame
            (token i broadcast, not gathered; the sums of ``pair_sq_dist``, bit for bit). ``j``: a
            Python int (static shapes in the traced graph)."""
            return (row_sq_dist(vf, (at + base).reshape(L * N, j), D, (L * N, j)) / D).reshape(L, N, j)

        def nearest(score: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The ``count`` smallest entries' columns (L, N, count) and which are real (< _BIG)."""
            at, ok = [], []
            for _ in range(count):  # unrolled min-and-mask: no TopK
                j = torch.argmin(score, dim=2, keepdim=True)
                ok.append(torch.gather(score, 2, j) < _BIG / 2)
                at.append(j)
                score = torch.where(cols.reshape(1, 1, N) == j, _BIG, score)
            return torch.cat(at, 2), torch.cat(ok, 2)

        knn = self.config.knn
        # m: mean of the k smallest exact d^2 (self included), k per frame, added in ascending order
        at, ok = nearest(torch.where(valid, d2, _BIG), min(2 * knn, N))
        near = torch.where(ok, exact(at, min(2 * knn, N)), _BIG)
        slots = torch.arange(near.shape[-1], device=dev).reshape(1, 1, -1)
        acc = torch.zeros(L, N, dtype=v.dtype, device=dev)
        for j in range(min(knn, N)):
            low = near.amin(2)
            acc = acc + torch.where(k.unsqueeze(1) > j, low, 0.0)
            near = torch.where(slots == torch.argmin(near, dim=2, keepdim=True), _BIG, near)
        m = acc / k.unsqueeze(1)  # (L, N); rho = exp(-m)
        # delta^2: exact d^2 to the nearest denser root (among the MatMul form's k_nn nearest)
        mi, mj = m.unsqueeze(2), m.unsqueeze(1)
        denser = valid & ((mj < mi) | ((mj == mi) & (cols.reshape(1, 1, N) < cols.reshape(1, N, 1))))
        at, ok = nearest(torch.where(denser, d2, _BIG), min(knn, N))
        to_denser = torch.where(ok, exact(at, min(knn, N)), _BIG).amin(2)
        far = torch.argmax(torch.where(valid, d2, -1.0), dim=2, keepdim=True)  # each row's farthest
        dmax2 = torch.where(roots, exact(far, 1).squeeze(-1), 0.0).amax(1, keepdim=True)  # (L, 1)
        delta2 = torch.where(denser.any(2), to_denser, dmax2)
        m_min = torch.where(roots, m, _BIG).amin(1, keepdim=True)
        score = exp_neg(2.0 * (torch.where(roots, m, m_min) - m_min)) * delta2
        centres = (rank_desc(torch.where(roots, score, -math.inf)) < c.unsqueeze(1)) & roots
        # join: the nearer (exact) of the 2 nearest centres by the MatMul form; ties: lower position
        at, ok = nearest(torch.where(centres.unsqueeze(1) & valid, d2, _BIG), min(2, N))
        e = torch.where(ok, exact(at, min(2, N)), _BIG)
        if min(2, N) > 1:
            second = (e[..., 1] < e[..., 0]) | ((e[..., 1] == e[..., 0]) & (at[..., 1] < at[..., 0]))
            join = torch.where(second, at[..., 1], at[..., 0])
        else:
            join = at[..., 0]
        return centres, torch.where(centres, cols.unsqueeze(0), join)

    def forward(
        self, H: torch.Tensor, A: torch.Tensor, g: torch.Tensor, attention: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``B = budget`` tokens.

        Args:
            H: (L, N, D) float32 or float16. A: (L, N) float. g: (L, G), unused (a graph input).
            attention: (L, N) float attention received (None: ``A``); fixed when traced.

        Returns:
            ``tokens`` (B, D) in H's dtype, ``index`` (B,) int64 sorted flat positions.
        """
        L, N, D = self.frames, self.n, self.hidden
        self.check_shape(H)
        x = H.to(torch.float32)
        a = (A if attention is None else attention).to(torch.float32)
        xn = _normalize(x)
        fm = x.mean(1)  # (L, D)
        same, cont = self._segments(fm)
        sel = self._adts(x, xn, a, fm, same)
        merged, parent = self._tstm(xn, sel, same, cont)
        roots = (~merged) & (~sel)
        v = self._tree_means(x, merged, parent)
        c, k = self._counts(roots, same)
        centres, join = self._dpc(v, roots, c, k)
        member = ((join.unsqueeze(2) == torch.arange(N, device=H.device)) & roots.unsqueeze(2)).to(x.dtype)
        total = member.transpose(1, 2) @ v  # (L, N, D) sums at the centres
        count = member.sum(1).clamp_min(1.0).unsqueeze(-1)
        out = torch.where(centres.unsqueeze(-1), total / count, x).reshape(L * N, D)
        index, _ = compact((sel | centres).reshape(L * N), self.budget)
        tokens = out.index_select(0, index).to(H.dtype)
        unused = g.sum() if attention is None else g.sum() + A.sum()  # graph inputs all the same
        return tokens + (0.0 * unused).to(tokens.dtype), index


METHOD = Method(
    name="flashvid",
    summary="FlashVID: per-segment ADTS (attention-calibrated max-min diversity) + tree merging + DPC-kNN",
    config=FlashVIDConfig,
    reference=reference,
    fixed_budget=FixedBudgetFlashVID,
    vision_outputs=("attention",),
)

__all__ = [
    "METHOD",
    "FixedBudgetFlashVID",
    "FlashVIDConfig",
    "FlashVIDResult",
    "adts",
    "dpc_knn_frame",
    "dyseg",
    "flashvid",
    "reference",
    "tstm",
]
