"""The seams of the architecture: method and backend registries, retention semantics, typed export
options, atomic writes. Each failure path is checked before any model is loaded."""

from __future__ import annotations

import os

import pytest
import torch

from infomerge.artifacts.atomic import atomic_directory, atomic_path, atomic_write_text, is_temporary
from infomerge.artifacts.manifest import file_hashes
from infomerge.compress import methods
from infomerge.compress.methods import Method, get_method, method_names
from infomerge.errors import BudgetError, UnknownBackendError, UnknownMethodError
from infomerge.runtime.backends import COMPRESS_BACKENDS, LLM_BACKENDS, VISION_BACKENDS, backend_factory
from infomerge.runtime.pipeline import Pipeline, compression_wanted


# --- method registry --------------------------------------------------------------------------------
def test_registered_methods_and_their_budgets():
    assert {"infomerge", "fastvid"} <= set(method_names())
    # budgets of the spec at L = 32, N = 196, r = 15% (docs/algorithm.md): 920 paper, 928 fastvid
    assert get_method("infomerge").budget(0.15, 32, 196) == 920
    assert get_method("fastvid").budget(0.15, 32, 196) == 928


def test_unknown_method_lists_the_choices():
    with pytest.raises(UnknownMethodError) as err:
        get_method("visionzap")
    assert "visionzap" in str(err.value) and "infomerge" in str(err.value) and "fastvid" in str(err.value)


def test_a_method_is_exportable_or_says_why_not():
    with pytest.raises(ValueError, match="exactly one"):
        Method("x", "x", config=float, reference=lambda *a: None)
    with pytest.raises(ValueError, match="exactly one"):
        Method(
            "x",
            "x",
            config=float,
            reference=lambda *a: None,
            fixed_budget=torch.nn.Identity,
            not_exportable="no",
        )


# --- backend registries -----------------------------------------------------------------------------
def test_backend_registries():
    assert set(VISION_BACKENDS) == {"torch", "ort", "trt"}
    assert set(COMPRESS_BACKENDS) == {"none", "torch", "ort", "trt"}
    assert set(LLM_BACKENDS) == {"torch", "ort"}
    with pytest.raises(UnknownBackendError, match="llm backend must be one of torch, ort; got 'trt'"):
        backend_factory("llm", "trt")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"method": "nope"}, UnknownMethodError),
        ({"vision_backend": "tpu"}, UnknownBackendError),
        ({"llm": "trt"}, UnknownBackendError),
        ({"retention": 0.0}, BudgetError),
        ({"retention": 1.5}, BudgetError),
    ],
)
def test_bad_names_fail_before_any_loading(monkeypatch, kwargs, error):
    import infomerge.backbones.loading as loading

    def never(*a, **k):
        raise AssertionError("a checkpoint was resolved before the names were checked")

    monkeypatch.setattr(loading, "resolve_checkpoint", never)
    with pytest.raises(error):
        Pipeline.from_backbone("tiny", **kwargs)


def test_retention_one_means_no_compression():
    assert compression_wanted(None) is False and compression_wanted(1.0) is False
    assert compression_wanted(0.15) is True
    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        compression_wanted(1e-9 - 1)


# --- typed export options ---------------------------------------------------------------------------
def test_export_options_refuse_a_method_without_a_fixed_budget_form(monkeypatch, tmp_path):
    from infomerge.export.options import ExportOptions, UsageError
    from infomerge.export.run import build_steps

    dynamic = Method(
        "dynamic",
        "x",
        config=get_method("infomerge").config,
        reference=lambda *a: None,
        not_exportable="its token count depends on the video",
    )
    monkeypatch.setitem(methods.METHODS, "dynamic", dynamic)
    with pytest.raises(UsageError, match="no fixed-budget graph .*token count depends on the video"):
        ExportOptions(method="dynamic", output=tmp_path / "out").check()
    ExportOptions(method="dynamic", retention=1.0, output=tmp_path / "out").check()  # no graph asked for
    names = {s.name for s in build_steps(ExportOptions(method="dynamic", retention=1.0))}
    assert "export compress.onnx" not in names and "export vision.onnx" in names
    assert not (tmp_path / "out").exists()


# --- atomic writes ----------------------------------------------------------------------------------
def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(out, replace=True) as work:
        (work / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["art"]
    with pytest.raises(FileExistsError), atomic_directory(out) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["art"]
    with atomic_directory(out, replace=True) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["art"]


def test_manifest_never_lists_a_temporary(tmp_path):
    (tmp_path / "vision.onnx").write_bytes(b"x")
    (tmp_path / ".vision.onnx.tmp-abc.onnx").write_bytes(b"y")
    assert is_temporary(".vision.onnx.tmp-abc.onnx") and not is_temporary("vision.onnx")
    assert list(file_hashes(tmp_path)) == ["vision.onnx"]


# --- one stage vocabulary ---------------------------------------------------------------------------
def test_stage_vocabulary_says_which_decode():
    from infomerge.timing import STAGES

    assert "decode" not in STAGES and {"video_decode", "token_decode"} <= set(STAGES)


@pytest.mark.parametrize("name", method_names())
def test_retention_one_keeps_every_token_for_every_method(name):
    """r = 1.0 means no compression for every registered method, in run (the compressor) and export
    (no compression graph), whatever the method's own config would keep."""
    from infomerge.backbones.registry import get_backbone
    from infomerge.export.options import ExportOptions
    from infomerge.export.run import build_steps
    from infomerge.runtime.backends import BackendSource, NoCompression, VisionFeatures
    from infomerge.runtime.pipeline import _compressor

    source = BackendSource(backbone=get_backbone("tiny"))
    compressor, config = _compressor(source, "torch", name, 1.0)
    assert isinstance(compressor, NoCompression) and config is None
    H = torch.randn(3, 4, 5)
    kept = compressor(VisionFeatures(H, torch.rand(3, 4), torch.rand(3, 2)))
    assert kept.index.tolist() == list(range(12)) and torch.equal(kept.tokens, H.reshape(12, 5))
    steps = {s.name for s in build_steps(ExportOptions(method=name, retention=1.0))}
    assert not any("compress" in s for s in steps)
