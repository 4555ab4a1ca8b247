"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467) in its LLaVA-OneVision video form.

Per frame, independently (paper Sec. 3.2; the per-frame video form is the one HoliTom's
repository, github.com/cokeshao/HoliTom ``visionzip/llava_arch.py``, read 2026-12-01, uses for
its LLaVA-OneVision comparisons), with ``K`` tokens kept of the frame's ``N``::

    K   = ceil(r * N)                 d = floor(K * 54 / 64)  dominant,  c = K - d  contextual
    Dom = the d tokens with the largest attention received  a_p        (ties: lower p first)
    R   = the other N - d tokens, in original order  (R_0 < R_1 < ... < R_{N-d-1})
    s   = max(1, (N - d) // c)        targets  T_j = R_{j s},  j = 0 .. c - 1
    k^  = k / |k|                     (keys, L2-normalised)
    for every i in R \\ T:  j(i) = argmax_j <k^_i, k^_{T_j}>                  (ties: lower j)
    contextual_j = h_{T_j} + (1 / max(1, |{i : j(i) = j}|)) * sum_{i : j(i) = j} h_i

Kept: the d dominant tokens unchanged and the c contextual tokens at their targets' positions,
``K`` per frame, ``L * K`` in all, in original order (index ``l * N + p``).

What "attention received" and "keys" are in the official video form: the last layer of the
26-layer SigLIP tower LLaVA-OneVision uses; ``a_p`` = that layer's self-attention probability
onto patch p averaged over heads and over all 729 queries; ``k`` = that layer's key vectors
averaged over heads (head_dim wide); both bilinearly pooled 27x27 -> 14x14 like the tokens.

The method declares both as its vision outputs (``METHOD.vision_outputs = ("attention",
"keys")``): the vision stage computes them in the same pass as (H, A, g) (``VisionEncoder.
extra_outputs``, ``vision.onnx`` outputs of those names), :func:`reference` takes them as the
keyword arguments ``attention`` (L, N) and ``keys`` (L, N, head_dim), and
:class:`FixedBudgetVisionZip` as its fourth and fifth inputs (``compress.onnx`` has five). [D] A
vision source without them (an old ``vision.onnx``) is refused by the runtime with the re-export
command; called directly without them, :func:`reference` and the module fall back to
attention := ``A`` (the SigLIP head's probe attention) and keys := ``H``, an approximation that
keeps a different token set (measured in ``docs/methods.md``).

Other decisions where the paper and code are silent or the contract differs:

- [D] ``K = ceil(r N)``: HoliTom's scripts run SPATIAL_TOKENS = 20, 30, 40, 50 for r = 0.10,
  0.15, 0.20, 0.25 (ceil gives 20, 30, 40 and 49).
- [D] Ties in attention go to the lower index (torch ``topk`` leaves their order unspecified);
  ties in similarity to the lower target (``argmax``'s rule).
- [D] A zero key is normalised with its norm clamped at 1e-12 (the official code divides by 0).
- [D] Output order: original order (the toolkit's contract); the official code concatenates the
  dominant tokens (in original order) before the contextual ones.
- [D] The reference computes similarities in float64; merged tokens are returned in H's dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from infomerge.compress._ops import FixedShapeModule, check_features
from infomerge.compress.fixed_budget import compact
from infomerge.compress.methods import Method
from infomerge.errors import BudgetError

DOMINANT_RATIO = 54 / 64  # share of dominant tokens (official default, VisionZip's 54 of 64)


@dataclass(frozen=True)
class VisionZipConfig:
    """VisionZip's hyperparameters.

    Attributes:
        retention: r in (0, 1]; K = ceil(r N) tokens kept per frame.
        dominant_ratio: share of dominant tokens, d = floor(K * dominant_ratio) (54/64).

    Raises:
        BudgetError: retention outside (0, 1], or dominant_ratio outside [0, 1).
    """

    retention: float
    dominant_ratio: float = DOMINANT_RATIO

    def __post_init__(self) -> None:
        if not (0.0 < float(self.retention) <= 1.0):
            raise BudgetError(f"VisionZip: retention must be in (0, 1], got {self.retention!r}")
        if not (0.0 <= float(self.dominant_ratio) < 1.0):
            raise BudgetError(f"VisionZip: dominant_ratio must be in [0, 1), got {self.dominant_ratio!r}")

    def per_frame(self, n: int) -> tuple[int, int]:
        """(d, c): dominant and contextual tokens kept per frame of ``n`` (d + c = ceil(r n)).

        Raises:
            BudgetError: n < 1.
        """
        if n < 1:
            raise BudgetError(f"VisionZip: a frame needs at least one token, got {n}")
        k = min(n, max(1, math.ceil(float(self.retention) * n - 1e-9)))
        d = int(k * float(self.dominant_ratio))
        return d, k - d

    def total_budget(self, frames: int, n: int) -> int:
        """B = frames * ceil(r n), exactly (every frame keeps the same count)."""
        d, c = self.per_frame(n)
        return int(frames) * (d + c)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VisionZipResult:
    """Reference output: ``tokens`` (K, D) in H's dtype, ``index`` (K,) int64 sorted flat
    positions ``l * N + p``; ``dominant`` (L, N) bool; ``target`` (L, N) bool (contextual slots);
    ``assign`` (L, N) int64 the target slot j each merged token went to (-1 elsewhere)."""

    tokens: torch.Tensor
    index: torch.Tensor
    dominant: torch.Tensor
    target: torch.Tensor
    assign: torch.Tensor


def visionzip(
    H: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor, config: VisionZipConfig
) -> VisionZipResult:
    """Paper-faithful per-frame VisionZip with explicit attention and keys.

    Args:
        H: (L, N, D) float tokens (what the LLM receives).
        attention: (L, N) float, attention received by each token (larger: more dominant).
        keys: (L, N, Dk) float, the similarity features of the contextual merge.
        config: :class:`VisionZipConfig`.

    Returns:
        :class:`VisionZipResult` with ``L * ceil(r N)`` tokens.

    Raises:
        ValueError: shapes that disagree or non-finite values. BudgetError: from the config.
    """
    if H.dim() != 3 or attention.shape != H.shape[:2] or keys.dim() != 3 or keys.shape[:2] != H.shape[:2]:
        raise ValueError(
            f"VisionZip: expected H (L, N, D), attention (L, N), keys (L, N, Dk); got "
            f"{tuple(H.shape)}, {tuple(attention.shape)}, {tuple(keys.shape)}"
        )
    if not (torch.isfinite(attention).all() and torch.isfinite(keys).all()):
        raise ValueError("VisionZip: attention or keys have NaN or infinite values")
    L, N, D = H.shape
    d, c = config.per_frame(N)
    dev = H.device
    dominant = torch.zeros(L, N, dtype=torch.bool, device=dev)
    target = torch.zeros(L, N, dtype=torch.bool, device=dev)
    assign = torch.full((L, N), -1, dtype=torch.int64, device=dev)
    out = H.clone()
    kn = keys.to(torch.float64)
    kn = kn / kn.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    step = max(1, (N - d) // c)
    for f in range(L):
        order = torch.sort(attention[f].to(torch.float64), descending=True, stable=True).indices
        dominant[f, order[:d]] = True
        rest = torch.arange(N, device=dev)[~dominant[f]]  # original order
        tgt = rest[torch.arange(0, N - d, step, device=dev)[:c]]
        target[f, tgt] = True
        others = rest[~target[f, rest]]
        if others.numel():
            sim = kn[f, others] @ kn[f, tgt].T  # (|others|, c)
            j = sim.argmax(dim=1)
            assign[f, others] = j
            for slot in range(c):
                members = others[j == slot]
                if members.numel():
                    merged = H[f, members].to(torch.float64).mean(0)
                    out[f, tgt[slot]] = (H[f, tgt[slot]].to(torch.float64) + merged).to(H.dtype)
    keep = (dominant | target).reshape(L * N)
    index = torch.arange(L * N, device=dev)[keep]
    return VisionZipResult(
        tokens=out.reshape(L * N, D)[index], index=index, dominant=dominant, target=target, assign=assign
    )


def reference(
    H: torch.Tensor,
    A: torch.Tensor,
    g: torch.Tensor,
    config: VisionZipConfig,
    attention: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
) -> VisionZipResult:
    """The registered reference: :func:`visionzip` on the official inputs ``attention`` and
    ``keys`` (the last vision layer's; the method's vision outputs, which the runtime always
    passes), or where a direct caller gives none on the fallback attention := ``A``,
    keys := ``H`` (an approximation, see the module docstring).

    Args:
        H: (L, N, D) float tokens. A: (L, N) float. g: (L, G): checked, not used.
        config: :class:`VisionZipConfig`.
        attention: (L, N) float attention received, or None. keys: (L, N, Dk) float, or None.

    Raises:
        ValueError: bad shapes or non-finite H / A. BudgetError: from the config.
    """
    check_features("VisionZip", H, A, g)
    return visionzip(H, A if attention is None else attention, H if keys is None else keys, config)


class FixedBudgetVisionZip(FixedShapeModule):
    """VisionZip as a fixed-budget, shape-static graph for one video shape (L, N, D).

    Exactly ``B = L * ceil(r N)`` tokens, sorted indices. No TopK, NonZero, boolean indexing,
    Unique, scatter-reduce or value-dependent Python control flow:

    - dominant: the rank of token p in its frame, ``#{q: a_q > a_p} + #{q < p: a_q = a_p}``, is
      counted from (L, N, N) comparisons of the INPUT ``A``; dominant iff rank < d. Comparisons
      of inputs are exact in every backend, so the kept indices equal the eager module's on any
      input (the targets follow from the dominant set by integer arithmetic).
    - targets: position among the non-dominant tokens (a cumsum), ``q % s == 0`` and ``q < c s``;
      the j-th target's position is an integer sum over a one-hot mask.
    - merge: cosine similarities by one batched MatMul (fp32), argmax over the c targets, a
      one-hot assignment, sums by MatMul, counts clamped at 1; the mean is added at its target
      by a one-hot MatMul (no ScatterND). The assignment can differ from the eager module's only
      where two targets' similarities are within fp32 rounding; that changes a merged token's
      value, never an index.
    - compaction of the kept mask: cumsum + ScatterElements
      (:func:`~infomerge.compress.fixed_budget.compact`).

    Differences from :func:`reference`: fp32 similarities (the reference: float64) and sums.

    Args:
        config: :class:`VisionZipConfig`. frames, tokens_per_frame, hidden: L, N, D.

    Raises:
        BudgetError: from the config. ValueError: a dimension < 1.
    """

    def __init__(self, config: VisionZipConfig, frames: int, tokens_per_frame: int, hidden: int):
        super().__init__(config, frames, tokens_per_frame, hidden)
        self.dominant, self.contextual = config.per_frame(self.n)
        self.step = max(1, (self.n - self.dominant) // self.contextual)
        self.budget = config.total_budget(self.frames, self.n)

    def forward(
        self,
        H: torch.Tensor,
        A: torch.Tensor,
        g: torch.Tensor,
        attention: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep ``B = budget`` tokens.

        Args:
            H: (L, N, D) float32 or float16. A: (L, N) float. g: (L, G), unused (a graph input).
            attention: (L, N) float attention received (None: ``A``). keys: (L, N, Dk) float
                (None: ``H``). Which of the two forms a graph has is fixed when it is traced.

        Returns:
            ``tokens`` (B, D) in H's dtype, ``index`` (B,) int64 sorted flat positions.
        """
        L, N, D = self.frames, self.n, self.hidden
        d, c, s = self.dominant, self.contextual, self.step
        self.check_shape(H)
        dev = H.device
        a = (A if attention is None else attention).to(torch.float32)
        idx = torch.arange(N, device=dev)
        ai, aq = a.unsqueeze(-1), a.unsqueeze(-2)  # (L, N, 1): token p; (L, 1, N): token q
        before = (idx.unsqueeze(0) < idx.unsqueeze(1)).unsqueeze(0)  # [p, q]: q < p
        beats = (aq > ai) | ((aq == ai) & before)
        rank = beats.to(torch.int64).sum(-1)  # (L, N)
        dom = rank < d
        rest = (~dom).to(torch.int64)
        q = torch.cumsum(rest, 1) - 1  # position among the non-dominant tokens
        slots = torch.arange(c, device=dev) * s  # (c,)
        onehot = (q.unsqueeze(1) == slots.reshape(1, c, 1)) & (~dom).unsqueeze(1)  # (L, c, N)
        tgt_pos = (onehot.to(torch.int64) * idx).sum(-1)  # (L, c) int
        is_tgt = onehot.to(torch.int64).sum(1) > 0  # (L, N)
        x = H.to(torch.float32)
        k = x if keys is None else keys.to(torch.float32)
        kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kt = torch.gather(kn, 1, tgt_pos.unsqueeze(-1).expand(L, c, kn.shape[-1]))  # (L, c, Dk)
        sim = kn @ kt.transpose(1, 2)  # (L, N, c)
        j = torch.argmax(sim, dim=-1)  # (L, N)
        merged = (~dom) & (~is_tgt)
        assign = ((j.unsqueeze(-1) == torch.arange(c, device=dev)) & merged.unsqueeze(-1)).to(x.dtype)
        total = assign.transpose(1, 2) @ x  # (L, c, D)
        count = assign.sum(1).clamp_min(1.0).unsqueeze(-1)  # (L, c, 1)
        # the mean of each target's merged tokens, added at the target (one-hot MatMul: exact)
        out = (x + onehot.to(x.dtype).transpose(1, 2) @ (total / count)).reshape(L * N, D)
        index, _ = compact((dom | is_tgt).reshape(L * N), self.budget)
        tokens = out.index_select(0, index).to(H.dtype)
        unused = g.sum() if attention is None else g.sum() + A.sum()  # graph inputs all the same
        tokens = tokens + (0.0 * unused).to(tokens.dtype)
        return tokens, index


METHOD = Method(
    name="visionzip",
    summary="VisionZip (video form): per frame, dominant tokens by attention + contextual merge",
    config=VisionZipConfig,
    reference=reference,
    fixed_budget=FixedBudgetVisionZip,
    vision_outputs=("attention", "keys"),
)

__all__ = ["METHOD", "FixedBudgetVisionZip", "VisionZipConfig", "VisionZipResult", "reference", "visionzip"]
