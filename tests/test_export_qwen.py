"""``infomerge-export`` on ``tiny-qwen``: the static Qwen2.5-VL vision graph against transformers'
``model.visual`` on real frames (fp32 and fp16), the compress graph at L = F / 2 groups, the
unequal-window (mask) form, TensorRT-RTX engines, and the ORT vision backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from infomerge.artifacts.manifest import verify_manifest
from infomerge.backbones.registry import get_backbone
from infomerge.export import cli
from infomerge.export.validate import run_onnx
from infomerge.video import read_video, sample_video
from infomerge.video.qwen_preprocess import qwen_patchify, qwen_preprocess

F = 8  # frames of the test exports: L = 4 temporal groups
BB = get_backbone("tiny-qwen")
L, N, D = F // 2, BB.tokens_per_frame, BB.text_hidden


def _export(out: Path, *extra: str) -> Path:
    assert cli.main(["--backbone", "tiny-qwen", "--frames", str(F), "--output", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory) -> Path:
    """FlashVID reads the last block's attention: the vision graph carries it."""
    return _export(
        tmp_path_factory.mktemp("q") / "q32", "--method", "flashvid", "--retention", "0.25", "--fused"
    )


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "q16"
    return _export(out, "--fp16", "--engine", "rtx", "--compute-capability", "86", "--workspace", "512")


@pytest.fixture(scope="module")
def hf_visual():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.backbones.loading import resolve_checkpoint

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_checkpoint(BB)).model.visual.eval()


@pytest.fixture(scope="module")
def other_frames() -> torch.Tensor:
    """F frames of another clip than the export validated on, preprocessed as Qwen's processor."""
    clip = read_video(sample_video("bikes.mp4"), F)
    return qwen_preprocess(clip.frames, BB.frame_height, BB.frame_width)


def _hf_h(hf_visual, pv: torch.Tensor) -> torch.Tensor:
    """transformers' merged tokens (L, N, D) for ``pv``, fed the preprocessing's own patchify."""
    patches, thw = qwen_patchify(pv)
    with torch.no_grad():
        return hf_visual(patches, grid_thw=torch.tensor([thw])).pooler_output.reshape(L, N, D)


def test_graph_contract_and_validation(fp32_dir):
    m = verify_manifest(fp32_dir, backbone="tiny-qwen", frames=F)
    model = onnx.load(str(fp32_dir / "vision.onnx"))
    io = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert io == {
        "pixel_values": [F, 3, 224, 336],
        "H": [L, N, D],
        "A": [L, N],
        "g": [L, D],
        "attention": [L, N],
    }
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "NonZero", "Loop", "If"}, ops  # static: the window layout is constant
    big = [
        n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].t.raw_data
    ]
    keys = [(t.data_type, tuple(t.dims), t.raw_data) for t in big if len(t.raw_data) >= 1024]
    assert len(keys) == len(set(keys))  # each rotary table / mask stored once, not once per block
    for graph in ("vision", "compress", "vision_compress"):
        assert m["graphs"][graph]["validation"]["ok"], graph
    assert m["graphs"]["compress"]["inputs"]["H"]["shape"] == [L, N, D]


def test_vision_graph_equals_transformers_visual_on_another_clip(fp32_dir, hf_visual, other_frames):
    got, _, _ = run_onnx(fp32_dir / "vision.onnx", {"pixel_values": other_frames})
    want = _hf_h(hf_visual, other_frames)
    np.testing.assert_allclose(got["H"], want.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["g"], want.mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)  # FastVID's g
    np.testing.assert_allclose(got["A"].sum(-1), np.ones(L), rtol=1e-5)  # a softmax over N per group


def test_fp16_graph_close_to_transformers_fp32(fp16_dir, hf_visual, other_frames):
    m = verify_manifest(fp16_dir, backbone="tiny-qwen", frames=F)
    assert (
        m["graphs"]["vision"]["validation"]["ok"]
        and m["graphs"]["vision"]["outputs"]["H"]["dtype"] == "float16"
    )
    got, _, _ = run_onnx(fp16_dir / "vision.onnx", {"pixel_values": other_frames})
    want = _hf_h(hf_visual, other_frames).numpy()
    assert got["H"].dtype == np.float16 and np.isfinite(got["H"]).all()
    peak = np.abs(want).max()
    assert np.abs(got["H"].astype(np.float32) - want).max() <= 2e-2 * peak


def test_rtx_engines_build_for_the_qwen_graphs(fp16_dir):
    from infomerge.engines.metadata import EngineMetadata

    m = verify_manifest(fp16_dir, backbone="tiny-qwen", frames=F)
    eng = m["engines"]
    assert eng["flavour"] == "rtx" and set(eng["items"]) == {"vision.sm86", "compress.sm86"}
    meta = EngineMetadata.read(fp16_dir / eng["items"]["vision.sm86"]["metadata"])
    assert meta.inputs["pixel_values"]["shape"] == [F, 3, 224, 336] and meta.outputs["H"]["shape"] == [
        L,
        N,
        D,
    ]


def test_unequal_windows_export_as_a_mask(tmp_path, hf_visual):
    """140 x 196 pixels: 5 x 7 merged tokens, windows of 4 x 4, 4 x 3, 1 x 4, 1 x 3: the mask form,
    traced on 2 frames and pinned to 4, equal to transformers on real frames."""
    from infomerge.backbones.qwen_vision import QwenGrid, QwenVisionEncoder
    from infomerge.export.onnx_export import export_onnx

    grid = QwenGrid(4, 140, 196)
    enc = QwenVisionEncoder(hf_visual.config, grid).eval()
    enc.load_state_dict(hf_visual.state_dict())
    enc.extra_outputs = ("attention", "keys")
    assert not enc.equal_windows
    names = ("H", "A", "g", "attention", "keys")
    pinned = {"pixel_values": 4, **dict.fromkeys(names, 2)}
    path = export_onnx(
        enc, (torch.randn(2, 3, 140, 196),), tmp_path / "v.onnx", input_names=["pixel_values"],
        output_names=names, frames=pinned,
    )  # fmt: skip
    clip = read_video(sample_video("carphone_pristine.mp4"), 4)
    pv = qwen_preprocess(clip.frames, 140, 196)
    got, _, _ = run_onnx(path, {"pixel_values": pv})
    patches, thw = qwen_patchify(pv)
    with torch.no_grad():
        want = hf_visual(patches, grid_thw=torch.tensor([thw])).pooler_output.reshape(2, 35, D)
        ref = dict(zip(names, enc(pv)))
    np.testing.assert_allclose(got["H"], want.numpy(), rtol=1e-4, atol=1e-5)
    for k in ("A", "attention", "keys"):
        np.testing.assert_allclose(got[k], ref[k].numpy(), rtol=1e-4, atol=1e-6)


def test_ort_vision_backend_serves_the_qwen_graph(fp32_dir, other_frames):
    from infomerge.backbones.qwen_vision import QwenVisionEncoder
    from infomerge.runtime.backends import BackendSource, backend_factory

    vision = backend_factory("vision", "ort")(BackendSource(backbone=BB, artifacts=fp32_dir, frames=F))
    f = vision(other_frames)
    assert vision.extra_outputs == ("attention",) and not vision.any_frame_count
    enc = QwenVisionEncoder.from_backbone(BB, frames=F)
    enc.extra_outputs = ("attention",)
    with torch.no_grad():
        h, a, g, att = enc(other_frames)
    torch.testing.assert_close(f.H, h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f.A, a, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(f.extra["attention"], att, rtol=1e-4, atol=1e-7)


def test_odd_frame_count_is_refused_before_any_work(tmp_path, capsys):
    status = cli.main(["--backbone", "tiny-qwen", "--frames", "7", "--output", str(tmp_path / "x")])
    assert status == 2 and "even --frames" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
