"""``infomerge-export`` on the tiny backbone: the graph, its validation, the manifest, the errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from infomerge.artifacts.manifest import load_manifest, manifest_digest, sha256_file, verify_manifest
from infomerge.backbones.registry import BACKBONES, TINY
from infomerge.backbones.vision import VisionEncoder
from infomerge.errors import ArtifactError, ValidationError
from infomerge.export import cli
from infomerge.export import run as export_run
from infomerge.export.validate import run_onnx, validate_onnx
from infomerge.video import load_frames, sample_video

F = 8  # frames of the test exports (the graph is pinned to F; tracing uses 1)


def _export(out: Path, *extra: str) -> Path:
    assert cli.main(["--backbone", "tiny", "--frames", str(F), "--output", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("exp") / "tiny32")


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("exp") / "tiny16", "--fp16")


@pytest.fixture(scope="module")
def real_frames() -> torch.Tensor:
    return load_frames(sample_video("bikes.mp4"), frames=F)  # another clip than the export validated on


# --- the graph --------------------------------------------------------------------------------
def test_artifact_layout_and_graph_contract(fp32_dir):
    # (other steps of the command add their own files beside these)
    assert {"image_newline.npy", "manifest.json", "vision.onnx"} <= {p.name for p in fp32_dir.iterdir()}
    model = onnx.load(str(fp32_dir / "vision.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    io = {
        v.name: (v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in [*model.graph.input, *model.graph.output]
    }
    fp32 = onnx.TensorProto.FLOAT
    assert io == {
        "pixel_values": (fp32, [F, 3, 384, 384]),
        "H": (fp32, [F, 196, TINY.text_hidden]),
        "A": (fp32, [F, 196]),
        "g": (fp32, [F, TINY.vision_hidden]),
    }
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "NonZero", "Loop", "If"}, ops  # static: no shape computation at run time
    newline = np.load(fp32_dir / "image_newline.npy")
    assert newline.shape == (TINY.text_hidden,) and newline.dtype == np.float32
    ref = VisionEncoder.from_backbone("tiny")
    np.testing.assert_array_equal(newline, ref.image_newline.numpy())


def test_graph_computes_the_function_on_other_inputs(fp32_dir, real_frames):
    """The graph was traced on 1 random frame and validated on bigbuckbunny; run it on another real
    clip and on random input and compare with the torch model."""
    ref = VisionEncoder.from_backbone("tiny")
    noise = torch.rand(F, 3, 384, 384, generator=torch.Generator().manual_seed(7)) * 2 - 1
    for x in (real_frames, noise):
        got, _, _ = run_onnx(fp32_dir / "vision.onnx", {"pixel_values": x})
        with torch.no_grad():
            want = dict(zip(("H", "A", "g"), ref(x)))
        for k in ("H", "A", "g"):
            np.testing.assert_allclose(
                got[k], want[k].numpy(), rtol=1e-4, atol=1e-4 * float(want[k].abs().max())
            )


def test_ort_fused_graph_on_other_inputs(fp32_dir, fp16_dir, real_frames):
    """ort/vision.onnx: every tower attention is one MultiHeadAttention (the MAP head's, whose weights
    are the output A, stays written out), LayerNorms and GELUs fused; it computes the torch model's
    function on another real clip; fp16 exports have none."""
    fused = fp32_dir / "ort" / "vision.onnx"
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert ops.count("MultiHeadAttention") == TINY.vision_layers
    assert ops.count("Softmax") == 1 and "SkipLayerNormalization" in ops and "FastGelu" in ops
    assert not (fp16_dir / "ort").exists()
    entry = load_manifest(fp32_dir)["graphs"]["vision_ort"]
    assert entry["validation"]["ok"] and entry["fused_ops"]["MultiHeadAttention"] == TINY.vision_layers
    ref = VisionEncoder.from_backbone("tiny")
    got, _, _ = run_onnx(fused, {"pixel_values": real_frames})
    with torch.no_grad():
        want = dict(zip(("H", "A", "g"), ref(real_frames)))
    for k in ("H", "A", "g"):
        np.testing.assert_allclose(got[k], want[k].numpy(), rtol=1e-4, atol=1e-4 * float(want[k].abs().max()))


def test_fp16_graph_on_real_frames(fp16_dir, real_frames):
    model = onnx.load(str(fp16_dir / "vision.onnx"))
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert dtypes == {
        "pixel_values": onnx.TensorProto.FLOAT,
        "H": onnx.TensorProto.FLOAT16,
        "A": onnx.TensorProto.FLOAT,
        "g": onnx.TensorProto.FLOAT,
    }
    init = {t.name: t.data_type for t in model.graph.initializer}
    kinds = {}  # (op, part) -> set of weight dtypes
    for n in model.graph.node:
        part = n.name.split("/")[1] if n.name.count("/") > 1 else "top"
        for i in n.input:
            if i in init and n.op_type in ("MatMul", "Conv", "LayerNormalization"):
                kinds.setdefault((n.op_type, part), set()).add(init[i])
    f16, f32 = {onnx.TensorProto.FLOAT16}, {onnx.TensorProto.FLOAT}
    assert kinds[("MatMul", "vision_tower")] == kinds[("Conv", "vision_tower")] == f16
    assert kinds[("MatMul", "multi_modal_projector")] == f16
    assert kinds[("LayerNormalization", "vision_tower")] == f32  # fp32 islands
    assert kinds[("MatMul", "siglip_head")] == kinds[("LayerNormalization", "siglip_head")] == f32
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    softmax_in = [types[n.input[0]] for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax_in) == TINY.vision_layers + 1 and set(softmax_in) == f32  # never normalised in fp16
    ref = VisionEncoder.from_backbone("tiny")
    got, _, _ = run_onnx(fp16_dir / "vision.onnx", {"pixel_values": real_frames})
    with torch.no_grad():
        want = dict(zip(("H", "A", "g"), ref(real_frames)))
    for k in ("H", "A", "g"):
        assert np.isfinite(got[k]).all()
        err = np.abs(got[k].astype(np.float64) - want[k].numpy()).max()
        assert err <= 2e-2 * float(want[k].abs().max()), (k, err)
    report = load_manifest(fp16_dir)["graphs"]["vision"]["validation"]
    assert report["ok"] and report["outputs"]["H"]["dtype"] == "float16"


# --- manifest -----------------------------------------------------------------------------------
def test_manifest_contents_and_hashes(fp32_dir):
    m = verify_manifest(fp32_dir, backbone="tiny", frames=F, require=["vision.onnx", "image_newline.npy"])
    assert m["backbone"]["name"] == "tiny" and m["frames"] == F and m["opset"] == 17
    assert m["precision"] == "fp32" and m["retention"] == 0.15 and m["method"] == "infomerge"
    assert m["command"].startswith("infomerge-export --backbone tiny --frames 8")
    assert m["checkpoint"]["weights_sha256"] and m["checkpoint"]["siglip_head"]["weights_sha256"]
    for pkg in ("python", "torch", "transformers", "onnx", "onnxruntime"):
        assert m["versions"][pkg]
    assert set(m["files"]) == {
        p.relative_to(fp32_dir).as_posix()
        for p in fp32_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert {"vision.onnx", "image_newline.npy"} <= set(m["files"])
    for rel, info in m["files"].items():
        assert (
            info["sha256"] == sha256_file(fp32_dir / rel) and info["bytes"] == (fp32_dir / rel).stat().st_size
        )
    g = m["graphs"]["vision"]
    assert g["inputs"]["pixel_values"] == {"shape": [F, 3, 384, 384], "dtype": "float32"}
    assert g["outputs"]["H"] == {"shape": [F, 196, TINY.text_hidden], "dtype": "float32"}
    assert g["validation"]["ok"] and g["validation"]["video"].endswith("bigbuckbunny.mp4")
    assert m["arrays"]["image_newline"] == {
        "file": "image_newline.npy",
        "shape": [TINY.text_hidden],
        "dtype": "float32",
    }
    assert m["export"]["peak_rss_mb"] > 0


def test_verify_manifest_names_each_mismatch(fp32_dir, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(fp32_dir, d)
    with pytest.raises(ArtifactError, match="for backbone 'tiny', not 'ov-7b'"):
        verify_manifest(d, backbone="ov-7b")
    with pytest.raises(ArtifactError, match="8 frames, not 32.*--frames 32"):
        verify_manifest(d, frames=32)
    with pytest.raises(ArtifactError, match="lists no engines/vision.engine"):
        verify_manifest(d, require=["engines/vision.engine"])
    m = json.loads((d / "manifest.json").read_text())
    m["versions"]["onnx"] = "0.0.1"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest.json: edited after export"):
        verify_manifest(d, versions=["onnx"])  # a hand edit is caught by the manifest's own digest
    m["manifest_sha256"] = manifest_digest(m)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="onnx 0.0.1.*install onnx==0.0.1"):
        verify_manifest(d, versions=["onnx"])
    arr = np.load(d / "image_newline.npy")
    arr[0] += 1
    np.save(d / "image_newline.npy", arr)
    with pytest.raises(ArtifactError, match="image_newline.npy: contents do not match the sha256.*--force"):
        verify_manifest(d)
    verify_manifest(d, hashes=False)  # same size: only the hash tells
    (d / "vision.onnx").unlink()
    with pytest.raises(ArtifactError, match="vision.onnx is listed in the manifest but missing"):
        verify_manifest(d, hashes=False)
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_manifest(d)


# --- validation --------------------------------------------------------------------------------
def test_validation_reports_shape_and_tolerance_failures(fp32_dir, real_frames, capsys):
    inputs = {"pixel_values": real_frames}
    ref = VisionEncoder.from_backbone("tiny")
    with torch.no_grad():
        good = dict(zip(("H", "A", "g"), ref(real_frames)))
    report = validate_onnx(fp32_dir / "vision.onnx", lambda pixel_values: ref(pixel_values), inputs, 1e-4)
    assert report.ok and {c.name for c in report.checks} == {"H", "A", "g"}
    out = capsys.readouterr().out
    assert 'Validating ONNX Model output "H"' in out and "max abs diff" in out and "cosine" in out

    bad_shape = {**good, "A": good["A"][:, :100]}
    with pytest.raises(ValidationError, match=r"A: shape \(8, 196\) != reference \(8, 100\)"):
        validate_onnx(fp32_dir / "vision.onnx", bad_shape, inputs, 1e-4)
    assert "[✗]" in capsys.readouterr().out

    off = {**good, "g": good["g"] + 1e-3 * good["g"].abs().max()}
    with pytest.raises(ValidationError, match="g: max abs diff .* > tolerance .*--atol"):
        validate_onnx(fp32_dir / "vision.onnx", off, inputs, 1e-4)
    assert validate_onnx(fp32_dir / "vision.onnx", off, inputs, {"H": 1e-4, "A": 1e-4, "g": 1e-2}).ok


def test_atol_flag_turns_a_miss_into_a_pass(tmp_path, monkeypatch):
    import infomerge.export.vision_step as vs

    real = vs.compute_reference

    def skewed(ctx):
        real(ctx)
        ctx.reference["g"] = ctx.reference["g"] * 1.01  # a 1% disagreement

    steps = [vs.Step(s.name, skewed, s.when) if s.run is real else s for s in export_run.VISION_STEPS]
    monkeypatch.setattr(export_run, "VISION_STEPS", steps)
    out = tmp_path / "a"
    assert cli.main(["--frames", "2", "--output", str(out)]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert cli.main(["--frames", "2", "--output", str(out), "--atol", "0.05"]) == 0
    assert load_manifest(out)["graphs"]["vision"]["validation"]["atol"]["g"] == 0.05


# --- command-line errors: before any file, or nothing left ------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "ov-13b"], "unknown backbone 'ov-13b'; choose one of: " + ", ".join(BACKBONES)),
        (["--retention", "0"], "--retention must be in (0, 1], got 0.0"),
        (["--retention", "1.5"], "--retention must be in (0, 1], got 1.5"),
        (["--frames", "1"], "--frames must be >= 2"),
        (["--atol", "-1"], "--atol must be > 0"),
        (["--random-weights", "--model-path", "."], "--random-weights builds random weights"),
    ],
)
def test_usage_errors_write_nothing(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli.main([*args, "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_option_selects_its_step():
    """Typed options: an option that asks for a graph, engine or LLM always has the step that makes it."""
    from infomerge.export.options import ExportOptions

    def names(**kw):
        return {s.name for s in export_run.build_steps(ExportOptions(**kw))}

    assert "build engines" in names(engine="rtx") and "build engines" not in names()
    assert any(n.startswith("build LLM") for n in names(llm="int4"))
    assert "export vision_compress.onnx" in names(fused=True)
    assert "export compress_plugin.onnx" in names(merge_plugin=True)
    assert "export compress.onnx" not in names(retention=1.0)


def test_input_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--model-path", str(tmp_path / "nope"), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--model-path" in err and "no such directory" in err
    # a missing input file is a usage error
    assert cli.main(["--video", str(tmp_path / "missing.mp4"), "--output", str(out)]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_failure_late_leaves_nothing(tmp_path, monkeypatch, capsys):
    from infomerge.export.context import Step

    def boom(ctx):
        assert (ctx.work / "vision.onnx").is_file()  # files were being written
        raise RuntimeError("simulated failure after the graph was written")

    monkeypatch.setattr(export_run, "VISION_STEPS", [*export_run.VISION_STEPS, Step("boom", boom)])
    assert cli.main(["--frames", "2", "--output", str(tmp_path / "out")]) == 1  # no raw traceback
    err = capsys.readouterr().err
    assert "RuntimeError: simulated failure" in err and "--debug" in err
    assert list(tmp_path.iterdir()) == []


def test_default_output_and_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "artifacts" / "tiny"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    assert cli.main(["--frames", "2"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "old"
    assert cli.main(["--frames", "2", "--force"]) == 0  # default output: artifacts/<backbone>
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert os.listdir(tmp_path / "artifacts") == ["tiny"]  # no temp or backup left


def test_ort_fused_graph_takes_the_distinct_frames_only(fp32_dir, real_frames):
    """ort/vision.onnx has a free frame axis: a video sampled with repeats sends its distinct frames
    once; the features equal the torch model's on all F frames. vision.onnx stays pinned to F."""
    from infomerge.runtime.backends.base import encode_unique_frames
    from infomerge.runtime.backends.ort import OrtVision, vision_graph

    newline = fp32_dir / "image_newline.npy"
    fused = OrtVision(vision_graph(fp32_dir), newline)
    assert vision_graph(fp32_dir) == fp32_dir / "ort" / "vision.onnx" and fused.any_frame_count
    assert not OrtVision(fp32_dir / "vision.onnx", newline).any_frame_count
    calls = []

    def spy(pixel_values):
        calls.append(int(pixel_values.shape[0]))
        return fused(pixel_values)

    spy.any_frame_count, spy.image_newline = True, fused.image_newline
    order = [0, 0, 1, 1, 1, 2, 3, 3]  # F = 8 samples of a 4-frame video
    pixel_values = real_frames[:4][order]
    got = encode_unique_frames(spy, pixel_values, np.array(order) + 100)
    assert calls == [4]
    with torch.no_grad():
        want = VisionEncoder.from_backbone("tiny")(pixel_values)
    for k, w in zip(("H", "A", "g"), want):
        np.testing.assert_allclose(
            getattr(got, k).numpy(), w.numpy(), rtol=1e-4, atol=1e-4 * float(w.abs().max())
        )
