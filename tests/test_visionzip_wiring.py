"""VisionZip's official inputs carried end to end: the method declares the last SigLIP layer's
attention received and keys (``Method.vision_outputs``), ``infomerge-export --method visionzip``
writes them as ``vision.onnx`` outputs and ``compress.onnx`` inputs, and the runtime (torch and
ONNX Runtime) feeds them to the compressor.

The expected values are independent of the code under test: the attention and keys come from
transformers' own SigLIP (eager attention weights of the last layer, a hook on its ``k_proj``),
pooled 27x27 -> 14x14 here with ``F.interpolate``, and the kept set from :func:`visionzip` on them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infomerge.compress.visionzip import VisionZipConfig, reference, visionzip
from infomerge.errors import ArtifactError

FRAMES = 8
R = 0.15


def _pool(x: torch.Tensor) -> torch.Tensor:
    """(L, 729, C) -> (L, 196, C): LLaVA-OneVision's bilinear 27x27 -> 14x14."""
    n, c = x.shape[0], x.shape[-1]
    y = x.transpose(1, 2).reshape(n, c, 27, 27)
    y = F.interpolate(y, size=(14, 14), mode="bilinear", align_corners=False)
    return y.reshape(n, c, 196).transpose(1, 2)


@torch.no_grad()
def hf_stats(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention (L, 196), keys (L, 196, head_dim)) from transformers' tiny SigLIP tower."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from infomerge.backbones.tiny import build_tiny_checkpoint

    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(
        build_tiny_checkpoint(), attn_implementation="eager"
    ).eval()
    tower = hf.model.vision_tower
    model = getattr(tower, "vision_model", tower)
    seen = {}
    hook = model.encoder.layers[-1].self_attn.k_proj.register_forward_hook(
        lambda m, i, o: seen.__setitem__("k", o)
    )
    att = tower(frames, output_attentions=True).attentions[-1]  # (L, heads, 729, 729)
    hook.remove()
    heads = att.shape[1]
    received = att.mean(1).mean(1)  # over heads, then queries
    keys = seen["k"].reshape(frames.shape[0], 729, heads, -1).mean(2)
    return _pool(received[..., None])[..., 0], _pool(keys)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``infomerge-export --backbone tiny --frames 8 --method visionzip --retention 0.15 --fused``."""
    from infomerge.export import cli

    out = tmp_path_factory.mktemp("vz") / "tiny-visionzip"
    args = ["--backbone", "tiny", "--frames", str(FRAMES), "--method", "visionzip", "--retention", str(R)]
    assert cli.main([*args, "--fused", "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def frames():
    from infomerge.video import load_frames, sample_video

    return load_frames(sample_video(), frames=FRAMES)


def test_registry_declares_the_official_inputs_of_the_methods_that_read_them():
    from infomerge.backbones.vision import EXTRA_OUTPUTS
    from infomerge.compress.methods import METHODS, vision_outputs_of

    declared = {name: m.vision_outputs for name, m in METHODS.items() if m.vision_outputs}
    # VisionZip: attention + keys; HoliTom and FlashVID: the attention each patch receives
    assert declared == {
        "visionzip": ("attention", "keys"),
        "holitom": ("attention",),
        "flashvid": ("attention",),
    }
    assert all(k in EXTRA_OUTPUTS for names in declared.values() for k in names)
    assert vision_outputs_of(["infomerge", "divprune", "visionzip", "dycoke"]) == ("attention", "keys")
    assert vision_outputs_of(["infomerge", "fastvid"]) == ()
    assert vision_outputs_of(["holitom", "flashvid"]) == ("attention",)


def test_graph_specs_extended_only_for_the_method():
    from infomerge.backbones.registry import get_backbone
    from infomerge.export.graphs import COMPRESS, FUSED, VISION, with_vision_outputs

    bb = get_backbone("ov-7b")
    assert with_vision_outputs(VISION, ()) is VISION and with_vision_outputs(FUSED, ("keys",)) is FUSED
    v = with_vision_outputs(VISION, ("attention", "keys"))
    assert v.inputs == ("pixel_values",) and v.outputs == ("H", "A", "g", "attention", "keys")
    assert v.shapes(bb, 32, None, 1152)["keys"] == [32, 196, 72]  # so400m: 1152 / 16 heads
    assert v.tolerances("fp16")["attention"] == VISION.tolerances("fp16")["A"]
    c = with_vision_outputs(COMPRESS, ("attention", "keys"))
    assert c.inputs == ("H", "A", "g", "attention", "keys") and c.outputs == COMPRESS.outputs
    ex = c.example(bb, 2, torch.float32, 1152)
    assert [tuple(t.shape) for t in ex[3:]] == [(2, 196), (2, 196, 72)]
    torch.testing.assert_close(ex[3].sum(-1), torch.ones(2))  # a softmax row per frame
    with pytest.raises(ValueError, match="unknown vision outputs"):
        with_vision_outputs(COMPRESS, ("bogus",))


def test_export_writes_official_outputs_and_five_input_compress_graph(exported, frames):
    """vision.onnx's extra outputs equal transformers' last-layer statistics; compress.onnx takes
    them by name; the manifest records and validates both."""
    from infomerge.artifacts.manifest import verify_manifest
    from infomerge.engines.ort import ort_session

    m = verify_manifest(exported, backbone="tiny", frames=FRAMES)
    vis, comp = m["graphs"]["vision"], m["graphs"]["compress"]
    assert list(vis["outputs"]) == ["H", "A", "g", "attention", "keys"]
    assert vis["outputs"]["keys"]["shape"] == [FRAMES, 196, 16]
    assert list(comp["inputs"]) == ["H", "A", "g", "attention", "keys"]
    assert (
        vis["validation"]["ok"]
        and comp["validation"]["ok"]
        and m["graphs"]["vision_compress"]["validation"]["ok"]
    )
    assert comp["validation"]["outputs"]["index"]["max_abs_diff"] == 0.0
    sess = ort_session(exported / "vision.onnx", "cpu")
    attention, keys = sess.run(["attention", "keys"], {"pixel_values": frames.numpy()})
    want_att, want_keys = hf_stats(frames)
    np.testing.assert_allclose(attention, want_att.numpy(), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(keys, want_keys.numpy(), rtol=1e-4, atol=1e-5)


def test_default_export_keeps_the_default_graphs(tmp_path):
    """Another method's artifacts: vision.onnx H, A, g only; compress.onnx three inputs."""
    from rich.console import Console

    from infomerge.artifacts.onnx_graph import graph_io
    from infomerge.export import ExportOptions, export

    out = export(
        ExportOptions(backbone="tiny", frames=2, method="divprune", retention=0.25, output=tmp_path / "d"),
        console=Console(quiet=True),
    )
    assert list(graph_io(out / "vision.onnx")[1]) == ["H", "A", "g"]
    assert list(graph_io(out / "compress.onnx")[0]) == ["H", "A", "g"]


def test_runtime_uses_the_official_inputs_on_artifacts_and_torch(exported, frames):
    """``infomerge-run --artifacts`` (ORT vision + ORT compress, then torch compress on the ORT
    features) and ``infomerge-run --method visionzip`` (torch) keep VisionZip's set on
    transformers' attention and keys, not the fallback's (A, H)."""
    from infomerge.runtime.pipeline import Pipeline

    att, keys = hf_stats(frames)
    cfg = VisionZipConfig(R)
    pipe = Pipeline.from_artifacts(exported)
    assert (pipe.vision.name, pipe.compressor.name) == ("ort", "ort")
    f = pipe.encode(frames)
    assert set(f.extra) == {"attention", "keys"}
    official = visionzip(f.H.double(), att.double(), keys.double(), cfg).index
    fallback = reference(f.H.double(), f.A.double(), f.g, cfg).index
    assert not torch.equal(official, fallback)  # the check can tell the two inputs apart
    assert torch.equal(pipe.compress(f).index, official)
    torch_comp = pipe.with_compression("visionzip", R, "torch")
    assert torch.equal(torch_comp.compress(f).index, official)

    tp = Pipeline.from_backbone("tiny", method="visionzip", retention=R, frames=FRAMES)
    tf = tp.encode(frames)
    torch.testing.assert_close(tf.extra["attention"], att, rtol=1e-4, atol=1e-8)
    assert torch.equal(
        tp.compress(tf).index, visionzip(tf.H.double(), att.double(), keys.double(), cfg).index
    )
    # a pipeline built for another method produces no extra outputs, and refuses VisionZip
    other = Pipeline.from_backbone("tiny", method="divprune", retention=R, frames=FRAMES)
    assert other.encode(frames).extra == {}
    with pytest.raises(ArtifactError, match="attention, keys"):
        other.with_compression("visionzip", R, "torch")
    assert (
        "attention"
        in Pipeline.from_backbone(
            "tiny", method="divprune", retention=R, frames=FRAMES, vision_outputs=("attention", "keys")
        )
        .with_compression("visionzip", R, "torch")
        .encode(frames)
        .extra
    )


def test_vision_graph_without_the_outputs_is_refused(tmp_path):
    """An artifact whose vision.onnx lacks attention / keys: VisionZip is refused with the re-export
    command (no silent fallback), and a VisionZip compress.onnx of H, A, g only likewise."""
    from rich.console import Console

    from infomerge.export import ExportOptions, export
    from infomerge.runtime.backends.ort import check_compress_graph
    from infomerge.runtime.pipeline import Pipeline

    out = export(
        ExportOptions(backbone="tiny", frames=2, retention=1.0, output=tmp_path / "plain"),
        console=Console(quiet=True),
    )
    with pytest.raises(ArtifactError, match=r"infomerge-export --method visionzip"):
        Pipeline.from_artifacts(out, method="visionzip", retention=R, compress_backend="torch")
    old = {
        "graphs": {"compress": {"method": "visionzip", "retention": R, "inputs": {"H": {}, "A": {}, "g": {}}}}
    }
    with pytest.raises(ArtifactError, match="lacks the inputs attention, keys"):
        check_compress_graph(out, old, "visionzip", R, ("attention", "keys"))
    check_compress_graph(out, old, "visionzip", R, ())  # the method's own declaration decides


def test_agreement_cache_carries_the_extra_outputs():
    from infomerge.backbones.vision import VisionEncoder
    from infomerge.bench.studies.agreement import video_features
    from infomerge.video import load_frames, sample_video

    H, A, g, extra = video_features("tiny", "bikes.mp4", extra=True)
    assert set(extra) == {"attention", "keys"} and extra["keys"].shape == (*H.shape[:2], 16)
    assert len(video_features("tiny", "bikes.mp4")) == 3
    first = load_frames(sample_video("bikes.mp4"), 32)[:4]
    stats = VisionEncoder.from_backbone("tiny").last_layer_stats(first)
    torch.testing.assert_close(extra["attention"][:4], stats["attention"], rtol=1e-5, atol=1e-9)
