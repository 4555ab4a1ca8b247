"""Backbone registry, the tiny checkpoint, partial checkpoint loading and the vision encoder.

The vision encoder is checked against Hugging Face's own modules: ``get_video_features`` of
``LlavaOnevisionModel`` for H and ``SiglipMultiheadAttentionPoolingHead`` (``nn.MultiheadAttention``
with its attention weights) for g and A, on frames of a real video.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from infomerge.backbones import loading, vision
from infomerge.backbones.registry import BACKBONES, TINY, get_backbone
from infomerge.backbones.tiny import SIGLIP_HEAD_SUBDIR, build_tiny_checkpoint, is_complete
from infomerge.backbones.vision import VisionEncoder, bilinear_pool_matrix, linear_gelu
from infomerge.errors import ArtifactError, CheckpointNotFoundError, UnknownBackboneError
from infomerge.video import load_frames, sample_video


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return build_tiny_checkpoint()


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return load_frames(sample_video(), frames=4)


# --- registry ----------------------------------------------------------------------------------
def test_registry_numbers_and_configs():
    assert set(BACKBONES) == {
        "tiny",
        "tiny-video",
        "ov-0.5b",
        "ov-7b",
        "llava-video-7b",
        "tiny-qwen",
        "qwen2.5-vl-3b",
        "qwen2.5-vl-7b",
    }
    ov7 = get_backbone("ov-7b")
    assert (ov7.text_hidden, ov7.text_layers, ov7.text_heads, ov7.text_kv_heads) == (3584, 28, 28, 4)
    assert (ov7.text_intermediate, ov7.text_vocab, ov7.frames, ov7.newline) == (18944, 152064, 32, "one")
    ov05 = get_backbone("ov-0.5b")
    assert (ov05.text_hidden, ov05.text_layers, ov05.text_heads, ov05.text_kv_heads) == (896, 24, 14, 2)
    assert (ov05.text_intermediate, ov05.text_vocab) == (4864, 151936)
    lv = get_backbone("llava-video-7b")
    # LLaVA-NeXT's LLaVA-Video evaluation: 64 frames, avg_pool2d stride 2 (27 -> 13), grid newlines
    assert (lv.frames, lv.newline, lv.pool, lv.text_hidden) == (64, "grid", "average", 3584)
    for bb in (b for b in BACKBONES.values() if b.family == "llava"):
        side = 13 if bb.pool == "average" else 14
        assert (bb.image_size, bb.patch, bb.patch_side, bb.pooled_side, bb.tokens_per_frame) == (
            384,
            14,
            27,
            side,
            side * side,
        )
    assert ov7.video_tokens == 32 * 196 + 1
    assert lv.video_tokens == 64 * 13 * 14 == 11648
    cfg = ov7.llava_config()
    assert cfg.vision_config.num_hidden_layers == 26 and cfg.vision_config.hidden_size == 1152
    assert cfg.vision_config.vision_use_head is False and cfg.vision_feature_layer == -1
    assert cfg.text_config.hidden_size == 3584 and cfg.text_config.num_key_value_heads == 4
    assert cfg.video_token_id == 151647
    head = ov7.siglip_head_config()
    assert head.vision_use_head and head.hidden_size == 1152 and head.num_attention_heads == 16
    assert ov7.siglip_head_id == "google/siglip-so400m-patch14-384"


def test_qwen_registry_numbers_and_configs():
    """Qwen2.5-VL entries: the published config.json numbers and the merged-token geometry by hand."""
    q7, q3, tiny = (get_backbone(n) for n in ("qwen2.5-vl-7b", "qwen2.5-vl-3b", "tiny-qwen"))
    assert all(b.family == "qwen2_5_vl" and b.newline == "none" for b in (q7, q3, tiny))
    # 336 x 588 px -> 24 x 42 patches of 14 -> 12 x 21 merged tokens; 32 frames -> 16 groups
    assert (q7.patch_grid, q7.token_grid, q7.tokens_per_frame) == ((24, 42), (12, 21), 252)
    assert (q7.groups_for(32), q7.video_tokens, q7.newline_tokens_for(32)) == (16, 16 * 252, 0)
    assert (tiny.token_grid, tiny.groups_for(tiny.frames), tiny.video_tokens) == ((8, 12), 8, 8 * 96)
    c7 = q7.hf_config()
    v, t = c7.vision_config, c7.text_config
    assert (v.depth, v.hidden_size, v.num_heads, v.intermediate_size) == (32, 1280, 16, 3420)
    assert (v.out_hidden_size, v.window_size, list(v.fullatt_block_indexes)) == (3584, 112, [7, 15, 23, 31])
    assert (t.hidden_size, t.num_hidden_layers) == (3584, 28)
    assert (t.num_attention_heads, t.num_key_value_heads) == (28, 4)
    assert (t.intermediate_size, t.vocab_size, v.tokens_per_second) == (18944, 152064, 2)
    assert t.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (c7.video_token_id, c7.vision_start_token_id, c7.vision_end_token_id) == (151656, 151652, 151653)
    c3 = q3.hf_config()
    t3 = c3.text_config
    assert (t3.hidden_size, t3.num_hidden_layers, t3.num_key_value_heads) == (2048, 36, 2)
    assert c3.vision_config.out_hidden_size == 2048 and c3.tie_word_embeddings
    # mrope_section must cover head_dim / 2 rotary pairs
    for b in (q7, q3, tiny):
        assert sum(b.mrope_section) == b.text_hidden // b.text_heads // 2
    with pytest.raises(ValueError, match="not a Qwen2.5-VL"):
        TINY.qwen_config()


def test_unknown_backbone_lists_choices():
    with pytest.raises(UnknownBackboneError) as exc:
        get_backbone("ov-13b")
    msg = str(exc.value)
    assert "ov-13b" in msg and all(name in msg for name in BACKBONES)


# --- tiny checkpoint ---------------------------------------------------------------------------
def test_tiny_checkpoint_loads_with_transformers(tiny_dir):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir)
    cfg = model.config
    assert cfg.vision_config.image_size == 384 and cfg.vision_config.patch_size == 14
    assert (
        cfg.vision_config.hidden_size == TINY.vision_hidden
        and cfg.text_config.hidden_size == TINY.text_hidden
    )
    assert cfg.text_config.num_key_value_heads == 2
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "<|im_start|>user\n<video>\nWhat is the rabbit doing? Ünïcode ✓ 3.14<|im_end|>\n"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<video>") == cfg.video_token_id == 4
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id == 3
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert max(ids) < cfg.text_config.vocab_size
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    for name in (
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        f"{SIGLIP_HEAD_SUBDIR}/config.json",
    ):
        assert (tiny_dir / name).is_file(), name


def test_tiny_checkpoint_is_deterministic_atomic_and_reused(tmp_path, tiny_dir):
    a = build_tiny_checkpoint(tmp_path / "a", seed=0)
    assert is_complete(a)
    assert (a / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_checkpoint(tmp_path / "a", seed=0) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    b = build_tiny_checkpoint(tmp_path / "b", seed=1)
    assert (b / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()


def test_cache_location_follows_env(tmp_path, monkeypatch):
    from infomerge.backbones.tiny import default_cache_dir

    monkeypatch.setenv("INFOMERGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tiny-v1"
    assert default_cache_dir(3) == tmp_path / "tiny-v1-seed3"


# --- vision encoder against Hugging Face ---------------------------------------------------------
def test_bilinear_pool_matrix_is_interpolate():
    x = torch.randn(3, 5, 27, 27, dtype=torch.float64)
    want = torch.nn.functional.interpolate(x, size=(14, 14), mode="bilinear", align_corners=False)
    got = (bilinear_pool_matrix().double() @ x.reshape(3, 5, 729, 1)).reshape(3, 5, 14, 14)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # fp32 matrix entries (k/28 sums)


@torch.no_grad()
@pytest.mark.parametrize("inference", [False, True], ids=["autograd", "inference-fused"])
def test_vision_encoder_matches_hf(tiny_dir, frames, inference):
    """With autograd on, the plain ops; in inference mode, the fused Linear + GELU on the CPU."""
    from safetensors.torch import load_file
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    enc = VisionEncoder.from_backbone("tiny")
    if inference:
        with torch.inference_mode():
            h, a, g = (t.clone() for t in enc(frames))
    else:
        h, a, g = enc(frames)
    assert (
        h.shape == (4, 196, TINY.text_hidden) and a.shape == (4, 196) and g.shape == (4, TINY.vision_hidden)
    )
    assert h.dtype == a.dtype == g.dtype == torch.float32

    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_dir).eval()
    out = hf.model.get_video_features(frames[None], output_hidden_states=True)
    ref_h = out.pooler_output[0, :-1].reshape(4, 196, -1)  # last token: the newline
    torch.testing.assert_close(h, ref_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(enc.image_newline, hf.model.image_newline.detach())

    cfg = TINY.siglip_head_config()
    sd = load_file(str(tiny_dir / SIGLIP_HEAD_SUBDIR / "model.safetensors"))
    head = SiglipMultiheadAttentionPoolingHead(cfg).eval()
    post = torch.nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    head.load_state_dict({k.removeprefix("vision_model.head."): v for k, v in sd.items() if ".head." in k})
    post.load_state_dict(
        {k.removeprefix("vision_model.post_layernorm."): v for k, v in sd.items() if "post_" in k}
    )
    tower = out.hidden_states[-1]  # 26-layer (here: last-layer) output BEFORE post_layernorm
    y = post(tower)
    torch.testing.assert_close(g, head(y), rtol=1e-4, atol=1e-5)
    _, w = head.attention(head.probe.repeat(4, 1, 1), y, y, need_weights=True, average_attn_weights=True)
    ref_a = torch.nn.functional.interpolate(
        w.reshape(4, 1, 27, 27), size=(14, 14), mode="bilinear", align_corners=False
    ).reshape(4, 196)
    torch.testing.assert_close(a, ref_a, rtol=1e-4, atol=1e-8)


def _gelu_by_hand(z: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU in float64 from its formulas (Hendrycks & Gimpel): exact erf form, or the tanh one."""
    z = z.double()
    if approximate == "tanh":
        return 0.5 * z * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_is_gelu_of_linear(approximate, dtype):
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(24, 40).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 24, generator=gen))
        lin.bias.copy_(torch.randn(40, generator=gen))
    x = torch.randn(3, 7, 24, generator=gen).to(dtype)
    z = x.double() @ lin.weight.double().T + lin.bias.double()  # (3, 7, 40)
    want = _gelu_by_hand(z, approximate)
    with torch.inference_mode():
        got = linear_gelu(x, lin, approximate)
    assert got.shape == (3, 7, 40) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (got.double() - want).abs().max() <= tol * want.abs().max()


@pytest.mark.skipif(not vision._FUSED_LINEAR_GELU, reason="no oneDNN fused linear on this build / CPU")
def test_linear_gelu_fuses_in_inference_only():
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(2, 8)

    def ops(fn) -> set[str]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        return {e.name for e in prof.events()}

    with torch.inference_mode():
        fused = ops(lambda: linear_gelu(x, lin, "tanh"))
    assert "mkldnn::_linear_pointwise" in fused and "aten::gelu" not in fused
    plain = ops(lambda: linear_gelu(x, lin, "tanh"))  # autograd on: plain ops
    assert "aten::gelu" in plain and "mkldnn::_linear_pointwise" not in plain
    # tracing (the ONNX export's path) records the standard ops even without autograd
    with torch.no_grad():
        graph = str(torch.jit.trace(vision._MLP(8, 16).eval(), x[:, None]).inlined_graph)
    assert "aten::gelu" in graph and "_linear_pointwise" not in graph


@torch.no_grad()
def test_fp16_encoder_on_real_frames(frames):
    ref = VisionEncoder.from_backbone("tiny")
    enc = VisionEncoder.from_backbone("tiny", dtype=torch.float16)
    h, a, g = enc(frames)
    assert (h.dtype, a.dtype, g.dtype) == (torch.float16, torch.float32, torch.float32)
    # fp32 islands: LayerNorms and the whole SigLIP head keep fp32 parameters
    assert enc.vision_tower.encoder.layers[0].layer_norm1.weight.dtype == torch.float32
    assert enc.siglip_head.head.attention.in_proj_weight.dtype == torch.float32
    assert enc.multi_modal_projector.linear_1.weight.dtype == torch.float16
    rh, ra, rg = ref(frames)
    for got, want in ((h.float(), rh), (a, ra), (g, rg)):
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= 1e-2 * want.abs().max()


def test_random_weights_full_size_shapes():
    enc = VisionEncoder.from_backbone("ov-0.5b", random_weights=True)
    n = sum(p.numel() for p in enc.parameters())
    assert 400e6 < n < 450e6  # so400m minus one layer, + head and a 0.5B projector
    assert enc.multi_modal_projector.linear_2.weight.shape == (896, 896)
    assert enc.image_newline.shape == (896,)
    assert enc.source == {"weights": "random", "seed": 0}
    a, b, c = (VisionEncoder.from_backbone("tiny", random_weights=True, seed=s) for s in (0, 0, 1))
    assert torch.equal(
        a.vision_tower.encoder.layers[0].mlp.fc1.weight, b.vision_tower.encoder.layers[0].mlp.fc1.weight
    )
    assert not torch.equal(
        a.vision_tower.encoder.layers[0].mlp.fc1.weight, c.vision_tower.encoder.layers[0].mlp.fc1.weight
    )


# --- loading -------------------------------------------------------------------------------------
def test_key_mapping_covers_every_layout():
    x = "encoder.layers.3.mlp.fc1.weight"
    for key in (
        f"vision_tower.vision_model.{x}",
        f"model.vision_tower.vision_model.{x}",
        f"model.vision_tower.{x}",
        f"vision_tower.{x}",
    ):
        assert loading.vision_key(key) == f"vision_tower.{x}"
    assert loading.vision_key("model.image_newline") == loading.vision_key("image_newline") == "image_newline"
    assert (
        loading.vision_key("model.multi_modal_projector.linear_1.bias")
        == "multi_modal_projector.linear_1.bias"
    )
    for key in (
        "language_model.model.layers.0.mlp.up_proj.weight",
        "model.language_model.embed_tokens.weight",
        "lm_head.weight",
        "language_model.lm_head.weight",
        "vision_tower.vision_model.post_layernorm.weight",
        "model.vision_tower.vision_model.embeddings.position_ids",
    ):
        assert loading.vision_key(key) is None, key
    assert loading.head_key("vision_model.head.probe") == "siglip_head.head.probe"
    assert loading.head_key("vision_model.post_layernorm.bias") == "siglip_head.post_layernorm.bias"
    assert loading.head_key("text_model.head.weight") is None
    assert loading.head_key("vision_model.encoder.layers.0.mlp.fc1.weight") is None


def _write_synthetic_7b_layout(root: Path, tiny_dir: Path, llm_mb: int, model_prefix: bool) -> int:
    """A sharded checkpoint: the tiny vision tensors under the llava-hf (or ``model.*``) key names,
    plus language-model tensors with the Qwen2-7B key names totalling ``llm_mb`` MiB."""
    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True)
    tiny = load_file(str(tiny_dir / "model.safetensors"))
    pre = "model." if model_prefix else ""
    shard1, shard2 = {}, {}
    for k, v in tiny.items():
        if k.startswith("vision_tower."):  # transformers-5 save: vision_tower.X -> hub layout
            shard1[f"{pre}vision_tower.vision_model.{k.removeprefix('vision_tower.')}"] = v
        elif k.startswith(("multi_modal_projector.", "image_newline")):
            shard1[pre + k] = v
    llm_prefix = "model.language_model." if model_prefix else "language_model.model."
    n_layers, per = 28, (llm_mb << 20) // 28 // 2 // 2  # fp16 elements per tensor, 2 tensors a layer
    llm_bytes = 0
    for i in range(n_layers):
        for name in ("mlp.gate_proj.weight", "self_attn.q_proj.weight"):
            t = torch.ones(per, dtype=torch.float16)
            (shard1 if i < 2 else shard2)[f"{llm_prefix}layers.{i}.{name}"] = t
            llm_bytes += t.numel() * 2
    shard2["lm_head.weight" if model_prefix else "language_model.lm_head.weight"] = torch.ones(
        1024, dtype=torch.float16
    )
    files = {"model-00001-of-00002.safetensors": shard1, "model-00002-of-00002.safetensors": shard2}
    weight_map = {}
    for fname, tensors in files.items():
        save_file(tensors, str(root / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in tensors})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text((tiny_dir / "config.json").read_text())
    return llm_bytes


@pytest.mark.parametrize("model_prefix", [False, True], ids=["llava-hf-layout", "transformers5-layout"])
def test_partial_load_reads_no_llm_tensor(tmp_path, tiny_dir, frames, monkeypatch, model_prefix):
    import safetensors

    ckpt = tmp_path / "ckpt"
    _write_synthetic_7b_layout(ckpt, tiny_dir, llm_mb=8, model_prefix=model_prefix)
    opened, read = [], []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, path, framework, device="cpu"):
            opened.append(Path(path).name)
            self._f = real_open(path, framework=framework, device=device)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def get_tensor(self, key):
            read.append(key)
            return self._f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    state, source = loading.load_vision_state("tiny", ckpt, siglip_path=tiny_dir / SIGLIP_HEAD_SUBDIR)
    assert read and not [k for k in read if "language_model" in k or "lm_head" in k]
    assert "model-00002-of-00002.safetensors" not in opened  # the LLM-only shard is never opened
    assert source["tensors_read"] == len(
        [k for k in read if "vision_model.head" not in k and "post_layernorm" not in k]
    )
    monkeypatch.undo()
    enc = VisionEncoder(TINY)
    enc.load_encoder_state(state)
    ref = VisionEncoder.from_backbone("tiny")
    with torch.no_grad():
        for got, want in zip(enc(frames), ref(frames)):
            torch.testing.assert_close(got, want)


def test_partial_load_memory_bound(tmp_path, tiny_dir):
    """Peak RSS while loading stays far below the LLM tensors' size (measured in a fresh process)."""
    ckpt = tmp_path / "ckpt"
    llm_bytes = _write_synthetic_7b_layout(ckpt, tiny_dir, llm_mb=768, model_prefix=False)
    code = textwrap.dedent(f"""
        import resource, json
        import torch, transformers  # noqa: F401  (imports count towards the baseline)
        from infomerge.backbones.loading import load_vision_state
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        head = {str(tiny_dir / SIGLIP_HEAD_SUBDIR)!r}
        state, _ = load_vision_state("tiny", {str(ckpt)!r}, siglip_path=head)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"delta_kb": peak - base, "n": len(state)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] > 0
    assert res["delta_kb"] * 1024 < 64 << 20, (
        f"loading grew RSS by {res['delta_kb'] / 1024:.0f} MiB (LLM: {llm_bytes >> 20} MiB)"
    )


def test_wrong_backbone_for_checkpoint_is_named(tiny_dir):
    import dataclasses

    state, _ = loading.load_vision_state("tiny", tiny_dir)
    wider = VisionEncoder(dataclasses.replace(TINY, name="tiny-wide", text_hidden=96))
    with pytest.raises(
        ArtifactError, match=r"image_newline has shape \(64,\), the backbone 'tiny-wide' expects \(96,\)"
    ):
        wider.load_encoder_state(state)
    deeper = VisionEncoder(dataclasses.replace(TINY, name="tiny-deep", vision_layers=3))
    with pytest.raises(ArtifactError, match="lacks .* tensors backbone 'tiny-deep' needs.*wrong --backbone"):
        deeper.load_encoder_state(state)


def test_missing_checkpoint_offline_names_it_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointNotFoundError) as exc:
        loading.resolve_checkpoint("ov-7b")
    assert "llava-hf/llava-onevision-qwen2-7b-ov-hf" in str(exc.value) and "--model-path" in str(exc.value)
    with pytest.raises(CheckpointNotFoundError, match="no such directory"):
        loading.resolve_checkpoint("ov-7b", tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="safetensors"):
        loading.resolve_checkpoint("ov-7b", empty)


def test_revision_from_snapshot_path(tmp_path):
    snap = tmp_path / "models--x" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    assert loading.checkpoint_revision(snap) == "ab" * 20
    assert loading.checkpoint_revision(tmp_path) is None


def test_tensors_sha256_is_order_free_and_sensitive():
    a = {"x": torch.ones(3), "y": torch.zeros(2, dtype=torch.float16)}
    b = {"y": torch.zeros(2, dtype=torch.float16), "x": torch.ones(3)}
    assert loading.tensors_sha256(a) == loading.tensors_sha256(b)
    b["x"] = torch.tensor([1.0, 1.0, np.nextafter(np.float32(1), np.float32(2))])
    assert loading.tensors_sha256(a) != loading.tensors_sha256(b)


def test_hub_cache_snapshot_is_found_offline_with_its_revision(tmp_path, tiny_dir, monkeypatch):
    """A checkpoint in the Hugging Face cache layout is used offline; a missing vision shard is named."""
    cache = tmp_path / "hub"
    repo = cache / "models--llava-hf--llava-onevision-qwen2-7b-ov-hf"
    commit = "c0ffee" + "0" * 34
    snap = repo / "snapshots" / commit
    _write_synthetic_7b_layout(snap, tiny_dir, llm_mb=1, model_prefix=False)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    path = loading.resolve_checkpoint("ov-7b")
    assert path.resolve() == snap.resolve() and loading.checkpoint_revision(path) == commit
    (snap / "model-00001-of-00002.safetensors").unlink()  # the shard with the vision tensors
    with pytest.raises(CheckpointNotFoundError, match="llava-onevision-qwen2-7b-ov-hf.*--model-path"):
        loading.resolve_checkpoint("ov-7b")
