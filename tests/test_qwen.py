"""Qwen2.5-VL (``tiny-qwen``) against Hugging Face, computed independently.

- preprocessing: the patch order == a loop over Qwen's (l, i, j, mi, mj) layout; the pixel values
  == transformers' Qwen2-VL processor on real frames (torchvision's video processor when installed,
  else the PIL image processor, whose bicubic differs by a few uint8 levels);
- compression off: greedy tokens and logits == ``Qwen2_5_VLForConditionalGeneration.generate`` on the
  same patches (HF expands ``<|video_pad|>``, runs its vision tower, ``masked_scatter``s and computes
  its own M-RoPE positions with ``get_rope_index``);
- compression on: the positions == HF ``get_rope_index`` of the UNCOMPRESSED prompt restricted to the
  kept tokens; the torch LLM's logits == a plain HF forward with the same spliced embeddings and
  (3, 1, T) positions, decoding from the uncompressed prompt's next position;
- every registered method runs on ``tiny-qwen`` or is refused with a clear error; odd frame counts
  are refused; ``--llm ort`` without an exported LLM names the export (the ORT LLM itself:
  tests/test_llm_ort_qwen.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infomerge.errors import UsageError
from infomerge.runtime.pipeline import Pipeline
from infomerge.video import read_video, sample_video
from infomerge.video.qwen_preprocess import qwen_patchify, qwen_preprocess, second_per_grid

STEPS = 5
TOL = 2e-6  # as tests/test_runtime_hf.py: logits, not just tokens
PROMPT = "What is happening in this video?"


@pytest.fixture(scope="module")
def pipe():
    from infomerge.compress.methods import method_names, vision_outputs_of

    # every method's optional vision outputs (attention, keys), so with_compression() serves them all
    return Pipeline.from_backbone(
        "tiny-qwen", compress_backend="none", vision_outputs=vision_outputs_of(method_names())
    )


@pytest.fixture(scope="module")
def decoded(pipe):
    return pipe.decode(sample_video())


@pytest.fixture(scope="module")
def hf(pipe):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(pipe.info["checkpoint"]).eval()


def _hf_inputs(pipe, decoded, prompt):
    """What ``Qwen2_5_VLProcessor`` gives for this video and prompt, built by hand (its video
    processor needs torchvision): ``<|video_pad|>`` repeated L*h*w/4 times, token types, patches."""
    bb = pipe.backbone
    pad = pipe.tokenizer.convert_ids_to_tokens(bb.video_token_id)
    text = pipe.prompt_ids(prompt).text.replace(pad, pad * bb.video_tokens_for(pipe.frames))
    ids = pipe.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    patches, grid = qwen_patchify(decoded.pixel_values)
    clip = decoded.clip
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == bb.video_token_id).to(torch.int32) * 2,  # video == 2
        "pixel_values_videos": patches,
        "video_grid_thw": torch.tensor([grid]),
        "second_per_grid_ts": torch.tensor(
            [second_per_grid(clip.total_frames, clip.fps, len(clip.indices))], dtype=torch.float32
        ),
    }


def _our_greedy(pipe, asm, steps):
    logits = [torch.from_numpy(pipe.prefill(asm, steps))]
    tokens = []
    for i in range(steps):
        masked = logits[-1].clone()
        if pipe.suppress_ids is not None:
            masked[torch.from_numpy(pipe.suppress_ids)] = -torch.inf
        tokens.append(int(masked.argmax()))
        if i < steps - 1:
            logits.append(torch.from_numpy(pipe.llm.step(tokens[-1], asm.next_position + i)))
    return tokens, torch.stack(logits)


# --- preprocessing ----------------------------------------------------------------------------
def test_patchify_order_equals_a_loop():
    """Row (l, i, j, mi, mj) holds patch (row 2i + mi, column 2j + mj) of frames 2l, 2l + 1, laid
    out (channel, frame, y, x): Qwen2VLVideoProcessor.patchify's permute, written as a loop."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 56, 84, generator=g)  # F = 4 -> L = 2; 4 x 6 patches, 2 x 3 merged
    got, grid = qwen_patchify(x)
    assert grid == (2, 4, 6) and got.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    rows = []
    for t in range(2):
        for i in range(2):
            for j in range(3):
                for mi in range(2):
                    for mj in range(2):
                        r, c = (2 * i + mi) * 14, (2 * j + mj) * 14
                        patch = x[2 * t : 2 * t + 2, :, r : r + 14, c : c + 14]  # (frame, channel, y, x)
                        rows.append(patch.permute(1, 0, 2, 3).reshape(-1))
    assert torch.equal(got, torch.stack(rows))
    # an odd frame count repeats the last frame (the processor's padding)
    odd, grid = qwen_patchify(x[:3])
    assert grid == (2, 4, 6) and torch.equal(odd, qwen_patchify(torch.cat([x[:3], x[2:3]]))[0])


def test_preprocess_equals_hf_processor_on_real_frames():
    """Resize to the fixed size, 1/255, CLIP mean/std: == transformers' Qwen2-VL processor output on
    bigbuckbunny frames at a size its smart_resize picks (so that both resize to the same shape)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
        smart_resize,
    )

    frames = read_video(sample_video(), 4).frames  # (4, 720, 1280, 3) uint8
    pixels = 224 * 336
    height, width = smart_resize(*frames.shape[1:3], factor=28, min_pixels=pixels, max_pixels=pixels)
    ours = qwen_preprocess(frames, height, width)
    assert ours.shape == (4, 3, height, width)
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    except ImportError:  # no torchvision: PIL's bicubic (uint8 passes) differs by a few levels
        Qwen2VLVideoProcessor = None
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    if Qwen2VLVideoProcessor is not None:
        proc = Qwen2VLVideoProcessor(size=size, do_sample_frames=False, cap_pixels_per_frame=False)
        out = proc(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt")
        assert torch.equal(out["video_grid_thw"][0], torch.tensor([2, height // 14, width // 14]))
        torch.testing.assert_close(out["pixel_values_videos"], qwen_patchify(ours)[0], atol=1e-5, rtol=0)
        return
    proc = Qwen2VLImageProcessorPil(size=size)
    for f in range(4):  # one image = one temporal patch of two equal frames
        out = proc(images=frames[f], return_tensors="pt")
        want = out["pixel_values"]
        assert torch.equal(out["image_grid_thw"][0], torch.tensor([1, height // 14, width // 14]))
        got = qwen_patchify(ours[f : f + 1].expand(2, -1, -1, -1))[0]
        diff = (got - want).abs()
        level = 1 / 255 / 0.2613  # one uint8 level in normalised units (smallest std)
        assert diff.max() <= 6 * level and diff.mean() <= 0.25 * level, (diff.max(), diff.mean())


def test_preprocess_refuses_bad_sizes():
    frames = np.zeros((2, 30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="multiples of 28"):
        qwen_preprocess(frames, 30, 56)
    with pytest.raises(ValueError, match="uint8"):
        qwen_preprocess(frames.astype(np.float32), 28, 28)


# --- Hugging Face equivalence ------------------------------------------------------------------
def test_uncompressed_greedy_equals_hf_generate(pipe, decoded, hf):
    prompt = "Describe the video in detail."
    features = pipe.encode(decoded.pixel_values)
    assert features.H.shape == (8, 96, 64)  # L = 16 / 2 groups, 8 x 12 merged tokens, D
    asm = pipe.assemble(pipe.compress(features), prompt, decoded)
    ours, our_logits = _our_greedy(pipe, asm, STEPS)

    inputs = _hf_inputs(pipe, decoded, prompt)
    assert inputs["input_ids"].shape[1] == asm.length
    with torch.inference_mode():
        out = hf.generate(
            **inputs,
            max_new_tokens=STEPS,
            do_sample=False,
            suppress_tokens=None if pipe.suppress_ids is None else pipe.suppress_ids.tolist(),
            output_logits=True,
            return_dict_in_generate=True,
        )
        # HF's own positions of the prompt (what generate used) == ours, all kept
        hf_pos, delta = hf.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
        )
    assert torch.equal(asm.position_ids, hf_pos)
    assert asm.next_position == int(delta) + asm.length  # decoding continues as HF's rope_deltas say
    theirs = out.sequences[0, asm.length :].tolist()
    n = len(theirs)
    assert ours[:n] == theirs
    assert n == STEPS or theirs[-1] in pipe.llm.eos_token_ids
    torch.testing.assert_close(our_logits[:n], torch.cat(out.logits).float(), atol=TOL, rtol=0)
    answer = pipe.generate(decoded, prompt, max_new_tokens=STEPS)
    assert answer.token_ids == theirs


def test_compressed_positions_and_logits_equal_hf(pipe, decoded, hf):
    from infomerge.compress.methods import get_method
    from infomerge.runtime.backends.torch import TorchCompressor

    features = pipe.encode(decoded.pixel_values)
    kept = TorchCompressor(get_method("fastvid"), get_method("fastvid").config(0.15))(features)
    asm = pipe.assemble(kept, PROMPT, decoded)
    t, a, total = len(asm.prompt.before), len(asm.prompt.after), 8 * 96
    assert asm.video_tokens == len(kept.index) < total
    assert asm.position_ids.shape == (3, 1, t + len(kept.index) + a)

    # independent: HF's get_rope_index of the uncompressed prompt, columns of the kept rows
    inputs = _hf_inputs(pipe, decoded, PROMPT)
    with torch.inference_mode():
        full, delta = hf.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
        )
    cols = torch.cat([torch.arange(t), t + kept.index, torch.arange(t + total, t + total + a)])
    assert torch.equal(asm.position_ids, full[:, :, cols])
    assert asm.next_position == int(full.max()) + 1 == int(delta) + t + total + a

    tokens, ours = _our_greedy(pipe, asm, STEPS)
    embeds, positions = asm.inputs_embeds, asm.position_ids
    wrong = []  # text-style positions 0..T-1 for every row: must differ by far more than TOL
    with torch.inference_mode():
        for i in range(STEPS):
            logits = hf(inputs_embeds=embeds, position_ids=positions).logits  # no cache, full pass
            torch.testing.assert_close(ours[i], logits[0, -1].float(), atol=TOL, rtol=0)
            flat = torch.arange(embeds.shape[1]).view(1, 1, -1).expand(3, 1, -1)
            flat_logits = hf(inputs_embeds=embeds, position_ids=flat).logits[0, -1]
            wrong.append((ours[i] - flat_logits).abs().max().item())
            nxt = hf.get_input_embeddings()(torch.tensor([[tokens[i]]]))
            embeds = torch.cat([embeds, nxt], dim=1)
            p = asm.next_position + i
            positions = torch.cat([positions, torch.full((3, 1, 1), p)], dim=2)
    assert max(wrong) > 50 * TOL


def test_every_method_runs(pipe, decoded):
    """Every registered method compresses, assembles and prefills on tiny-qwen (VisionZip, FlashVID
    and HoliTom read qwen_vision's last-block ``attention`` / ``keys``)."""
    from infomerge.compress.methods import method_names

    features = pipe.encode(decoded.pixel_values)
    assert set(features.extra) == {"attention", "keys"}
    for name in method_names():
        p = pipe.with_compression(name, 0.15)
        kept = p.compress(features)
        asm = p.assemble(kept, PROMPT, decoded)
        assert 0 < asm.video_tokens < 8 * 96, name
        logits = p.prefill(asm, 2)
        assert np.isfinite(logits).all(), name


def test_method_without_its_vision_outputs_is_refused(monkeypatch):
    """A method whose vision outputs the Qwen2.5-VL stage lacks is refused before anything loads,
    naming them and the methods that run (the rule that held before qwen_vision had them)."""
    from infomerge.backbones.family import get_family

    monkeypatch.setattr(get_family("qwen2_5_vl"), "vision_outputs", ())
    with pytest.raises(UsageError, match="visionzip.*attention, keys.*use one of: infomerge, fastvid"):
        Pipeline.from_backbone("tiny-qwen", method="visionzip")


def test_unified_inner_merge_runs_on_qwen_positions(pipe, decoded):
    """Unified's inner-LLM merge (torch LLM) works on Qwen's contiguous video rows and keeps the
    merged rows' (t, h, w) positions."""
    p = pipe.with_compression("unified", 0.15)
    asm = p.assemble(p.compress(p.encode(decoded.pixel_values)), PROMPT, decoded)
    inner = p.inner_merge(asm)
    assert inner is not None and inner.start == len(asm.prompt.before)
    logits = p.prefill(asm, 2)
    assert np.isfinite(logits).all() and p.llm.last_merge is not None
    assert np.isfinite(p.llm.step(int(np.argmax(logits)), asm.next_position)).all()


def test_refusals_name_what_is_missing():
    with pytest.raises(UsageError, match="temporal patches of 2"):
        Pipeline.from_backbone("tiny-qwen", frames=15)


def test_export_options_accept_the_genai_llm_for_qwen():
    """`--llm int4|fp32` passes the option checks on Qwen2.5-VL backbones (it was refused while the
    graph took 1D position_ids); the build itself: tests/test_llm_ort_qwen.py."""
    from infomerge.export.options import ExportOptions

    for backbone in ("tiny-qwen", "qwen2.5-vl-3b", "qwen2.5-vl-7b"):
        for llm in ("int4", "fp32"):
            ExportOptions(backbone=backbone, llm=llm, random_weights=backbone != "tiny-qwen").check()


def test_cli_llm_ort_without_artifacts_names_the_export(capsys):
    from infomerge.runtime.cli import main

    assert main(["--backbone", "tiny-qwen", "--llm", "ort"]) == 2  # no --artifacts: usage, as on LLaVA
    err = capsys.readouterr().err
    assert "infomerge-export --backbone tiny-qwen --llm int4" in err


def test_infomerge_bench_tiny_qwen(tmp_path, capsys):
    """`infomerge-bench --backbone tiny-qwen`: torch rows measured (visual tokens counted by hand);
    ort rows (exported vision, compress and int4 M-RoPE LLM) measured and cross-checked against
    torch; the hf row unavailable with its reason."""
    import json

    from infomerge.bench.cli import RESULTS_JSON, main

    out = tmp_path / "out"
    argv = ["--backbone", "tiny-qwen", "--frames", "4", "--retention", "1.0", "0.15"]
    argv += ["--method", "fastvid", "visionzip", "--backends", "torch", "ort", "hf", "--runs", "1"]
    argv += ["--warmup", "0", "--ttft-runs", "1", "--decode-tokens", "2", "--output", str(out)]
    argv += ["--work", str(tmp_path / "work")]
    assert main(argv) == 0
    data = json.loads((out / RESULTS_JSON).read_text())
    rows = {(r["backend"], r["method"], r["retention"]): r for r in data["rows"]}
    base, comp = rows[("torch", "none", 1.0)], rows[("torch", "fastvid", 0.15)]
    assert base["status"] == comp["status"] == "ok"
    assert base["visual_tokens"] == 2 * 8 * 12  # 4 frames -> 2 temporal groups of 8 x 12 merged tokens
    assert 0 < comp["visual_tokens"] < 0.25 * base["visual_tokens"]
    assert comp["flops"]["nominal_tokens"] == round(0.15 * 2 * 96)
    assert rows[("torch", "visionzip", 0.15)]["status"] == "ok"  # reads qwen_vision's attention, keys
    for key in (("ort", "none", 1.0), ("ort", "fastvid", 0.15), ("ort", "visionzip", 0.15)):
        ort = rows[key]
        assert ort["status"] == "ok" and ort["check"]["ok"], key  # vision, kept indices, prefill logits
        assert ort["visual_tokens"] == rows[("torch", *key[1:])]["visual_tokens"]
    assert data["config"]["llm_precision"] == "int4"
    assert any((tmp_path / "work").rglob("llm/model.onnx"))  # the ORT LLM was exported
    assert rows[("hf", "-", None)]["status"] == "unavailable"


def test_random_weight_qwen_checkpoint_runs(tmp_path):
    """A random-weight Qwen2.5-VL checkpoint (the writer of `--random-weights`, here at tiny-qwen's
    sizes) loads in HF and runs through the pipeline with the tiny Qwen tokenizer's ids."""
    import json

    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.backbones.random_weights import _is_complete, write_qwen
    from infomerge.backbones.registry import get_backbone

    out = tmp_path / "ckpt"
    out.mkdir()
    write_qwen(out, get_backbone("tiny-qwen"), seed=3, device="cpu")
    assert _is_complete(out, siglip_head=False) and not (out / "siglip_head").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["video_token_id"], cfg["vision_start_token_id"]) == ("qwen2_5_vl", 6, 3)
    Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    p = Pipeline.from_backbone("tiny-qwen", model_path=out, method="fastvid")
    answer = p.generate(sample_video(), PROMPT, max_new_tokens=2)
    assert len(answer.token_ids) >= 1 and answer.timings.uncompressed_video_tokens == 8 * 96


def test_exported_graphs_run_as_torch(tmp_path):
    """`infomerge-export --backbone tiny-qwen` (4 frames, FastVID) then the runtime on its ORT vision
    and compress graphs with the torch LLM: the same features, kept indices and greedy tokens as the
    all-torch pipeline."""
    from infomerge.export.cli import main

    out = tmp_path / "art"
    argv = ["--backbone", "tiny-qwen", "--frames", "4", "--method", "fastvid", "--output", str(out)]
    assert main(argv) == 0
    ort = Pipeline.from_artifacts(out, llm="torch")
    assert (ort.info["vision_backend"], ort.info["compress_backend"], ort.frames) == ("ort", "ort", 4)
    ref = Pipeline.from_backbone("tiny-qwen", method="fastvid", frames=4)
    video = ref.decode(sample_video())
    fa, ft = ort.encode(video.pixel_values), ref.encode(video.pixel_values)
    assert fa.H.shape == ft.H.shape == (2, 96, 64)
    torch.testing.assert_close(fa.H, ft.H, atol=1e-5, rtol=0)
    torch.testing.assert_close(fa.A, ft.A, atol=1e-6, rtol=0)
    assert torch.equal(ort.compress(fa).index, ref.compress(ft).index)
    a, b = ort.generate(video, PROMPT, max_new_tokens=3), ref.generate(video, PROMPT, max_new_tokens=3)
    assert a.token_ids == b.token_ids and torch.equal(a.position_ids, b.position_ids)
