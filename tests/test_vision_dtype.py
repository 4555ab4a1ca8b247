"""The torch vision backend's ``vision_dtype`` option (bf16 tower and projector on the CPU)."""

from __future__ import annotations

import pytest
import torch

from infomerge.errors import UsageError
from infomerge.runtime.backends.torch import VISION_DTYPES, check_vision_dtype


def test_vision_dtype_checks_name_and_backend():
    check_vision_dtype("fp32", "ort")  # the default goes with every backend
    check_vision_dtype("bf16", "torch")
    with pytest.raises(UsageError, match="fp32, bf16"):
        check_vision_dtype("fp8", "torch")
    with pytest.raises(UsageError, match="torch vision backend only"):
        check_vision_dtype("bf16", "ort")


def test_cli_refuses_bf16_with_artifacts(tmp_path):
    from infomerge.runtime.cli import _build_pipeline, build_parser

    args = build_parser().parse_args(["--artifacts", str(tmp_path), "--vision-dtype", "bf16"])
    with pytest.raises(UsageError, match="--backbone runs"):
        _build_pipeline(args)


def test_bf16_tower_stays_close_to_fp32():
    """bf16 tower + projector against the same weights in fp32 (the independent computation):
    H within bf16's rounding, A and g (fp32 head on the bf16 tower output) close too."""
    from infomerge.backbones.vision import VisionEncoder

    enc32 = VisionEncoder.from_backbone("tiny", random_weights=True, seed=1)
    enc16 = VisionEncoder.from_backbone("tiny", random_weights=True, seed=1, dtype=VISION_DTYPES["bf16"])
    px = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        h32, a32, g32 = enc32(px)
        h16, a16, g16 = enc16(px)
    assert h16.dtype == torch.bfloat16 and a16.dtype == torch.float32 and g16.dtype == torch.float32
    for got, want in ((h16.float(), h32), (a16, a32), (g16, g32)):
        err = float((got - want).abs().max() / want.abs().max())
        assert 0 < err < 5e-2, err
