"""The static-grid Qwen2.5-VL vision encoder against transformers' ``model.visual`` and against
loop implementations of FastVID's / FlashVID's Qwen2.5-VL statistics, on real frames."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import get_vision_window_index

from infomerge.backbones.qwen_vision import QwenGrid, QwenVisionEncoder, patchify
from infomerge.errors import UsageError
from infomerge.video import load_frames, sample_video

OUT = 48  # LLM width of the tiny config


def tiny_vision_config() -> Qwen2_5_VLVisionConfig:
    cfg = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=64,
        intermediate_size=96,
        num_heads=4,
        out_hidden_size=OUT,
        fullatt_block_indexes=[1, 3],
        window_size=112,
    )
    cfg._attn_implementation = "eager"
    return cfg


@pytest.fixture(scope="module")
def hf_visual() -> Qwen2_5_VisionTransformerPretrainedModel:
    torch.manual_seed(0)
    model = Qwen2_5_VisionTransformerPretrainedModel(tiny_vision_config()).eval()
    with torch.no_grad():  # RMSNorm weights away from 1 so a wrong norm shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """(4, 3, 224, 224) real frames of a bundled clip (2 temporal groups)."""
    return load_frames(sample_video("bikes.mp4"), frames=4, size=224)


def _encoder(hf_visual, grid: QwenGrid, extras=()) -> QwenVisionEncoder:
    enc = QwenVisionEncoder(hf_visual.config, grid).eval()
    enc.load_state_dict(hf_visual.state_dict())
    enc.extra_outputs = tuple(extras)
    return enc


# 224 x 224: 4 equal windows (reshape path); 140 x 196: unequal windows (mask path)
@pytest.mark.parametrize("size", [(224, 224), (140, 196)])
def test_h_equals_transformers_visual(hf_visual, frames, size):
    pv = frames[:, :, : size[0], : size[1]].contiguous()
    grid = QwenGrid(4, *size)
    enc = _encoder(hf_visual, grid)
    assert enc.equal_windows == (size == (224, 224))
    with torch.no_grad():
        h, a, g = enc(pv)
        want = hf_visual(patchify(pv, grid).reshape(-1, 1176), grid_thw=grid.grid_thw()).pooler_output
    assert h.shape == (2, grid.tokens, OUT) and a.shape == (2, grid.tokens) and g.shape == (2, OUT)
    torch.testing.assert_close(h.reshape(-1, OUT), want, rtol=1e-5, atol=1e-5)
    # g: FastVID's frame_global_features, the mean of each group's merged tokens
    torch.testing.assert_close(g, want.reshape(2, grid.tokens, OUT).mean(dim=1), rtol=1e-5, atol=1e-6)


def test_patchify_matches_the_processor_layout():
    """patchify == the loop definition of Qwen's processor layout (group, merge block, 2x2, c, t, 14, 14)."""
    grid = QwenGrid(4, 56, 84)
    pv = torch.randn(4, 3, 56, 84)
    got = patchify(pv, grid)
    rows = []
    for t in range(grid.groups):
        for bh in range(grid.grid_h // 2):
            for bw in range(grid.grid_w // 2):
                for mh in range(2):
                    for mw in range(2):
                        y, x = (2 * bh + mh) * 14, (2 * bw + mw) * 14
                        patch = pv[2 * t : 2 * t + 2, :, y : y + 14, x : x + 14]  # (2, 3, 14, 14)
                        rows.append(patch.permute(1, 0, 2, 3).reshape(-1))
    torch.testing.assert_close(got.reshape(-1, 1176), torch.stack(rows), rtol=0, atol=0)


def _last_block_inputs(hf_visual, pv, grid):
    """The last block's input (window order) and rotary tables, captured from transformers' forward."""
    seen = {}

    def hook(_mod, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        seen["pe"] = kwargs["position_embeddings"]

    handle = hf_visual.blocks[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_visual(patchify(pv, grid).reshape(-1, 1176), grid_thw=grid.grid_thw())
    finally:
        handle.remove()
    return seen["x"], seen["pe"]


def test_saliency_and_extras_equal_loop_references(hf_visual, frames):
    """A (FastVID), attention (FlashVID) and keys, computed here per group and head in loops from the
    last block's input that transformers' own forward feeds it."""
    grid = QwenGrid(4, 224, 224)
    enc = _encoder(hf_visual, grid, ("attention", "keys"))
    with torch.no_grad():
        _, a, _, att, keys = enc(frames)
        x, (cos, sin) = _last_block_inputs(hf_visual, frames, grid)
        blk = hf_visual.blocks[-1]
        heads, hd = enc.heads, enc.head_dim
        q, k, _ = blk.attn.qkv(blk.norm1(x)).reshape(-1, 3, heads, hd).unbind(1)  # (L*S, heads, hd)
        qr, kr = apply_rotary_pos_emb_vision(q, k, cos, sin)
    window_index, _ = get_vision_window_index(grid.grid_thw(), 2, 112, 14)
    back = torch.argsort(window_index)  # window order -> raster, over all L*N merged tokens
    s, n = grid.patches, grid.tokens
    want_a = torch.zeros(grid.groups * n)
    want_att = torch.zeros(grid.groups * n)
    want_keys = torch.zeros(grid.groups * n, hd)
    for t in range(grid.groups):
        rows = slice(t * s, (t + 1) * s)
        for h in range(heads):
            qh, kh = qr[rows, h], kr[rows, h]  # (S, hd)
            k_unit = torch.stack([kh[4 * j : 4 * j + 4].mean(0) for j in range(n)])  # (N, hd)
            logits = k_unit @ qh.mean(0) / math.sqrt(hd)
            want_a[t * n : (t + 1) * n] += logits.softmax(0) / heads
            p = (qh @ kh.T / math.sqrt(hd)).softmax(-1)  # (S, S): row = query
            recv = p.mean(0)
            want_att[t * n : (t + 1) * n] += (
                torch.stack([recv[4 * j : 4 * j + 4].mean() for j in range(n)]) / heads
            )
            kraw = k[rows, h]
            want_keys[t * n : (t + 1) * n] += (
                torch.stack([kraw[4 * j : 4 * j + 4].mean(0) for j in range(n)]) / heads
            )
    torch.testing.assert_close(a.reshape(-1), want_a[back], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(att.reshape(-1), want_att[back], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(keys.reshape(-1, hd), want_keys[back], rtol=1e-5, atol=1e-6)
    assert a.dtype == att.dtype == keys.dtype == torch.float32


def test_fp16_close_to_fp32(hf_visual, frames):
    grid = QwenGrid(4, 224, 224)
    ref = _encoder(hf_visual, grid)
    half = _encoder(hf_visual, grid).to_compute_dtype(torch.float16)
    with torch.no_grad():
        h32, a32, g32 = ref(frames)
        h16, a16, g16 = half(frames)
    assert h16.dtype == torch.float16 and a16.dtype == g16.dtype == torch.float32
    assert torch.isfinite(h16).all()
    torch.testing.assert_close(h16.float(), h32, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(a16, a32, rtol=2e-2, atol=2e-3)


def test_bad_grid_is_a_usage_error():
    with pytest.raises(UsageError, match="even frame count"):
        QwenGrid(3, 224, 224)
    with pytest.raises(UsageError, match="multiples of 28"):
        QwenGrid(4, 224, 200)


def test_from_backbone_tiny_qwen_equals_the_checkpoints_visual():
    """``from_backbone("tiny-qwen")`` (visual.* tensors only) == transformers' whole model loaded
    from the same checkpoint, its ``model.visual`` fed by the preprocessing's own patchify, on
    real frames preprocessed as Qwen's processor does; any even frame count runs."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.backbones.registry import get_backbone
    from infomerge.video import read_video
    from infomerge.video.qwen_preprocess import qwen_patchify, qwen_preprocess

    bb = get_backbone("tiny-qwen")
    enc = QwenVisionEncoder.from_backbone(bb, frames=4)
    assert enc.source["tensors_read"] > 0 and enc.image_newline.shape == (bb.text_hidden,)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_checkpoint(bb)).eval()
    clip = read_video(sample_video("carphone_pristine.mp4"), 6)
    pv = qwen_preprocess(clip.frames, bb.frame_height, bb.frame_width)
    with torch.no_grad():
        h, a, g = enc(pv)  # 6 frames on a module built for 4: the frame axis is free
        patches, thw = qwen_patchify(pv)
        want = model.model.visual(patches, grid_thw=torch.tensor([thw])).pooler_output
    assert h.shape == (3, bb.tokens_per_frame, bb.text_hidden)
    torch.testing.assert_close(h.reshape(-1, bb.text_hidden), want, rtol=1e-5, atol=1e-5)


def test_random_weights_are_deterministic():
    a = QwenVisionEncoder.from_backbone("tiny-qwen", frames=2, random_weights=True, seed=3)
    b = QwenVisionEncoder.from_backbone("tiny-qwen", frames=2, random_weights=True, seed=3)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert a.source == {"weights": "random", "seed": 3}
