"""The Qwen2.5-VL vision encoder at a static grid: frames -> (H, A, g), export-friendly, fp32 or fp16.

``QwenVisionEncoder.forward(pixel_values)`` with ``pixel_values`` (F, 3, h, w) float32 (frames
resized to multiples of 28 and normalised with Qwen's mean / std by the preprocessing) returns

- ``H`` (L, N, D): the patch merger's output in LLM width D (``out_hidden_size``), L = F / 2
  temporal groups (temporal patch 2), N = (h / 28) * (w / 28) merged tokens in raster order:
  exactly transformers' ``Qwen2_5_VisionTransformerPretrainedModel`` (``model.visual``) pooler
  output for ``grid_thw = (L, h / 14, w / 14)``, reshaped (L, N, D). Compute dtype;
- ``A`` (L, N) float32: FastVID's Qwen2.5-VL saliency: in the last vision block, per temporal
  group, the softmax attention of the MEAN query (over the group's h w / 196 patches, RoPE
  applied) onto the merge-unit-averaged keys (4 patches -> 1 merged token), over heads averaged;
- ``g`` (L, D) float32: FastVID's Qwen2.5-VL global feature: the mean of ``H`` over the N tokens
  of the group.

Source: transformers ``modeling_qwen2_5_vl`` (the module this reproduces; its tests compare
against it) and FastVID's Qwen2.5-VL code (github.com/LunarShen/FastVID,
``fastvid_qwen25vl/lmms-eval/lmms_eval/models/qwenvlutils/modeling_qwen2_5_vl.py``:
``Qwen2_5_VLVisionFlashAttention2.forward`` with ``grid_thw``, and the ``frame_global_features``
of ``Qwen2_5_VLForConditionalGeneration.forward``). See docs/backbones.md, "Qwen2.5-VL:
compressor inputs".

Static grid: h and w are fixed when the module is built; the patchify reshape, the window order
(transformers' ``get_vision_window_index``), the 2D rotary tables (``get_vision_position_ids`` +
``Qwen2_5_VLVisionRotaryEmbedding``) and each block's attention pattern are constants of that
grid. Attention is per temporal group (Qwen's ``cu_seqlens``: one sequence per group); the
window blocks attend inside 112 x 112 pixel windows: by a reshape into equal windows when the
merged grid divides into them, else by a constant block-diagonal additive mask. There are no
``cu_seqlens`` loops, so the traced graph is static. The frame axis is free in every reshape
(``-1``): the module takes any even number of frames (the export traces it on 2 frames and pins
the graph to F, :func:`infomerge.export.onnx_export.export_onnx`; the reference runs in chunks),
and nothing in the graph computes a shape.

Optional outputs (:attr:`QwenVisionEncoder.extra_outputs`, :data:`EXTRA_OUTPUTS`):
``attention`` (L, N) float32, the attention each patch RECEIVES in the last block (per temporal
group, softmax over the group's patches, mean over heads and queries) averaged over its merge unit
(FlashVID's Qwen2.5-VL code, ``flashvid/modeling_qwen2_5_vl.py``); ``keys`` (L, N, head_dim)
float32, the last block's keys before RoPE, mean over heads and over the merge unit.

fp16 mode: every linear weight is float16; RMSNorm statistics, RoPE, softmax and the A / g /
attention / keys statistics run in float32 (transformers' RMSNorm and rotary code already do).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionPatchEmbed,
    Qwen2_5_VLPatchMerger,
    Qwen2_5_VLVisionBlock,
    Qwen2_5_VLVisionRotaryEmbedding,
)
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from infomerge.backbones.registry import Backbone
from infomerge.errors import UsageError

#: optional vision outputs (:attr:`QwenVisionEncoder.extra_outputs`): name -> what it is
EXTRA_OUTPUTS = {
    "attention": "(L, N) float32: last block's attention received (mean over heads and queries, merge unit)",
    "keys": "(L, N, head_dim) float32: last block's keys before RoPE (mean over heads and merge unit)",
}


def _nearest(pixels: int, unit: int) -> int:
    """The multiple of ``unit`` nearest to ``pixels`` (at least ``unit``)."""
    return max(unit, round(pixels / unit) * unit)


class QwenGrid:
    """The static input grid of one export: F frames of h x w pixels.

    Attributes:
        frames: F (even: temporal patch 2). height, width: pixels, multiples of 28.
        groups: L = F / 2 temporal groups. grid_h, grid_w: patches per side (h / 14, w / 14).
        patches: S = grid_h * grid_w patches per group. tokens: N = S / 4 merged tokens per group.
    """

    def __init__(
        self, frames: int, height: int, width: int, patch: int = 14, merge: int = 2, temporal: int = 2
    ):
        unit = patch * merge
        if frames <= 0 or frames % temporal:
            raise UsageError(
                f"Qwen2.5-VL groups frames in pairs (temporal patch {temporal}): {frames} frames; "
                f"use an even frame count"
            )
        if height <= 0 or width <= 0 or height % unit or width % unit:
            raise UsageError(
                f"Qwen2.5-VL frames must be multiples of {unit} pixels per side, got {height} x {width}; "
                f"resize to e.g. {_nearest(height, unit)} x {_nearest(width, unit)}"
            )
        self.frames, self.height, self.width = frames, height, width
        self.patch, self.merge, self.temporal = patch, merge, temporal
        self.groups = frames // temporal
        self.grid_h, self.grid_w = height // patch, width // patch
        self.patches = self.grid_h * self.grid_w
        self.tokens = self.patches // (merge * merge)

    def grid_thw(self) -> torch.Tensor:
        """(1, 3) int64 ``[[L, grid_h, grid_w]]``: transformers' ``video_grid_thw`` of the clip."""
        return torch.tensor([[self.groups, self.grid_h, self.grid_w]], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"QwenGrid(frames={self.frames}, height={self.height}, width={self.width})"


def patchify(pixel_values: torch.Tensor, grid: QwenGrid) -> torch.Tensor:
    """(F, 3, h, w) -> (L, S, 3 * 2 * 14 * 14): Qwen's flattened patches, merge-block order.

    The layout of transformers' ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor``: per group,
    patches ordered (h / 28, w / 28, 2, 2) (merge blocks, then the 2 x 2 patches inside one), each
    flattened (channel, temporal, 14, 14). Written with tensors of rank <= 7 (TensorRT's limit is 8).
    """
    g, p, m, t = grid, grid.patch, grid.merge, grid.temporal
    x = pixel_values.reshape(-1, g.grid_h // m, m, p, g.grid_w // m, m, p)  # (F*3, ...)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (F*3, h/28, w/28, 2, 2, 14, 14)
    x = x.reshape(-1, t, 3, g.patches, p * p).permute(0, 3, 2, 1, 4)  # (L, S, 3, 2, 196)
    return x.reshape(-1, g.patches, 3 * t * p * p)


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' ``Qwen2_5_VLRMSNorm`` computed wholly in float32 (weight included), result in
    the input dtype (its own forward returns float32 for float16 input: float32 weight times the
    float16 normalised value)."""
    f = x.float()
    f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return (norm.weight.float() * f).to(x.dtype)


def rotate_half(x: torch.Tensor, half: int) -> torch.Tensor:
    """(..., 2 half) -> (-x[half:], x[:half]) (the rotary pairing transformers uses); ``half`` a
    constant, so the traced graph computes no shape."""
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionEncoder(nn.Module):
    """Frames -> (H, A, g) [+ extras] for one Qwen2.5-VL vision config at one static grid.

    Parameter names are those of transformers' ``Qwen2_5_VisionTransformerPretrainedModel``
    (``patch_embed``, ``blocks.i``, ``merger``), so ``load_state_dict(model.visual.state_dict())``
    loads a checkpoint's vision weights.

    Attributes:
        config: the ``Qwen2_5_VLVisionConfig``. grid: the :class:`QwenGrid`.
        compute_dtype: torch.float32 or torch.float16 (dtype of the linear weights and ``H``).
        extra_outputs: names from :data:`EXTRA_OUTPUTS` :meth:`forward` returns after (H, A, g).
        Buffers (constants of the grid, not saved): ``window_order`` (N,) int64 merge-unit order
        of the window layout, ``raster_order`` (N,) its inverse, ``cos`` / ``sin`` (S, head_dim)
        float32 rotary tables in window order, ``window_mask`` (S, S) float32 additive mask of the
        window blocks (used only when the windows are unequal).
    """

    def __init__(self, config: Qwen2_5_VLVisionConfig, grid: QwenGrid, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        if (config.patch_size, config.spatial_merge_size, config.temporal_patch_size) != (
            grid.patch,
            grid.merge,
            grid.temporal,
        ):
            raise UsageError(
                f"grid built for patch {grid.patch} / merge {grid.merge} / temporal {grid.temporal}, "
                f"the vision config has {config.patch_size} / {config.spatial_merge_size} / "
                f"{config.temporal_patch_size}"
            )
        self.config, self.grid = config, grid
        self.backbone = None  # set by :meth:`for_backbone`
        self.source: dict = {}
        self.heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.fullatt = frozenset(config.fullatt_block_indexes)
        self.compute_dtype = torch.float32
        self.extra_outputs: tuple[str, ...] = ()
        self.patch_embed = Qwen2_5_VisionPatchEmbed(
            config.patch_size, config.temporal_patch_size, config.in_channels, config.hidden_size
        )
        self.blocks = nn.ModuleList([Qwen2_5_VLVisionBlock(config) for _ in range(config.depth)])
        self.merger = Qwen2_5_VLPatchMerger(
            config.out_hidden_size, config.hidden_size, config.spatial_merge_size
        )
        # Qwen2.5-VL has no newline embedding; the runtime and the artifact layout expect one (D,)
        self.register_buffer("image_newline", torch.zeros(config.out_hidden_size), persistent=False)
        self._grid_constants()
        if dtype == torch.float16:
            self.to_compute_dtype(torch.float16)

    # --- constants of the grid ------------------------------------------------------------------
    def _grid_constants(self) -> None:
        """Window order, rotary tables and window pattern of :attr:`grid` (one temporal group;
        every group has the same)."""
        g, cfg = self.grid, self.config
        with torch.device("cpu"):  # real values even when the module is built on the meta device
            one = torch.tensor([[1, g.grid_h, g.grid_w]])
            order, cu = get_vision_window_index(one, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
            rotary = Qwen2_5_VLVisionRotaryEmbedding(cfg)
            rotary.inv_freq = rotary.compute_axial_rope_parameters(cfg)[0]
            pos = get_vision_position_ids(one, cfg.spatial_merge_size)  # (S, 2) merge-block order
            cos, sin = rotary(torch.zeros(1), pos)  # (S, head_dim) each
            unit = g.merge * g.merge
            patch_order = (order[:, None] * unit + torch.arange(unit)).reshape(-1)  # (S,)
            sizes = (cu[1:] - cu[:-1]).tolist()  # patches per window, window order
            window_id = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            same = window_id[:, None] == window_id[None, :]
            mask = torch.zeros(g.patches, g.patches).masked_fill(~same, float("-inf"))
        self.window_sizes = tuple(int(s) for s in sizes)
        self.register_buffer("window_order", order.clone(), persistent=False)  # (N,)
        self.register_buffer("raster_order", torch.argsort(order), persistent=False)  # (N,)
        self.register_buffer("patch_order", patch_order, persistent=False)  # (S,)
        self.register_buffer("cos", cos[patch_order].float(), persistent=False)  # (S, head_dim)
        self.register_buffer("sin", sin[patch_order].float(), persistent=False)
        self.register_buffer("window_mask", mask, persistent=False)  # (S, S)

    @property
    def equal_windows(self) -> bool:
        """True when every window holds the same number of patches (window blocks then attend by
        a reshape, else through :attr:`window_mask`)."""
        return len(set(self.window_sizes)) == 1

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def for_backbone(
        cls, backbone: Backbone, frames: int | None = None, dtype: torch.dtype = torch.float32
    ) -> QwenVisionEncoder:
        """The encoder of a Qwen2.5-VL ``backbone`` at its fixed frame size and ``frames`` frames
        (default ``backbone.frames``), weights uninitialised (random init of ``nn.Linear``).

        Raises:
            UsageError: not a Qwen2.5-VL backbone, or an odd frame count.
        """
        if getattr(backbone, "family", None) != "qwen2_5_vl":
            raise UsageError(f"backbone {backbone.name!r} is not a Qwen2.5-VL backbone")
        grid = QwenGrid(
            backbone.frames if frames is None else frames,
            backbone.frame_height,
            backbone.frame_width,
            backbone.patch,
            backbone.spatial_merge,
            backbone.temporal_patch,
        )
        enc = cls(backbone.qwen_config().vision_config, grid, dtype)
        enc.backbone = backbone
        return enc

    @classmethod
    def from_backbone(
        cls,
        backbone: Backbone | str,
        model_path: str | Path | None = None,
        *,
        frames: int | None = None,
        random_weights: bool = False,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        fingerprint: bool = True,
    ) -> QwenVisionEncoder:
        """Build the encoder of ``backbone`` with its checkpoint's vision weights (or random ones).

        Only the ``model.visual.*`` (or ``visual.*``) tensors are read, never the language
        model's. The module is built on the meta device and the tensors assigned to it.

        Args:
            backbone: a Qwen2.5-VL :class:`Backbone` or its registry name.
            model_path: local checkpoint directory (default: the hub id, or the built tiny one).
            frames: F of the static grid (default ``backbone.frames``; even).
            random_weights: full-size random weights from ``seed``; nothing is read or downloaded.
            dtype: compute dtype, torch.float32 or torch.float16.
            seed: seed of the random weights.
            fingerprint: record the weights' sha256 in :attr:`source` (``weights_sha256``).

        Raises:
            UnknownBackboneError: an unknown backbone name.
            UsageError: not a Qwen2.5-VL backbone, or an odd frame count.
            CheckpointNotFoundError: a checkpoint that is neither local nor downloadable.
            ArtifactError: a checkpoint without the vision tensors, or one of the wrong shape.
        """
        from infomerge.backbones.registry import get_backbone

        bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
        with torch.device("meta"):
            enc = cls.for_backbone(bb, frames)
        if random_weights:
            enc.materialize()
            enc.init_random(seed)
            enc.source = {"weights": "random", "seed": seed}
        else:
            state, source = load_qwen_vision_state(bb, model_path, fingerprint=fingerprint)
            enc.materialize(state)
            enc.source = source
        enc.eval()
        if dtype != torch.float32:
            enc.to_compute_dtype(dtype)
        return enc

    def materialize(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Give a module built on the meta device CPU storage: the tensors of ``state`` (assigned,
        converted to float32), or uninitialised memory (for :meth:`init_random`); the grid
        constants are computed again.

        Raises:
            ArtifactError: ``state`` lacks a tensor or has one of the wrong shape.
        """
        if state is None:
            self.to_empty(device="cpu")
        else:
            self.check_state(state)
            own = self.state_dict()
            self.load_state_dict({k: state[k].to(v.dtype) for k, v in own.items()}, assign=True)
        self.image_newline = torch.zeros(self.config.out_hidden_size)
        self._grid_constants()

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """Every tensor of this module's state dict must be in ``state`` with the same shape.

        Raises:
            ArtifactError: a missing tensor or a wrong shape (names the likely wrong ``--backbone``).
        """
        from infomerge.errors import ArtifactError

        own = self.state_dict()
        name = self.backbone.name if self.backbone is not None else "this"
        missing = sorted(set(own) - set(state))
        if missing:
            raise ArtifactError(
                f"checkpoint lacks {len(missing)} of the Qwen2.5-VL vision tensors backbone {name!r} "
                f"needs (e.g. {missing[:3]}): wrong --backbone, or not a Qwen2.5-VL checkpoint?"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ArtifactError(
                    f"checkpoint tensor visual.{k} has shape {tuple(state[k].shape)}, backbone {name!r} "
                    f"expects {tuple(v.shape)}: wrong --backbone for this checkpoint?"
                )

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """Deterministic random weights: normal std 0.02 for matrices and biases, RMSNorm gains
        1 + 0.1 N(0, 1) (what ``Qwen2_5_VLPreTrainedModel`` draws, with the gains randomised)."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)

    # --- precision ------------------------------------------------------------------------------
    def to_compute_dtype(self, dtype: torch.dtype) -> QwenVisionEncoder:
        """Cast every parameter to ``dtype`` in place except the RMSNorm weights (float32)."""
        for name, p in self.named_parameters():
            if "norm" in name or "ln_q" in name:
                continue
            p.data = p.data.to(dtype)
        self.compute_dtype = dtype
        return self

    # --- forward --------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixel_values (F, 3, h, w) float32 -> H (L, N, D), A (L, N) fp32, g (L, D) fp32, then
        the :attr:`extra_outputs` in order (see the module docstring).

        Raises:
            ValueError: an unknown name in ``extra_outputs``.
        """
        unknown = set(self.extra_outputs) - set(EXTRA_OUTPUTS)
        if unknown:
            raise ValueError(f"unknown vision outputs {sorted(unknown)}; known: {EXTRA_OUTPUTS}")
        g = self.grid
        x = patchify(pixel_values, g)[:, self.patch_order]  # (L, S, 1176), window order
        w = self.patch_embed.proj.weight  # (C, 3, 2, 14, 14): the Conv3d is a MatMul on a patch
        x = F.linear(x.to(self.compute_dtype), w.reshape(w.shape[0], -1))  # (L, S, C)
        for i, blk in enumerate(self.blocks[:-1]):
            x = self._block(blk, x, full=i in self.fullatt)
        x, stats = self._last_block(x)
        x = rms_norm(x, self.merger.ln_q).reshape(
            -1, self.merger.hidden_size
        )  # (L*N, 4C): a merge unit a row
        h = self.merger.mlp(x).reshape(-1, g.tokens, self.config.out_hidden_size)
        h = h[:, self.raster_order]  # (L, N, D), raster order
        glob = h.float().mean(dim=1)  # (L, D): FastVID's frame_global_features
        return (h, stats["A"], glob, *(stats[n] for n in self.extra_outputs))

    def _qkv(self, blk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (L, S, C) normed -> q, k, v (L, heads, S, head_dim), k and v before RoPE."""
        qkv = blk.attn.qkv(x).reshape(-1, self.grid.patches, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _rope(self, t: torch.Tensor) -> torch.Tensor:
        """2D rotary embedding, computed in float32 (transformers' ``apply_rotary_pos_emb_vision``)."""
        f = t.float()
        return (f * self.cos + rotate_half(f, self.head_dim // 2) * self.sin).to(t.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full: bool) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim) [+ window mask]) v over (L, heads, S, head_dim).

        Full blocks: over the whole temporal group. Window blocks: inside each window (reshape into
        equal windows, or the additive block-diagonal mask). fp16 on the CPU writes the softmax out
        in float32 (the exported fp16 graph never normalises in fp16), like the SigLIP encoder.
        """
        mask = None
        if not full:
            if self.equal_windows:  # (L, heads, windows, n, head_dim)
                n = self.window_sizes[0]
                q, k, v = (
                    t.reshape(-1, self.heads, len(self.window_sizes), n, self.head_dim) for t in (q, k, v)
                )
            else:
                mask = self.window_mask
        if q.dtype == torch.float32 or q.is_cuda:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), scale=self.head_dim**-0.5
            )
        else:
            s = torch.matmul(q, k.transpose(-1, -2)).float() * self.head_dim**-0.5
            if mask is not None:
                s = s + mask
            o = torch.matmul(s.softmax(dim=-1).to(v.dtype), v)
        return o.reshape(-1, self.heads, self.grid.patches, self.head_dim)

    def _block(self, blk: nn.Module, x: torch.Tensor, full: bool) -> torch.Tensor:
        """One ``Qwen2_5_VLVisionBlock`` on x (L, S, C), window order."""
        q, k, v = self._qkv(blk, rms_norm(x, blk.norm1))
        o = self._attend(self._rope(q), self._rope(k), v, full)
        x = x + blk.attn.proj(o.transpose(1, 2).reshape(-1, self.grid.patches, self.config.hidden_size))
        return x + blk.mlp(rms_norm(x, blk.norm2))

    def _last_block(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The last block, and the statistics read from its attention: ``A`` (L, N) (always), and
        ``attention`` / ``keys`` when named in :attr:`extra_outputs`; all raster order, float32."""
        g, blk = self.grid, self.blocks[-1]
        full = len(self.blocks) - 1 in self.fullatt
        q, k, v = self._qkv(blk, rms_norm(x, blk.norm1))
        qr, kr = self._rope(q), self._rope(k)
        unit = g.merge * g.merge
        scale = 1.0 / math.sqrt(self.head_dim)
        # A (FastVID): mean query per group and head onto merge-unit-mean keys, softmax over N
        q_mean = qr.float().mean(dim=2, keepdim=True)  # (L, heads, 1, hd)
        k_unit = kr.float().reshape(-1, self.heads, g.tokens, unit, self.head_dim).mean(dim=3)
        a = (torch.matmul(q_mean, k_unit.transpose(-1, -2)) * scale).softmax(dim=-1)  # (L, heads, 1, N)
        stats = {"A": a.mean(dim=1)[:, 0][:, self.raster_order]}
        if "attention" in self.extra_outputs:  # FlashVID: attention received, per group
            p = (torch.matmul(qr.float(), kr.float().transpose(-1, -2)) * scale).softmax(
                dim=-1
            )  # (L, h, S, S)
            received = p.mean(dim=1).mean(dim=1)  # (L, S)
            stats["attention"] = received.reshape(-1, g.tokens, unit).mean(dim=-1)[:, self.raster_order]
        if "keys" in self.extra_outputs:  # [D] keys before RoPE (position-free), mean over heads
            kk = k.float().mean(dim=1).reshape(-1, g.tokens, unit, self.head_dim).mean(dim=2)
            stats["keys"] = kk[:, self.raster_order]
        o = self._attend(qr, kr, v, full)
        x = x + blk.attn.proj(o.transpose(1, 2).reshape(-1, self.grid.patches, self.config.hidden_size))
        return x + blk.mlp(rms_norm(x, blk.norm2)), stats


def visual_key(key: str) -> str | None:
    """Checkpoint key -> :class:`QwenVisionEncoder` key: ``model.visual.X`` (transformers 5) or
    ``visual.X`` (the published checkpoints) -> ``X``; None for every other tensor (not read)."""
    for prefix in ("model.visual.", "visual."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def load_qwen_vision_state(
    backbone: Backbone, model_path: str | Path | None = None, *, fingerprint: bool = True
) -> tuple[dict[str, torch.Tensor], dict]:
    """The vision tensors of a Qwen2.5-VL checkpoint (keys as ``model.visual``'s), and their source.

    Returns:
        (state dict in the checkpoint's dtype, source info for the manifest: checkpoint, revision,
        ``weights_sha256`` (None without ``fingerprint``), tensors read).

    Raises:
        CheckpointNotFoundError: as :func:`~infomerge.backbones.loading.resolve_checkpoint`.
        ArtifactError: no ``visual.*`` tensor in the checkpoint.
    """
    from infomerge.backbones.loading import (
        _read_with_files,
        cached_tensors_sha256,
        checkpoint_revision,
        resolve_checkpoint,
    )
    from infomerge.errors import ArtifactError

    ckpt = resolve_checkpoint(backbone, model_path)
    state, read, files = _read_with_files(ckpt, visual_key)
    if not state:
        raise ArtifactError(f"{ckpt}: no visual.* tensors found; is it a Qwen2.5-VL checkpoint?")
    source = {
        "checkpoint": backbone.hf_id if model_path is None and backbone.hf_id else str(ckpt),
        "checkpoint_dir": str(ckpt),
        "revision": checkpoint_revision(ckpt),
        "weights_sha256": cached_tensors_sha256(state, files, read) if fingerprint else None,
        "tensors_read": len(read),
    }
    return state, source


__all__ = [
    "EXTRA_OUTPUTS",
    "QwenGrid",
    "QwenVisionEncoder",
    "load_qwen_vision_state",
    "patchify",
    "rms_norm",
    "rotate_half",
    "visual_key",
]
