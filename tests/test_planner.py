"""infomerge-plan: memory plans checked against hand calculations.

The two hand calculations below write every term out from the published model dimensions
(SigLIP so400m/14-384 with 26 layers; Qwen2-7B and Qwen2-0.5B; docs/export.md) and the
formulas stated in infomerge/jetson/planner.py's docstring. They do not call the planner's helpers.
"""

from __future__ import annotations

import json

import pytest

from infomerge.backbones.registry import get_backbone
from infomerge.errors import BudgetError, UnknownBackboneError
from infomerge.jetson.devices import DEVICES, MIB, UnknownDeviceError, get_device
from infomerge.jetson.planner import (
    QUANTS,
    Assumptions,
    alternatives,
    kv_cache_bytes,
    largest_frames,
    largest_retention,
    llm_weight_bytes,
    main,
    plan_memory,
    qwen_vision_params,
    vision_params,
)


def rows(plan):
    return {r.name: r for r in plan.rows}


# SigLIP so400m/14-384, 26 layers (both backbones), by hand
D_V, FF_V, L_V, H_V = 1152, 4304, 26, 16
T = (384 // 14) ** 2  # 729 patches
LAYER_V = 4 * (D_V * D_V + D_V) + (D_V * FF_V + FF_V + FF_V * D_V + D_V) + 4 * D_V
TOWER = 3 * 14 * 14 * D_V + D_V + T * D_V + L_V * LAYER_V + 2 * D_V
HEAD = D_V + (3 * D_V * D_V + 3 * D_V) + (D_V * D_V + D_V) + 2 * D_V + (D_V * FF_V + FF_V + FF_V * D_V + D_V)


def test_siglip_counts_match_the_published_size():
    # so400m: ~428M parameters with 27 layers and the head; our tower has 26 layers
    assert TOWER + HEAD + LAYER_V == pytest.approx(428.2e6, rel=1e-3)
    assert TOWER == 397_747_744 and HEAD == 15_238_352


def test_hand_calculation_ov7b_int4_agx_orin_32gb():
    plan = plan_memory("ov-7b", "agx-orin-32gb", "int4", 0.15, 32)
    r = rows(plan)
    F, N, D = 32, 196, 3584

    # B: paper rule, T_s = floor(0.6 * 0.15 * 196) = 17 per frame, context round(0.4*0.15*32*196)=376
    B = 32 * 17 + 376
    assert B == 920 and plan.tokens == B

    projector = D_V * D + D + D * D + D
    vision_weights = (TOWER + HEAD + projector + D) * 2
    attention = F * T * 4 * D_V * 2 + F * H_V * T * T * 4
    mlp = F * T * (2 * D_V + FF_V) * 2
    proj = F * T * (D_V + 2 * D) * 2 + F * N * D * 2
    assert attention > max(mlp, proj)
    assert (r["Vision engine"].weights, r["Vision engine"].runtime) == (vision_weights, attention)
    assert vision_weights == 859_941_344  # 429,970,672 parameters

    fn = F * N
    compression = fn * D * 2 + fn * D * 4 + fn * fn * 4 + B * fn * 2 + B * D * 2
    assert r["Compression engine"].total == compression

    # Qwen2-7B: 28 layers, d 3584, 28 heads x 128, 4 kv heads, d_ff 18944, vocab 152064, untied
    def int4(out_f, in_f):  # 4-bit weights + one fp16 scale per 32 inputs
        return out_f * in_f // 2 + out_f * (in_f // 32) * 2

    layer = (int4(3584, 3584) + int4(512, 3584) * 2 + int4(3584, 3584)
             + int4(18944, 3584) * 2 + int4(3584, 18944))
    other = (3584 + 512 + 512 + 2 * 3584) * 2
    llm = 28 * (layer + other) + 152064 * 3584 * 2 + int4(152064, 3584) + 3584 * 2
    assert r["LLM weights"].weights == llm == 5_067_697_152

    seq = B + 1 + 256
    assert plan.seq == seq == 1177
    assert r["KV cache"].runtime == 2 * 28 * 4 * 128 * seq * 2 == 67_493_888

    llm_act = seq * (2 * 3584 + max(2 * 3584 + 2 * 512, 3 * 18944)) * 2 + seq * 152064 * 2 + 256 * MIB
    assert r["LLM activations + workspace"].runtime == llm_act

    # reading the video: one 1080p frame in flight (3 B/pixel), 32 display copies of 1280x720, fp32 output
    overhead = 512 * MIB + 768 * MIB + 1920 * 1080 * 3 + 32 * 1280 * 720 * 3 + 32 * 3 * 384 * 384 * 4
    assert r["Runtime overhead"].runtime == overhead

    total = vision_weights + attention + compression + llm + 2 * 28 * 4 * 128 * seq * 2 + llm_act + overhead
    assert plan.total == total
    assert plan.usable == (30697 - 1024) * MIB
    assert plan.fits


def test_hand_calculation_llava_video_7b_grid_layout():
    # LLaVA-Video-7B: 64 frames, 2x2 average pooling 27 -> 13 (N = 169), a newline after every row
    plan = plan_memory("llava-video-7b", "agx-orin-32gb", "int4", 0.15)
    r = rows(plan)
    F, N, D = 64, 169, 3584
    # B: T_s = floor(0.6 * 0.15 * 169) = 15 per frame, context round(0.4 * 0.15 * 64 * 169) = 649
    B = 64 * 15 + 649
    assert B == 1609 and plan.tokens == B
    fn = F * N
    assert r["Compression engine"].total == fn * D * 2 + fn * D * 4 + fn * fn * 4 + B * fn * 2 + B * D * 2
    proj = F * T * (D_V + 2 * D) * 2 + F * N * D * 2
    assert r["Vision engine"].runtime == max(F * T * 4 * D_V * 2 + F * H_V * T * T * 4, proj)
    # newlines: one per row that keeps a token, at most all 64 x 13 rows
    seq = B + 64 * 13 + 256
    assert plan.seq == seq == 2697
    assert r["KV cache"].runtime == 2 * 28 * 4 * 128 * seq * 2
    # at r = 0.05 fewer tokens are kept (536) than there are rows: at most one newline per token
    assert plan_memory("llava-video-7b", "agx-orin-32gb", "int4", 0.05).seq == 536 * 2 + 256


def test_hand_calculation_qwen25vl_7b():
    """Qwen2.5-VL-7B: 32 frames at 336 x 588 -> 16 temporal groups of 24 x 42 patches, 12 x 21 = 252
    merged tokens each; the ViT (1280 wide, 32 blocks, SwiGLU 3420) by hand; no newline."""
    plan = plan_memory("qwen2.5-vl-7b", "agx-orin-32gb", "int4", 0.15)
    r = rows(plan)
    L, N, D, d, ff, P = 16, 252, 3584, 1280, 3420, 24 * 42
    # B: T_s = floor(0.6 * 0.15 * 252) = 22 per group, context round(0.4 * 0.15 * 16 * 252) = 242
    B = 16 * 22 + 242
    assert B == 594 and plan.tokens == B and plan.frames == 32
    block = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * (d * ff + ff) + ff * d + d
    merger = d + (4 * d) ** 2 + 4 * d + 4 * d * D + D
    assert r["Vision engine"].weights == (3 * 2 * 14 * 14 * d + 32 * block + merger) * 2
    assert r["Vision engine"].runtime == L * P * 4 * d * 2 + L * 16 * P * P * 4  # full-attention block
    fn = L * N
    assert r["Compression engine"].total == fn * D * 2 + fn * D * 4 + fn * fn * 4 + B * fn * 2 + B * D * 2
    assert plan.seq == B + 256  # no newline token
    assert r["KV cache"].runtime == 2 * 28 * 4 * 128 * (B + 256) * 2
    with pytest.raises(ValueError, match="temporal patches of 2"):
        plan_memory("qwen2.5-vl-7b", "agx-orin-32gb", "int4", 0.15, 31)
    assert largest_frames("qwen2.5-vl-3b", "orin-nano-8gb", "int4", 0.15) % 2 == 0


def test_hand_calculation_ov05b_fp32_rtx4060_with_options():
    a = Assumptions(text_tokens=128, logits="last", vision_batch=8)
    plan = plan_memory("ov-0.5b", "rtx-4060-8gb", "fp32", 0.10, 16, a)
    r = rows(plan)
    F, N, D = 16, 196, 896

    # T_s = floor(0.6 * 0.10 * 196) = 11 per frame, context round(0.4 * 0.10 * 16 * 196) = round(125.44)
    B = 16 * 11 + 125
    assert plan.tokens == B == 301

    projector = D_V * D + D + D * D + D
    vision_weights = (TOWER + HEAD + projector + D) * 2
    fv = 8  # --vision-batch 8
    attention = fv * T * 4 * D_V * 2 + fv * H_V * T * T * 4
    assert attention > fv * T * (2 * D_V + FF_V) * 2
    assert attention > fv * T * (D_V + 2 * D) * 2 + fv * N * D * 2
    assert (r["Vision engine"].weights, r["Vision engine"].runtime) == (vision_weights, attention)

    fn = F * N
    assert r["Compression engine"].runtime == fn * D * 2 + fn * D * 4 + fn * fn * 4 + B * fn * 2 + B * D * 2

    # Qwen2-0.5B: 24 layers, d 896, 14 heads x 64, 2 kv heads (kv width 128), d_ff 4864, vocab 151936,
    # lm_head tied to the embeddings (no extra bytes), all fp32 (infomerge-export --llm fp32)
    layer = (896 * 896 + 128 * 896 * 2 + 896 * 896 + 4864 * 896 * 3) * 4
    other = (896 + 128 + 128 + 2 * 896) * 4
    llm = 24 * (layer + other) + 151936 * 896 * 4 + 896 * 4
    assert r["LLM weights"].weights == llm
    assert llm // 4 == 494_032_768  # Qwen2-0.5B: 494M parameters

    seq = B + 1 + 128
    assert r["KV cache"].runtime == 2 * 24 * 2 * 64 * seq * 4  # fp32 cache
    assert r["LLM activations + workspace"].runtime == (
        seq * (2 * 896 + max(2 * 896 + 2 * 128, 3 * 4864)) * 2 + 151936 * 2 + 256 * MIB
    )
    # a discrete GPU: only the CUDA context; host memory is not GPU memory
    assert r["Runtime overhead"].runtime == 512 * MIB
    assert plan.usable == (8192 - 512) * MIB
    assert plan.fits


def test_formulas_agree_with_the_transformers_modules():
    """Independent check of the parameter formulas: instantiate the real modules on the meta device."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        LlavaOnevisionMultiModalProjector,
    )

    def numel(module):
        return sum(p.numel() for p in module.parameters())

    for name in ("tiny", "ov-0.5b"):
        bb = get_backbone(name)
        cfg = bb.llava_config()
        vc, tc = cfg.vision_config, cfg.text_config
        with torch.device("meta"):
            with_head = SiglipVisionConfig(**(vc.to_dict() | {"vision_use_head": True}))
            vision = SiglipVisionModel(with_head)
            projector = LlavaOnevisionMultiModalProjector(cfg)
            llm = Qwen2ForCausalLM(tc)
        vp = vision_params(vc, bb.siglip_head_config(), tc.hidden_size)
        assert vp["tower"] + vp["head"] == numel(vision), name
        assert vp["projector"] == numel(projector), name
        lw = llm_weight_bytes(tc, "fp32", tied=bb.tie_word_embeddings)
        assert sum(lw.values()) == 4 * numel(llm), name
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLTextModel,
    )

    for name in ("tiny-qwen", "qwen2.5-vl-3b"):
        bb = get_backbone(name)
        cfg = bb.qwen_config()
        with torch.device("meta"):
            vision = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg.vision_config)
            text = Qwen2_5_VLTextModel._from_config(cfg.text_config)
        assert sum(qwen_vision_params(cfg.vision_config).values()) == numel(vision), name
        lw = llm_weight_bytes(cfg.text_config, "fp32", tied=bb.tie_word_embeddings)
        head = 0 if bb.tie_word_embeddings else bb.text_vocab * bb.text_hidden
        assert sum(lw.values()) == 4 * (numel(text) + head), name


def test_kv_cache_formula():
    tc = get_backbone("ov-7b").llava_config().text_config
    assert kv_cache_bytes(tc, 1) == 2 * 28 * 4 * 128 * 2


def test_quantization_orders_llm_weights():
    sizes = [rows(plan_memory("ov-7b", "agx-orin-64gb", q))["LLM weights"].weights
             for q in ("fp32", "int4")]
    assert sizes[0] > sizes[1]


def test_largest_frames_and_retention_are_the_edge_of_fitting():
    f = largest_frames("ov-7b", "orin-nx-16gb", "int4", 0.15)
    assert f is not None and 32 <= f < 256
    assert plan_memory("ov-7b", "orin-nx-16gb", "int4", 0.15, f).fits
    assert not plan_memory("ov-7b", "orin-nx-16gb", "int4", 0.15, f + 1).fits

    r = largest_retention("ov-7b", "orin-nx-16gb", "int4", 64)
    assert r is not None and 0.15 <= r < 1.0
    assert plan_memory("ov-7b", "orin-nx-16gb", "int4", r, 64).fits
    assert not plan_memory("ov-7b", "orin-nx-16gb", "int4", round(r + 0.01, 2), 64).fits

    assert largest_frames("ov-7b", "orin-nano-8gb", "fp32", 0.15) is None


def test_device_table():
    for dev in DEVICES.values():
        assert 0 < dev.usable_mib < dev.visible_mib
    assert get_device("orin-nano-8gb").shared and not get_device("rtx-4090").shared
    with pytest.raises(UnknownDeviceError, match="orin-nano-8gb"):
        get_device("orin-nano-4gb")


def test_bad_inputs():
    with pytest.raises(UnknownBackboneError):
        plan_memory("ov-13b", "rtx-4090")
    with pytest.raises(BudgetError):
        plan_memory("ov-7b", "rtx-4090", retention=1.5)
    with pytest.raises(ValueError, match="quantization"):
        plan_memory("ov-7b", "rtx-4090", llm_quant="int3")


def test_cli_json_fits(capsys):
    assert main(["--device", "agx-orin-32gb", "--backbone", "ov-7b", "--llm-quant", "int4",
                 "--retention", "0.15", "--frames", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["tokens"] == 920 and out["largest_retention"] == 1.0
    assert out["total_bytes"] == plan_memory("ov-7b", "agx-orin-32gb", "int4", 0.15, 32).total


def test_cli_table_no_fit_and_verdict(capsys):
    assert main(["--device", "orin-nano-8gb", "--backbone", "ov-7b", "--llm-quant", "fp32"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "Vision engine" in out and "KV cache" in out
    assert "Largest frames that fit" in out and "with --llm-quant int4" in out


def test_cli_errors(capsys):
    assert main(["--backbone", "ov-7b"]) == 2
    assert "--device is required" in capsys.readouterr().err
    assert main(["--device", "rtx-4090", "--backbone", "nope"]) == 2
    assert "unknown backbone" in capsys.readouterr().err
    assert main(["--device", "rtx-4090", "--retention", "0"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--device", "orin-nano-4gb"])
    assert exc.value.code == 2
    assert main(["--list-devices"]) == 0
    assert "agx-orin-64gb" in capsys.readouterr().out


# ---- issue 18: quantizations the exporter builds, the 4K host memory, advice that shrinks ---------
def test_quantizations_are_the_exporters():
    from infomerge.export.cli import build_parser as export_parser

    llm = next(a for a in export_parser()._actions if "--llm" in a.option_strings)
    assert set(QUANTS) == set(llm.choices) - {"none"}
    for gone in ("fp16", "int8"):
        with pytest.raises(ValueError, match="int4, fp32"):
            plan_memory("ov-0.5b", "orin-nano-8gb", llm_quant=gone)
    with pytest.raises(SystemExit):
        main(["--device", "orin-nano-8gb", "--llm-quant", "fp16"])


def test_host_video_memory_counts_one_frame_in_flight():
    """Issue 16: frames are resized as they are decoded, so the source resolution costs one frame in
    flight (3 B/pixel, fitted) and each sampled frame a 1280-pixel display copy plus its fp32 output."""
    def video(size, frames=32):
        plan = plan_memory("ov-0.5b", "orin-nano-8gb", "int4", 0.15, frames, Assumptions(video_size=size))
        return rows(plan)["Runtime overhead"].runtime - (512 + 768) * MIB

    uhd, hd, sd = video((3840, 2160)), video((1920, 1080)), video((1280, 720))
    assert uhd - hd == (3840 * 2160 - 1920 * 1080) * 3  # both keep 1280x720 display copies
    assert uhd - video((3840, 2160), 8) == 24 * (1280 * 720 * 3 + 3 * 384 * 384 * 4)
    assert video((640, 360)) == 640 * 360 * 3 + 32 * (640 * 360 * 3 + 3 * 384 * 384 * 4)  # no downscale
    # measured (docs/video.md, "Memory"): peak RSS of reading 32 frames, 8K 779 MiB minus 720p 689
    # MiB; 4K 691 MiB (equal to 720p within the +-20 MiB noise)
    assert 0.8 * 90 * MIB <= video((7680, 4320)) - sd <= 1.3 * 90 * MIB
    assert uhd - sd <= 2 * 20 * MIB
    assert uhd < 0.1 * 32 * 3840 * 2160 * 18  # the old model: every frame at full resolution in fp32


@pytest.mark.parametrize("backbone", ["ov-0.5b", "ov-7b", "llava-video-7b"])
@pytest.mark.parametrize("device", ["orin-nano-8gb", "orin-nx-16gb", "rtx-4060-8gb"])
@pytest.mark.parametrize("quant", QUANTS)
def test_advice_never_suggests_something_bigger(backbone, device, quant):
    plan = plan_memory(backbone, device, quant, 0.25, None, Assumptions(video_size=(3840, 2160)))
    for flag, alt in alternatives(plan):
        assert alt.total < plan.total, f"{flag} grows {backbone} on {device}"
        assert "--vision-batch" not in flag and "--frames" not in flag  # nothing the exporter cannot build


def test_impossible_request_suggests_only_smaller_things(capsys):
    assert main(["--device", "orin-nano-8gb", "--backbone", "llava-video-7b", "--llm-quant", "fp32"]) == 1
    out = capsys.readouterr().out
    suggested = [ln.split("with ", 1)[1].split(":")[0] for ln in out.splitlines()
                 if ln.strip().startswith("with ")]
    assert "--llm-quant int4" in suggested and "--backbone ov-0.5b" in suggested
    big = plan_memory("llava-video-7b", "orin-nano-8gb", "fp32").total
    assert plan_memory("ov-0.5b", "orin-nano-8gb", "fp32").total < big
