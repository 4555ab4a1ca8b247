"""Version-aware engine choice (issue 18, item 2): the merge plugin graph only where TensorRT can load
a Python AOT plugin (full TensorRT >= 10.9), the standard graph otherwise; weakly typed with the FP16
flag on TensorRT 10, strongly typed on TensorRT 11 and TensorRT-RTX.

Expectations are the published facts, written out here: JetPack 6.x ships TensorRT 10.3, JetPack 7.2
TensorRT 10.16, JetPack 7.2.2+ (AGX Orin, Thor) TensorRT 11.4.1; AOT plugins need TensorRT >= 10.9.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from infomerge.engines.flavour import PLUGIN_MIN_TRT, Flavour, plugin_supported


@pytest.mark.parametrize(
    ("version", "name", "expected"),
    [
        ("10.3.0.30", "trt", False),  # JetPack 6.1 / 6.2
        ("10.8.0", "trt", False),
        ("10.9.0.34", "trt", True),  # first with Python AOT plugins
        ("10.16.1", "trt", True),  # JetPack 7.2: 10.16 > 10.9 numerically, not as text
        ("11.4.1", "trt", True),  # JetPack 7.2.2+ on AGX Orin / Thor
        ("9.0", "trt", False),
        ("8.6.2", "trt", False),  # JetPack 6.0
        ("1.7.1.116", "rtx", False),  # TensorRT-RTX has no plugin API
        ("", "trt", False),
        ("unknown", "trt", False),
        ("10", "trt", False),
    ],
)
def test_plugin_supported(version, name, expected):
    assert plugin_supported(version, name) is expected


def test_plugin_threshold_is_10_9():
    assert PLUGIN_MIN_TRT == (10, 9)


@pytest.mark.parametrize(
    ("version", "strongly_typed", "fp16_flag", "plugin"),
    [("10.3.0", False, True, False), ("10.16.1", False, True, True), ("11.4.1", True, False, True)],
)
def test_flavour_typing_and_plugin(version, strongly_typed, fp16_flag, plugin):
    f = Flavour("trt", version, module=None)
    assert (f.strongly_typed, f.fp16_builder_flag, f.merge_plugin) == (strongly_typed, fp16_flag, plugin)


def test_rtx_is_strongly_typed_without_plugin():
    f = Flavour("rtx", "1.7.1.116", module=None)
    assert f.strongly_typed and not f.merge_plugin


# ---- the exporter's engine step: which graphs it builds, and what it says ------------------------
class _Console:
    def __init__(self):
        self.lines = []

    def print(self, line):
        self.lines.append(str(line))


def _export_step_module():
    from infomerge.export import engine_step

    return engine_step


@pytest.mark.parametrize(("version", "plugin_built"), [("10.3.0.30", False), ("10.16.1", True)])
def test_engine_step_chooses_the_graph_by_version(monkeypatch, tmp_path, version, plugin_built):
    mod = _export_step_module()
    for name in ("vision.onnx", "compress.onnx", "compress_plugin.onnx"):
        (tmp_path / name).write_bytes(b"")
    built, registered = [], []
    monkeypatch.setattr(mod, "load_flavour", lambda name: Flavour("trt", version, module=None))
    monkeypatch.setattr(
        mod, "inspect_onnx",
        lambda g: types.SimpleNamespace(plugin_ops=("MergeToAnchors",) if "plugin" in Path(g).name else ()),
    )
    monkeypatch.setattr(
        mod, "build_engines", lambda work, **kw: built.extend(Path(g).name for g in kw["graphs"]) or []
    )
    import infomerge.engines.plugin as plugin

    monkeypatch.setattr(plugin, "register_plugin", lambda: registered.append(True))
    console = _Console()
    ctx = types.SimpleNamespace(
        options=types.SimpleNamespace(engine="trt", compute_capability="", workspace=1024),
        work=tmp_path, console=console, manifest={},
    )
    mod.build_engine_step(ctx)
    text = "\n".join(console.lines)
    if plugin_built:
        assert built == ["compress.onnx", "compress_plugin.onnx", "vision.onnx"]
        assert registered == [True]
        assert ctx.manifest["engines"]["skipped"] == {}
        assert "compress_plugin.onnx: merge plugin graph" in text and "10.16.1" in text
    else:
        assert built == ["compress.onnx", "vision.onnx"]
        assert registered == []
        reason = ctx.manifest["engines"]["skipped"]["compress_plugin.onnx"]
        assert "10.3.0.30 < 10.9" in reason and "compress.onnx" in reason
        assert "skipping compress_plugin.onnx" in text
