"""The vision encoder graph: frames -> (H, A, g), export-friendly, fp32 or fp16.

``VisionEncoder.forward(pixel_values)`` with ``pixel_values`` (F, 3, 384, 384) float32 returns

- ``H`` (F, 196, D): the SigLIP tower output (26 layers, BEFORE post_layernorm), projected
  (Linear - exact GELU - Linear) and pooled 27x27 -> 14x14 with bilinear interpolation
  (``align_corners=False``): Hugging Face ``LlavaOnevisionModel.get_video_features`` without the
  trailing newline. dtype = the encoder's compute dtype (float16 in fp16 mode, else float32);
- ``A`` (F, 196) float32: the SigLIP MAP head's probe attention over the 729 patches, averaged
  over heads, reshaped 27x27 and bilinearly resized to 14x14 (FastVID's saliency);
- ``g`` (F, G) float32: the MAP head's pooled output (G = 1152 for so400m), FastVID's global
  feature. The head runs on ``post_layernorm`` of the same 26-layer output.

Source: the LLaVA-OneVision pipeline (arXiv 2408.03326; summary in ``docs/export.md``);
transformers ``modeling_siglip`` (``SiglipEncoderLayer``,
``SiglipMultiheadAttentionPoolingHead``) and ``modeling_llava_onevision`` (``apply_pooling``),
which the tests compare against.

LLaVA-Video (``backbone.pool == "average"``): the same, pooled 27x27 -> 13x13 by 2 x 2 averaging
(LLaVA-NeXT ``get_2dPool``, ``mm_spatial_pool_mode="average"``), N = 169; ``A`` and the optional
outputs are pooled the same way (FastVID's LLaVA-Video code pools its saliency with
``avg_pool2d`` too).

Export notes: every reshape keeps the frame axis as ``-1`` (the traced graph is frame-count
agnostic, see :mod:`infomerge.export.onnx_export`); the bilinear pooling is a constant (196, 729)
matrix, so it exports as one MatMul (exactly ``F.interpolate``'s map); the tower's attention is
``F.scaled_dot_product_attention`` (see ``_Attention.forward``); the attention weights are written
out only where they are an output: the MAP head's probe attention (``A``) and
:meth:`VisionEncoder.last_layer_stats`. The MLPs' and the projector's Linear + GELU run as one
oneDNN kernel in eager CPU inference (:func:`linear_gelu`); a traced graph records the plain ops.

fp16 mode: tower and projector weights and activations are float16; LayerNorm (its statistics
overflow in fp16 once |x| > 256) and softmax run in float32 with float32 parameters; the SigLIP
head branch (about 15 M parameters at full size) runs entirely in float32, so ``A`` and ``g`` are
fp32 islands.

Optional outputs (``VisionEncoder.extra_outputs``, :data:`EXTRA_OUTPUTS`), for methods that
declare them: ``attention`` (F, 196) and ``keys`` (F, 196, head_dim) float32, the last tower
layer's self-attention received and keys, pooled like ``A``.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from infomerge.backbones.registry import Backbone

#: optional vision outputs (:attr:`VisionEncoder.extra_outputs`): name -> what it is
EXTRA_OUTPUTS = {
    "attention": "(F, 196) float32: last tower layer's attention received (mean over heads and queries)",
    "keys": "(F, 196, head_dim) float32: last tower layer's keys (mean over heads)",
}


def bilinear_pool_matrix(side_in: int = 27, side_out: int = 14) -> torch.Tensor:
    """(side_out^2, side_in^2) float32 matrix P with ``P @ x.flatten() == interpolate(x).flatten()``.

    ``x`` is one side_in x side_in channel; the interpolation is
    ``F.interpolate(mode="bilinear", align_corners=False)`` (what HF ``apply_pooling`` uses).
    """
    # on the CPU whatever the default device (a module built on the meta device keeps real values)
    eye = torch.eye(side_in * side_in, dtype=torch.float64, device="cpu").reshape(-1, 1, side_in, side_in)
    out = F.interpolate(eye, size=(side_out, side_out), mode="bilinear", align_corners=False)
    return out.reshape(side_in * side_in, side_out * side_out).T.contiguous().to(torch.float32)


def average_pool_matrix(side_in: int = 27, side_out: int = 13) -> torch.Tensor:
    """(side_out^2, side_in^2) float32 matrix P with ``P @ x.flatten() == avg_pool2d(x, 2).flatten()``.

    LLaVA-NeXT ``get_2dPool`` with ``mm_spatial_pool_mode="average"`` (LLaVA-Video): 2 x 2 windows,
    stride 2, no padding, so a 27 x 27 grid gives 13 x 13 and the last row and column are dropped.

    Raises:
        ValueError: ``side_out != side_in // 2``.
    """
    if side_out != side_in // 2:
        raise ValueError(f"2 x 2 average pooling maps side {side_in} to {side_in // 2}, not {side_out}")
    eye = torch.eye(side_in * side_in, dtype=torch.float64, device="cpu").reshape(-1, 1, side_in, side_in)
    out = F.avg_pool2d(eye, kernel_size=2, stride=2)
    return out.reshape(side_in * side_in, side_out * side_out).T.contiguous().to(torch.float32)


def pool_matrix(mode: str, side_in: int, side_out: int) -> torch.Tensor:
    """The (side_out^2, side_in^2) pooling map of ``mode`` (``"bilinear"`` or ``"average"``).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "bilinear":
        return bilinear_pool_matrix(side_in, side_out)
    if mode == "average":
        return average_pool_matrix(side_in, side_out)
    raise ValueError(f"unknown pooling mode {mode!r}; use 'bilinear' or 'average'")


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm computed in float32 (fp32 parameters), result in the input dtype."""
    y = F.layer_norm(x.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
    return y.to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        self.dim, self.tokens = dim, tokens  # static sizes: no Shape ops in the exported graph
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """(F, N, C) -> (F, heads, N, head_dim)."""
        return proj(x).reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (F, N, C)
        """softmax(q k^T / sqrt(head_dim)) v per head (SigLIP's eager attention, without weights).

        fp32, or any tensor on a GPU: ``F.scaled_dot_product_attention`` (the library's fused
        kernels, flash attention on CUDA; exported at opset 17 as MatMul - Softmax - MatMul).
        fp16 on the CPU (the fp16 ONNX export traces this): written out with the softmax in fp32,
        so the exported graph never normalises in fp16.
        """
        q, k, v = self._heads(self.q_proj, x), self._heads(self.k_proj, x), self._heads(self.v_proj, x)
        if x.dtype == torch.float32 or x.is_cuda:
            o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (F, heads, N, head_dim)
        else:
            p = torch.matmul(q * self.scale, k.transpose(-1, -2)).float().softmax(dim=-1).to(x.dtype)
            o = torch.matmul(p, v)
        return self.out_proj(o.transpose(1, 2).reshape(-1, self.tokens, self.dim))

    def received_and_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (F, N, C) (the layer-normed layer input) -> (attention received (F, N) float32: the
        softmax attention onto each token averaged over heads and over all N queries; keys
        (F, N, head_dim) float32: ``k_proj(x)`` averaged over heads, unscaled)."""
        n = self.tokens
        q = (self.q_proj(x) * self.scale).reshape(-1, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(-1, n, self.heads, self.head_dim).transpose(1, 2)
        p = torch.matmul(q, k.transpose(-1, -2)).float().softmax(dim=-1)  # (F, heads, N, N)
        return p.mean(dim=1).mean(dim=1), k.float().mean(dim=1)


def _has_fused_linear_gelu() -> bool:
    """oneDNN's fused linear + pointwise kernel is in this torch build, on an x86-64 CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - absent from builds without oneDNN
    except (AttributeError, RuntimeError):
        return False
    return True


_FUSED_LINEAR_GELU = _has_fused_linear_gelu()


def _fused_linear_gelu_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear_gelu` may call oneDNN's fused kernel for this input.

    Only in eager inference on an x86-64 CPU (where it was measured), float32 or bfloat16 input of
    the weight's dtype, with no autograd (the op has no derivative) and outside every tracer:
    ``torch.jit`` tracing (so the project's ONNX export, ``dynamo=False``), ``torch.compile`` and
    ``torch.export`` see the plain Linear + GELU (Inductor fuses on its own; the ONNX graph keeps
    standard ops). ``torch.onnx`` is not consulted: touching it imports it (17 ms of start-up).
    """
    return (
        _FUSED_LINEAR_GELU
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


def linear_gelu(x: torch.Tensor, linear: nn.Linear, approximate: str = "none") -> torch.Tensor:
    """``F.gelu(linear(x), approximate=approximate)``, fused on the CPU in inference.

    x (..., C_in) -> (..., C_out), x's dtype. Eager inference on an x86-64 CPU calls oneDNN's
    ``mkldnn::_linear_pointwise`` (the kernel Inductor's CPU lowering uses): the bias and the GELU
    are the GEMM's post-ops, so the (F, P, hidden) activation is written once instead of three
    times (bias broadcast into the output, GEMM, then a separate GELU pass). Same result up to
    float rounding (max |diff| 5e-6 on the ov-0.5b tower's H); measured in docs/benchmarks.md
    ("Torch vision against Hugging Face: profile"). Elsewhere (grad, GPU, tracing, export,
    compile) the plain ops: the exported graph is unchanged.

    Source: SigLIP's MLP (``SiglipMLP``: fc1, ``gelu_pytorch_tanh``, fc2) and LLaVA's projector
    (``LlavaOnevisionMultiModalProjector``: linear_1, exact GELU, linear_2) in transformers.
    """
    if _fused_linear_gelu_applies(x, linear.weight):
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], approximate)
    return F.gelu(linear(x), approximate=approximate)


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear_gelu(x, self.fc1, approximate="tanh"))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float, tokens: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = _Attention(dim, heads, tokens)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(_layer_norm(x, self.layer_norm1))
        return x + self.mlp(_layer_norm(x, self.layer_norm2))


class _Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, num_patches: int):
        super().__init__()
        self.dim, self.num_patches = dim, num_patches
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        # zeros, not nn.Embedding's normal_ init: on the meta device normal_ runs torch's Python
        # reference, which imports torch._dynamo (4 s); the weights come from the checkpoint
        self.position_embedding = nn.Embedding(num_patches, dim, _weight=torch.zeros(num_patches, dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (F, 3, S, S) -> (F, P, C)
        x = self.patch_embedding(pixel_values).reshape(-1, self.dim, self.num_patches).transpose(1, 2)
        return x + self.position_embedding.weight.to(x.dtype)


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class SiglipTower(nn.Module):
    """SigLIP vision transformer without post_layernorm and head (parameter names as HF)."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.embeddings = _Embeddings(bb.vision_hidden, bb.patch, bb.num_patches)
        self.encoder = _Encoder(
            [
                _EncoderLayer(
                    bb.vision_hidden,
                    bb.vision_heads,
                    bb.vision_intermediate,
                    bb.vision_layer_norm_eps,
                    bb.num_patches,
                )
                for _ in range(bb.vision_layers)
            ]
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return x


class Projector(nn.Module):
    """LLaVA's multimodal projector: Linear(G -> D), exact GELU, Linear(D -> D)."""

    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(linear_gelu(x, self.linear_1))


class _MAPHead(nn.Module):
    """SigLIP's multihead attention pooling head, with its probe attention made explicit.

    Parameter names are those of ``SiglipMultiheadAttentionPoolingHead`` (``nn.MultiheadAttention``
    packs q, k, v into ``in_proj_weight`` (3G, G) / ``in_proj_bias`` (3G,)).
    """

    def __init__(self, dim: int, heads: int, hidden: int, eps: float, tokens: int):
        super().__init__()
        self.dim, self.tokens = dim, tokens
        self.heads, self.head_dim = heads, dim // heads
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.Module()
        self.attention.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.attention.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.attention.out_proj = nn.Linear(dim, dim)
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (F, P, G) float32 -> (pooled (F, G), head-averaged probe attention (F, P))."""
        g, p = self.dim, self.tokens
        w, b = self.attention.in_proj_weight, self.attention.in_proj_bias
        q = F.linear(self.probe, w[:g], b[:g]).reshape(1, self.heads, 1, self.head_dim)
        k = F.linear(x, w[g : 2 * g], b[g : 2 * g]).reshape(-1, p, self.heads, self.head_dim).transpose(1, 2)
        v = F.linear(x, w[2 * g :], b[2 * g :]).reshape(-1, p, self.heads, self.head_dim).transpose(1, 2)
        attn = (torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)).softmax(dim=-1)  # (F, h, 1, P)
        o = torch.matmul(attn, v).transpose(1, 2).reshape(-1, 1, g)
        o = self.attention.out_proj(o)
        o = o + self.mlp(self.layernorm(o))
        return o[:, 0], attn.mean(dim=1)[:, 0]


class SiglipHead(nn.Module):
    """post_layernorm + MAP head of the original SigLIP (``vision_model.post_layernorm`` / ``.head``)."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.post_layernorm = nn.LayerNorm(bb.vision_hidden, eps=bb.vision_layer_norm_eps)
        self.head = _MAPHead(
            bb.vision_hidden,
            bb.vision_heads,
            bb.vision_intermediate,
            bb.vision_layer_norm_eps,
            bb.num_patches,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.post_layernorm(x))


class VisionEncoder(nn.Module):
    """Frames -> (H, A, g) for one backbone (see the module docstring for shapes and dtypes).

    Attributes:
        backbone: the :class:`Backbone` it was built for.
        compute_dtype: torch.float32 or torch.float16: dtype of the tower, projector and ``H``.
        vision_tower, multi_modal_projector, siglip_head: the three parts (HF parameter names).
        image_newline: (D,) float32 buffer, the LLaVA newline embedding.
        pool: (N, 729) float32 buffer: the bilinear 27x27 -> 14x14 map (N = 196), or the 2 x 2
            average 27x27 -> 13x13 map (N = 169) for ``backbone.pool == "average"`` (LLaVA-Video).
        extra_outputs: names of optional outputs :meth:`forward` returns after (H, A, g), in
            order, from :data:`EXTRA_OUTPUTS` (default none: the default graph).
    """

    def __init__(self, backbone: Backbone, dtype: torch.dtype = torch.float32):
        super().__init__()
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        self.backbone = backbone
        self.compute_dtype = torch.float32
        self.vision_tower = SiglipTower(backbone)
        self.multi_modal_projector = Projector(backbone.vision_hidden, backbone.text_hidden)
        self.siglip_head = SiglipHead(backbone)
        self.register_buffer("image_newline", torch.zeros(backbone.text_hidden), persistent=True)
        self.register_buffer(
            "pool", pool_matrix(backbone.pool, backbone.patch_side, backbone.pooled_side), persistent=False
        )
        self.extra_outputs: tuple[str, ...] = ()
        if dtype == torch.float16:
            self.to_compute_dtype(torch.float16)

    # --- precision ---------------------------------------------------------------------------
    def to_compute_dtype(self, dtype: torch.dtype) -> VisionEncoder:
        """Cast tower + projector weights to ``dtype`` in place; LayerNorms and the head stay fp32."""
        for mod in (self.vision_tower, self.multi_modal_projector):
            for sub in mod.modules():
                if isinstance(sub, nn.LayerNorm):
                    continue
                for p in sub.parameters(recurse=False):
                    p.data = p.data.to(dtype)
        self.compute_dtype = dtype
        return self

    # --- forward -----------------------------------------------------------------------------
    def tower(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(F, 3, S, S) float32 -> 26-layer output before post_layernorm (F, 729, G), compute dtype."""
        return self.vision_tower(pixel_values.to(self.compute_dtype))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixel_values (F, 3, 384, 384) float32 -> H (F, 196, D), A (F, 196) fp32, g (F, G) fp32,
        then the :attr:`extra_outputs` (see :meth:`last_layer_stats`), computed in the same pass.

        Raises:
            ValueError: an unknown name in ``extra_outputs``.
        """
        if self.extra_outputs:
            unknown = set(self.extra_outputs) - set(EXTRA_OUTPUTS)
            if unknown:
                raise ValueError(f"unknown vision outputs {sorted(unknown)}; known: {EXTRA_OUTPUTS}")
            x, stats = self._tower_and_stats(pixel_values)
            return (*self._heads(x), *(stats[n] for n in self.extra_outputs))
        return self._heads(self.tower(pixel_values))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.multi_modal_projector(x)  # (F, 729, D)
        h = torch.matmul(self.pool.to(h.dtype), h)  # (F, 196, D)
        g, attn = self.siglip_head(x.float())
        a = torch.matmul(attn, self.pool.T)  # (F, 196)
        return h, a, g

    def last_layer_stats(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The last tower layer's self-attention statistics, pooled to the token grid like ``H``.

        Optional vision outputs (:meth:`forward` appends those named in :attr:`extra_outputs`):
        VisionZip's "attention received"
        and "keys" in LLaVA-OneVision's video form (HoliTom's code, ``visionzip/``): the last of
        the 26 layers, attention averaged over heads and queries, keys averaged over heads, both
        bilinearly pooled 27x27 -> 14x14.

        Args:
            pixel_values: (F, 3, 384, 384) float32.

        Returns:
            ``{"attention": (F, 196) float32, "keys": (F, 196, head_dim) float32}``.
        """
        return self._tower_and_stats(pixel_values)[1]

    def _tower_and_stats(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.vision_tower.embeddings(pixel_values.to(self.compute_dtype))
        layers = self.vision_tower.encoder.layers
        for layer in layers[:-1]:
            x = layer(x)
        last = layers[-1]
        received, keys = last.self_attn.received_and_keys(_layer_norm(x, last.layer_norm1))
        stats = {"attention": torch.matmul(received, self.pool.T), "keys": torch.matmul(self.pool, keys)}
        return last(x), stats

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone: Backbone | str,
        model_path: str | Path | None = None,
        *,
        random_weights: bool = False,
        dtype: torch.dtype = torch.float32,
        siglip_path: str | Path | None = None,
        seed: int = 0,
        fingerprint: bool = True,
    ) -> VisionEncoder:
        """Build the encoder of ``backbone`` with its weights (or random ones).

        Only the vision tower, projector and ``image_newline`` tensors are read from the LLaVA
        checkpoint (never the language model's), and post_layernorm + head from the SigLIP
        checkpoint; see :func:`infomerge.backbones.loading.load_vision_state`. The module is built
        on the meta device and the checkpoint's tensors assigned to it (:meth:`on_meta`,
        :meth:`materialize`): nothing is initialised only to be overwritten.

        Args:
            backbone: a :class:`Backbone` or its registry name.
            model_path: local checkpoint directory (default: the hub id, or the built tiny one).
            random_weights: full-size random weights from ``seed``; nothing is read or downloaded.
            dtype: compute dtype, torch.float32 or torch.float16 (see the module docstring).
            siglip_path: local directory of the SigLIP head checkpoint (default: ``siglip_head/``
                inside ``model_path`` when present, else ``backbone.siglip_head_id``).
            seed: seed of the random weights.
            fingerprint: record the weights' sha256 in :attr:`source` (``weights_sha256``; an
                export's manifest needs it, a run does not: None when off).

        Raises:
            UnknownBackboneError: an unknown backbone name.
            CheckpointNotFoundError: a checkpoint that is neither local nor downloadable.
            ArtifactError: a checkpoint that lacks a tensor the encoder needs, or has the wrong shape.
        """
        from infomerge.backbones.loading import load_vision_state
        from infomerge.backbones.registry import get_backbone

        bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
        if random_weights:
            enc = cls.on_meta(bb)
            enc.materialize()
            enc.init_random(seed)
            enc.source = {"weights": "random", "seed": seed}
        else:
            state, source = load_vision_state(
                bb, model_path, siglip_path=siglip_path, fingerprint=fingerprint
            )
            enc = cls.on_meta(bb)
            enc.materialize(state)
            enc.source = source
        enc.eval()
        if dtype != torch.float32:
            enc.to_compute_dtype(dtype)
        return enc

    @classmethod
    def on_meta(cls, backbone: Backbone) -> VisionEncoder:
        """The float32 encoder of ``backbone`` with every parameter on the meta device: built in
        milliseconds (no random initialisation of 400 M parameters); :meth:`materialize` gives it
        storage."""
        with torch.device("meta"):
            return cls(backbone)

    def materialize(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Give an encoder from :meth:`on_meta` CPU storage: the tensors of ``state`` (assigned, not
        copied; converted to float32 where the checkpoint has another dtype), or uninitialised
        memory when ``state`` is None (for :meth:`init_random`). The pooling matrix is computed.

        Raises:
            ArtifactError: ``state`` lacks a tensor or has one of the wrong shape (see
                :meth:`check_state`).
        """
        if state is None:
            self.to_empty(device="cpu")
        else:
            own = self.state_dict()
            self.check_state(state)
            self.load_state_dict({k: state[k].to(v.dtype) for k, v in own.items()}, assign=True)
        bb = self.backbone
        self.pool = pool_matrix(bb.pool, bb.patch_side, bb.pooled_side)  # non-persistent buffer

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """Every key of this module's state dict must be in ``state``, with the same shape
        (extra keys are ignored).

        Raises:
            ArtifactError: a missing tensor or a wrong shape (names the likely wrong ``--backbone``).
        """
        from infomerge.errors import ArtifactError

        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ArtifactError(
                f"checkpoint lacks {len(missing)} of the vision tensors backbone {self.backbone.name!r} "
                f"needs (e.g. {missing[:3]}): wrong --backbone for this checkpoint, or not a "
                "LLaVA-OneVision checkpoint?"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ArtifactError(
                    f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, the backbone "
                    f"{self.backbone.name!r} expects {tuple(v.shape)}: wrong --backbone for this checkpoint?"
                )

    def load_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a state dict with this module's keys into it (any float dtype, converted to the
        parameters' dtype; every key required, shapes checked (:meth:`check_state`); extra keys
        ignored)."""
        self.check_state(state)
        with torch.no_grad():  # in place, one tensor at a time: no second full-size copy
            for k, v in self.state_dict().items():
                v.copy_(state[k])

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """Deterministic random weights (normal std 0.02 for matrices, randomised LayerNorms)."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("probe"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif "position_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        self.image_newline.copy_(
            torch.randn(self.image_newline.shape, generator=gen) / math.sqrt(self.backbone.text_hidden)
        )


__all__ = [
    "EXTRA_OUTPUTS",
    "Projector",
    "SiglipHead",
    "SiglipTower",
    "VisionEncoder",
    "average_pool_matrix",
    "bilinear_pool_matrix",
    "linear_gelu",
    "pool_matrix",
]
