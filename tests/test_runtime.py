"""``infomerge-run`` and the Pipeline: end to end on bigbuckbunny with ``tiny``, and the error paths.

The correctness checks against Hugging Face are in ``test_runtime_hf.py``, the ONNX Runtime LLM
backend in ``test_llm_ort.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from infomerge.errors import ArtifactError, PromptTooLongError, UnknownBackboneError
from infomerge.runtime.cli import main
from infomerge.runtime.embeddings import PromptIds, assemble
from infomerge.runtime.llm import Sampler, Sampling, TextStream
from infomerge.runtime.pipeline import Pipeline
from infomerge.video import sample_video

STAGES = {
    "load",
    "video_decode",
    "video_decode_wait",
    "vision",
    "compress",
    "assemble",
    "prefill",
    "token_decode",
}


# --- end to end ------------------------------------------------------------------------------------
def test_cli_end_to_end_bigbuckbunny(tmp_path, capsys):
    """The README's first command (plus --json and --save-viz): answer, table, JSON, PNG, < 1 minute."""
    out_json, out_png = tmp_path / "run.json", tmp_path / "viz.png"
    t0 = time.perf_counter()
    rc = main(["--max-new-tokens", "12", "--json", str(out_json), "--save-viz", str(out_png)])
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert elapsed < 60, f"end-to-end run took {elapsed:.1f} s"
    assert "bigbuckbunny.mp4" in captured.out and "answer:" in captured.out
    for label in (
        "vision encoder",
        "compression",
        "LLM prefill",
        "time to first token",
        "tok/s",
        "peak memory",
    ):
        assert label in captured.out
    record = json.loads(out_json.read_text())
    assert record["answer"].strip() and 1 <= len(record["token_ids"]) <= 12
    timings = record["timings"]
    assert set(timings["stages_ms"]) == STAGES
    assert all(v >= 0 for v in timings["stages_ms"].values())
    assert timings["ttft_ms"] > 0 and timings["peak_rss_mb"] > 0
    assert timings["decode_tokens_per_s"] is None or timings["decode_tokens_per_s"] > 0
    # InfoMerge at 15 %: about 920 of 6272 video tokens, positions continue from the uncompressed length
    assert 880 <= timings["video_tokens"] - 1 <= 960
    assert timings["uncompressed_video_tokens"] == 6273
    assert timings["next_position"] == timings["prompt_tokens"] - timings["video_tokens"] + 6273
    assert record["pipeline"]["method"] == "infomerge" and record["pipeline"]["retention"] == 0.15
    assert record["video"]["frames"] == 32
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_backbone("tiny")


@pytest.fixture(scope="module")
def decoded(pipe):
    return pipe.decode(sample_video())


@pytest.fixture(scope="module")
def answer(pipe, decoded):
    return pipe.generate(decoded, max_new_tokens=4)


def test_uncompressed_path(decoded, answer):
    full = Pipeline.from_backbone("tiny", compress_backend="none")
    result = full.generate(decoded, max_new_tokens=4)
    t = result.timings
    assert t.video_tokens == t.uncompressed_video_tokens == 6273
    assert t.prompt_tokens == t.next_position  # nothing dropped
    assert torch.equal(result.position_ids, torch.arange(t.prompt_tokens))
    assert result.token_ids and set(t.stages_ms) >= STAGES - {"load"}
    assert result.info["method"] is None and result.info["compress_backend"] == "none"
    # the compressed request of the same video prefilled 6.8x fewer tokens
    assert answer.timings.prompt_tokens * 6 < t.prompt_tokens


def test_stage_api_matches_generate(pipe, decoded, answer):
    """The separate stage callables (for the benchmark) give what generate() gives."""
    features = pipe.encode(decoded.pixel_values)
    assert features.H.shape == (32, 196, 64) and features.A.shape == (32, 196)
    kept = pipe.compress(features)
    assert torch.equal(kept.index, answer.video_tokens.index)
    asm = pipe.assemble(kept)
    assert torch.equal(asm.position_ids[0], answer.position_ids)
    tokens = list(pipe.decode_tokens(asm, pipe.prefill(asm, 4), 4))
    assert tokens == answer.token_ids


def test_fastvid_method(answer):
    from infomerge.compress.methods import get_method
    from infomerge.runtime.backends.torch import TorchCompressor
    from infomerge.runtime.pipeline import make_config

    kept = TorchCompressor(get_method("fastvid"), make_config("fastvid", 0.25))(answer.features)
    assert abs(kept.index.numel() - make_config("fastvid", 0.25).total_budget(32, 196)) <= 2
    assert bool((kept.index[1:] > kept.index[:-1]).all())


def test_visualization_without_reference_detail(pipe, answer, tmp_path):
    """ORT/TRT compressors return no structure: the drawing recomputes the reference."""
    from dataclasses import replace

    from infomerge.runtime.visualize import save_visualization

    bare = replace(answer, video_tokens=replace(answer.video_tokens, detail=None))
    out = save_visualization(tmp_path / "sub" / "v.png", bare, pipe.config)
    assert out.is_file() and out.stat().st_size < 400_000


# --- pieces ------------------------------------------------------------------------------------------
def test_assemble_positions_and_order():
    table = torch.arange(10, dtype=torch.float32).view(10, 1).repeat(1, 3)  # embedding of id i = [i, i, i]
    prompt = PromptIds(before=(1, 2), after=(3, 4, 5), text="")
    tokens = torch.full((3, 3), -1.0)
    index = torch.tensor([0, 5, 11])
    newline = torch.full((3,), -2.0)
    asm = assemble(lambda ids: table[list(ids)], prompt, tokens, index, newline, frames=3, tokens_per_frame=4)
    assert asm.position_ids.tolist() == [[0, 1, 2, 7, 13, 14, 15, 16, 17]]
    assert asm.inputs_embeds[0, :, 0].tolist() == [1, 2, -1, -1, -1, -2, 3, 4, 5]
    assert asm.next_position == 18 and asm.video_tokens == 4 and asm.uncompressed_video_tokens == 13
    with pytest.raises(ValueError, match="strictly increasing"):
        assemble(lambda ids: table[list(ids)], prompt, tokens, torch.tensor([5, 0, 11]), newline, 3, 4)


def test_sampler():
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert Sampler()(logits) == 1
    assert Sampler(suppress=[1])(logits) == 2
    assert Sampler(Sampling(do_sample=True, top_k=1))(logits) == 1
    draws = [Sampler(Sampling(do_sample=True, seed=7))(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # seeded
    picks = {Sampler(Sampling(do_sample=True, top_p=0.5, seed=s))(logits) for s in range(20)}
    assert picks <= {1, 2}
    with pytest.raises(ValueError):
        Sampling(temperature=0.0)


def test_text_stream_holds_back_partial_characters(pipe):
    ids = pipe.tokenizer("rabbit é", add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in pipe.tokenizer.decode([i]) for i in ids)  # "é" is two byte tokens here
    stream = TextStream(pipe.tokenizer)
    text = "".join(stream.push(i) for i in ids)
    assert text == "rabbit é" and "\ufffd" not in text


# --- errors ------------------------------------------------------------------------------------------
def test_prompt_longer_than_context(pipe, answer):
    long_prompt = "rabbit " * 3000  # 6273 video positions + ~3000 text tokens > 8192
    asm = pipe.assemble(answer.video_tokens, long_prompt)
    assert asm.length > 3000  # nothing was truncated
    with pytest.raises(PromptTooLongError, match="context is 8192"):
        pipe.prefill(asm)
    short = pipe.assemble(answer.video_tokens)
    with pytest.raises(PromptTooLongError, match="--max-new-tokens"):
        pipe.prefill(short, max_new_tokens=3000)


def test_cli_prompt_too_long(capsys, monkeypatch):
    """Refused with the tokenizer alone: no model is loaded and no video decoded first."""
    import infomerge.runtime.decode_thread as decode_thread
    from infomerge.runtime import pipeline

    def never(*a, **k):
        raise AssertionError("expensive work started before the prompt was checked")

    monkeypatch.setattr(pipeline.Pipeline, "from_backbone", classmethod(never))
    monkeypatch.setattr(decode_thread.DecodeJob, "__init__", never)
    rc = main(["--prompt", "rabbit " * 3000, "--max-new-tokens", "2"])
    assert rc == 2
    assert "context" in capsys.readouterr().err
    rc = main(["--max-new-tokens", "3000"])  # 6273 video positions + the template + 3000 > 8192
    assert rc == 2
    assert "--max-new-tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "not a video file"),
    ],
)
def test_cli_video_errors_pass_through(tmp_path, capsys, make, message):
    path = make(tmp_path)
    t0 = time.perf_counter()
    rc = main(["--video", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(path) in err
    assert time.perf_counter() - t0 < 5  # reported before any model loads


def test_cli_unknown_backbone(capsys):
    assert main(["--backbone", "nope"]) == 2
    assert "tiny" in capsys.readouterr().err  # the message lists the choices


def test_grid_layout_backbone_is_served(tmp_path, monkeypatch):
    """llava-video-7b (newline after every row) is no longer refused: offline, without its
    checkpoint, the error names the checkpoint and the flag, not the layout."""
    from infomerge.errors import CheckpointNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="LLaVA-Video-7B-Qwen2-hf.*--model-path"):
        Pipeline.from_backbone("llava-video-7b")


def test_ort_backend_without_artifacts():
    """A missing --artifacts is a usage error (exit status 2), for the LLM and the graph backends."""
    from infomerge.errors import UsageError
    from infomerge.runtime.cli import main

    with pytest.raises(UsageError, match="--artifacts"):
        Pipeline.from_backbone("tiny", llm="ort")
    with pytest.raises(UsageError, match="--artifacts"):
        Pipeline.from_backbone("tiny", vision_backend="ort")
    assert main(["--backbone", "tiny", "--llm", "ort"]) == 2


def _artifacts(tmp_path, backbone="tiny", **versions):
    from infomerge.artifacts.manifest import new_manifest, write_manifest

    d = tmp_path / "art"
    d.mkdir()
    m = new_manifest(backbone={"name": backbone}, frames=32, method="infomerge", retention=0.15)
    m["versions"].update(versions)
    write_manifest(d, m)
    return d


def test_manifest_for_another_backbone(tmp_path):
    d = _artifacts(tmp_path, backbone="ov-0.5b")
    with pytest.raises(ArtifactError, match="ov-0.5b.*not 'tiny'"):
        Pipeline.from_artifacts(d, backbone="tiny")


def test_manifest_from_another_infomerge_version(tmp_path):
    d = _artifacts(tmp_path, infomerge="0.0.1")
    with pytest.raises(ArtifactError, match="infomerge 0.0.1"):
        Pipeline.from_artifacts(d)


def test_unknown_backbone_in_manifest(tmp_path):
    d = _artifacts(tmp_path, backbone="not-a-model")
    with pytest.raises(UnknownBackboneError):
        Pipeline.from_artifacts(d, vision_backend="torch", llm="torch")


def test_trt_backend_errors(tmp_path):
    """No engine: the error lists what exists and the build command; a stale engine is refused."""
    from infomerge.errors import BackendUnavailableError, EngineMismatchError

    d = _artifacts(tmp_path)
    with pytest.raises(ArtifactError, match="engine"):
        Pipeline.from_artifacts(d, vision_backend="trt", llm="torch")
    from infomerge.engines.metadata import EngineMetadata

    engines = d / "engines"
    engines.mkdir()
    (engines / "vision.sm90.engine").write_bytes(b"engine")
    fields = dict(
        graph="vision",
        flavour="rtx",
        trt_version="0.0.1",
        compute_capability="9.0",
        source_onnx="vision.onnx",
        source_sha256="0" * 64,
        precision="fp16",
        strongly_typed=True,
        workspace_bytes=0,
        engine_file="vision.sm90.engine",
        engine_sha256="0" * 64,
        engine_bytes=6,
        build_seconds=1.0,
        built_at="2026-01-01T00:00:00Z",
    )
    EngineMetadata(**fields).write(engines / "vision.sm90.json")
    import onnx

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), d / "vision.onnx")
    with pytest.raises((EngineMismatchError, BackendUnavailableError)) as info:
        Pipeline.from_artifacts(d, vision_backend="trt", llm="torch")
    assert "0.0.1" in str(info.value) or "install" in str(info.value)
