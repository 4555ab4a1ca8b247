"""Engine building, metadata and stale-engine refusal.

- Flavour selection (TensorRT 10.x weak typing + FP16 flag, 11.x strong typing, TensorRT-RTX ahead
  of time) runs the real builder code against stand-in ``tensorrt`` modules (full TensorRT cannot
  be installed on this CPU machine).
- TensorRT-RTX (installed, [rtx] extra) really builds engines here, without a GPU, for SM86 and
  SM89: small graphs, every graph of a ``tiny`` export through ``infomerge-export --engine rtx``, and
  the unified compress graph (``--method unified --retention 0.02``, SM86).
- A stale engine (other TensorRT version, other GPU, changed ONNX, swapped bytes, no metadata) is
  refused with the command that rebuilds it; with a valid engine the loader stops at "no GPU here".
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from infomerge.artifacts.layout import engine_paths, find_engine, normalize_cc, parse_compute_capabilities
from infomerge.artifacts.onnx_graph import inspect_onnx, onnx_digest
from infomerge.engines import builder as B
from infomerge.engines.flavour import Flavour, load_flavour
from infomerge.engines.metadata import EngineMetadata, RuntimeInfo
from infomerge.engines.runner import load_engine_runner, validate_engine
from infomerge.errors import ArtifactError, BackendUnavailableError, EngineMismatchError, TargetError

F = 8  # frames of the test export (the project's test convention, see test_export_vision.py)
QUIET = {"log": lambda s: None}


# --- small graphs --------------------------------------------------------------------------------
def small_graph(path: Path, fp16: bool = False) -> Path:
    """x (4, 32) -> LayerNormalization -> MatMul -> Softmax -> y, fp32 or fp16 with an fp32 island."""
    import numpy as np

    dt = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    npdt = np.float16 if fp16 else np.float32
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", dt, (32, 16), rng.standard_normal((32, 16)).astype(npdt).tobytes(), raw=True)
    scale = helper.make_tensor("scale", TensorProto.FLOAT, (32,), [1.0] * 32)
    bias = helper.make_tensor("bias", TensorProto.FLOAT, (32,), [0.0] * 32)
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("LayerNormalization", ["x32", "scale", "bias"], ["ln"], axis=-1),  # fp32 island
        helper.make_node("Cast", ["ln"], ["ln_t"], to=dt),
        helper.make_node("MatMul", ["ln_t", "w"], ["mm"]),
        helper.make_node("Softmax", ["mm"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", dt, (4, 32))],
        [helper.make_tensor_value_info("y", dt, (4, 16))],
        initializer=[w, scale, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    small_graph(d / "vision.onnx")
    return d


# --- a stand-in for the tensorrt module ----------------------------------------------------------
def fake_trt(version: str):
    calls = {"networks": [], "configs": []}

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Tensor(SimpleNamespace):
        pass

    class Layer(SimpleNamespace):
        def set_output_type(self, i, t):
            self.out_types[i] = t

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.layers = [
                Layer(type=t, precision=None, num_outputs=1, out_types={})
                for t in ("NORMALIZATION", "MATRIX_MULTIPLY", "SOFTMAX")
            ]
            self.num_layers = len(self.layers)
            self.num_inputs = self.num_outputs = 1

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return Tensor(name="x", shape=(4, 32), dtype="DataType.FLOAT")

        def get_output(self, i):
            return Tensor(name="y", shape=(4, 16), dtype="DataType.FLOAT")

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timed"

    class Config:
        def __init__(self):
            self.flags, self.pools, self.cache, self.ccs = set(), {}, None, []
            calls["configs"].append(self)

        def set_memory_pool_limit(self, pool, n):
            self.pools[pool] = n

        def set_flag(self, f):
            self.flags.add(f)

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def set_compute_capability(self, cc, i):
            self.ccs.append(cc)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            n = Network(flags)
            calls["networks"].append(n)
            return n

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            return b"ENGINE" + repr(sorted(config.flags)).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    module = SimpleNamespace(
        __version__=version,
        ILogger=ILogger,
        Logger=lambda *a: SimpleNamespace(),
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=5),
        BuilderFlag=SimpleNamespace(FP16="FP16", PREFER_PRECISION_CONSTRAINTS="PREFER_PRECISION_CONSTRAINTS"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        LayerType=SimpleNamespace(
            NORMALIZATION="NORMALIZATION",
            SOFTMAX="SOFTMAX",
            REDUCE="REDUCE",
            MATRIX_MULTIPLY="MATRIX_MULTIPLY",
        ),
        ComputeCapability=SimpleNamespace(__members__={}),
        float32="float32",
    )
    return module, calls


def importer_for(modules: dict):
    def imp(name):
        if name in modules:
            return modules[name]
        raise ImportError(f"No module named {name!r}")

    return imp


# --- flavour selection ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, modules, strong, fp16_flag, cache, aot",
    [
        ("trt", {"tensorrt": SimpleNamespace(__version__="10.3.0")}, False, True, True, False),  # JetPack 6
        ("trt", {"tensorrt": SimpleNamespace(__version__="11.4.1")}, True, False, True, False),  # JetPack 7.2
        ("rtx", {"tensorrt_rtx": SimpleNamespace(__version__="1.7.1")}, True, False, False, True),
        (
            "rtx",
            {"tensorrt_rtx_bindings": SimpleNamespace(__version__="1.7.1.116")},
            True,
            False,
            False,
            True,
        ),
    ],
)
def test_flavour_properties(name, modules, strong, fp16_flag, cache, aot):
    f = load_flavour(name, importer=importer_for(modules))
    assert (f.strongly_typed, f.fp16_builder_flag, f.timing_cache, f.ahead_of_time) == (
        strong,
        fp16_flag,
        cache,
        aot,
    )


@pytest.mark.parametrize("name, extra", [("trt", r"infomerge\[trt\]"), ("rtx", r"infomerge\[rtx\]")])
def test_missing_tensorrt_names_the_extra(name, extra):
    with pytest.raises(BackendUnavailableError, match=extra):
        load_flavour(name, importer=importer_for({}))


def test_unknown_flavour():
    with pytest.raises(ValueError, match="unknown TensorRT flavour"):
        load_flavour("tensorflow")


def test_compute_capability_parsing():
    assert parse_compute_capabilities("86, 89,8.6,sm_120") == ["8.6", "8.9", "12.0"]
    assert normalize_cc((8, 7)) == "8.7" and normalize_cc("sm87") == "8.7"
    with pytest.raises(TargetError, match="compute capability"):
        normalize_cc("ampere")


def test_target_resolution():
    rtx = load_flavour("rtx")
    assert B.resolve_targets(rtx, ["86", "89"], None) == ["8.6", "8.9"]
    assert B.resolve_targets(rtx, [], "8.9") == ["8.9"]
    with pytest.raises(ValueError, match="--compute-capability"):
        B.resolve_targets(rtx, [], None)
    with pytest.raises(ValueError, match="Jetson Orin is 8.7"):
        B.resolve_targets(rtx, ["87"], None)
    trt = Flavour("trt", "10.3.0", module=None)
    assert B.resolve_targets(trt, [], "8.7") == ["8.7"]
    with pytest.raises(ValueError, match="only builds for this GPU"):
        B.resolve_targets(trt, ["86"], "8.7")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        B.resolve_targets(trt, [], None)


# --- the build path of full TensorRT, against stand-ins ------------------------------------------
def test_trt10_weak_typing_fp16_flag_islands_and_timing_cache(art):
    module, calls = fake_trt("10.3.0")
    flavour = Flavour("trt", "10.3.0", module)
    out = art / "engines"
    [rec] = B.build_engine(
        art / "vision.onnx",
        out,
        precision="fp16",
        workspace_mib=256,
        flavour=flavour,
        device_cc="8.7",
        **QUIET,
    )
    net, cfg = calls["networks"][0], calls["configs"][0]
    assert net.flags == 0  # weakly typed
    assert cfg.flags == {"FP16", "PREFER_PRECISION_CONSTRAINTS"}
    assert cfg.pools == {"WORKSPACE": 256 << 20}
    pinned = [layer.type for layer in net.layers if layer.precision == "float32"]
    assert pinned == ["NORMALIZATION", "SOFTMAX"]  # fp32 islands; the MatMul is left to fp16
    assert cfg.cache.blob == b"" and (out / "timing.cache").read_bytes() == b"+timed"
    assert rec.engine_path == out / "vision.sm87.engine"
    m = json.loads(rec.metadata_path.read_text())
    assert (m["flavour"], m["trt_version"], m["compute_capability"]) == ("trt", "10.3.0", "8.7")
    assert (m["precision"], m["strongly_typed"], m["fp32_layers"], m["timing_cache"]) == (
        "fp16",
        False,
        2,
        "timing.cache",
    )
    assert m["source_sha256"] == onnx_digest(art / "vision.onnx")
    # a second build reuses the timing cache
    B.build_engine(art / "vision.onnx", out, flavour=flavour, device_cc="8.7", **QUIET)
    assert calls["configs"][1].cache.blob == b"+timed"
    assert calls["configs"][1].flags == set()  # fp32 graph, no precision asked: no FP16 flag


def test_trt11_is_strongly_typed_and_takes_precision_from_the_onnx(tmp_path):
    module, calls = fake_trt("11.4.1")
    flavour = Flavour("trt", "11.4.1", module)
    fp16 = small_graph(tmp_path / "vision.onnx", fp16=True)
    [rec] = B.build_engine(fp16, tmp_path / "e", flavour=flavour, device_cc="8.7", **QUIET)
    assert calls["networks"][0].flags == 1 << 5  # STRONGLY_TYPED (accepted, ignored by 11.x)
    assert calls["configs"][0].flags == set()  # no FP16 flag in 11.x
    assert rec.metadata.precision == "fp16" and rec.metadata.strongly_typed
    fp32 = small_graph(tmp_path / "f32.onnx")
    with pytest.raises(ArtifactError, match="--fp16"):
        B.build_engine(fp32, tmp_path / "e", precision="fp16", flavour=flavour, device_cc="8.7", **QUIET)


def test_onnx_inspection_and_digest(tmp_path):
    from infomerge.artifacts.manifest import sha256_file

    a = inspect_onnx(small_graph(tmp_path / "a.onnx"))
    assert (a.precision, a.plugin_ops, a.external_data) == ("fp32", (), ())
    assert inspect_onnx(small_graph(tmp_path / "b.onnx", fp16=True)).precision == "fp16"
    # single file: the digest is the file's sha256, as the artifact manifest lists it
    assert onnx_digest(tmp_path / "a.onnx") == sha256_file(tmp_path / "a.onnx")
    # external data: a change in the weights file changes the digest
    model = onnx.load(str(tmp_path / "a.onnx"))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    info = inspect_onnx(tmp_path / "ext.onnx")
    assert [p.name for p in info.external_data] == ["ext.onnx.data"]
    before = onnx_digest(tmp_path / "ext.onnx")
    data = tmp_path / "ext.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[0] ^= 1
    data.write_bytes(bytes(blob))
    assert onnx_digest(tmp_path / "ext.onnx") != before


# --- TensorRT-RTX, for real, without a GPU -------------------------------------------------------
def test_rtx_builds_for_sm86_and_sm89_without_a_gpu(art):
    records = B.build_engines(art, engine="rtx", compute_capabilities="86,89", workspace_mib=64, **QUIET)
    assert [r.engine_path.name for r in records] == ["vision.sm86.engine", "vision.sm89.engine"]
    for r, cc in zip(records, ("8.6", "8.9")):
        m = EngineMetadata.read(r.metadata_path)
        assert m.compute_capability == cc and m.flavour == "rtx" and m.strongly_typed
        assert m.engine_bytes == r.engine_path.stat().st_size > 10_000
        assert m.inputs == {"x": {"shape": [4, 32], "dtype": "float"}}
        assert m.workspace_bytes == 64 << 20 and m.timing_cache == ""  # RTX: no timing cache
    assert not [p for p in (art / "engines").iterdir() if ".tmp" in p.name]  # atomic writes
    entry = records[0].manifest_entry(art)
    assert entry["engine"] == "engines/vision.sm86.engine" and entry["source_onnx"] == "vision.onnx"


def test_rtx_refuses_a_precision_the_onnx_does_not_hold(art):
    with pytest.raises(ArtifactError, match="strongly typed.*--fp16"):
        B.build_engine(
            art / "vision.onnx", engine="rtx", compute_capabilities="86", precision="fp16", **QUIET
        )
    assert not (art / "engines").exists()


def test_builder_cli(art, capsys):
    assert B.main([str(art / "vision.onnx"), "--compute-capability", "89"]) == 0
    assert "vision.sm89.engine" in capsys.readouterr().out
    assert B.main([str(art / "missing.onnx"), "--compute-capability", "89"]) == 2
    assert B.main([str(art), "--engine", "trt"]) == 2  # no full TensorRT here
    assert "infomerge[trt]" in capsys.readouterr().err


# --- stale-engine refusal ------------------------------------------------------------------------
@pytest.fixture
def built(art):
    [rec] = B.build_engine(art / "vision.onnx", engine="rtx", compute_capabilities="86", **QUIET)
    return rec


def test_valid_engine_passes_and_loading_stops_at_the_missing_gpu(built, art):
    rtx = load_flavour("rtx")
    meta = validate_engine(
        built.engine_path, art / "vision.onnx", runtime=RuntimeInfo("rtx", rtx.version, "8.6")
    )
    assert meta.compute_capability == "8.6"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU.*compute capability 8.6"):
        load_engine_runner(built.engine_path, expected_onnx=art / "vision.onnx")


@pytest.mark.parametrize(
    "runtime, change, message",
    [
        (RuntimeInfo("rtx", "1.8.0.1", "8.6"), None, r"built with rtx 1\.7.*runtime has 1\.8\.0\.1"),
        (None, None, r"built for compute capability 8\.6, this GPU is 8\.9.*--compute-capability 89"),
        (None, "onnx", r"source ONNX changed"),
        (None, "engine", r"differs from the one the metadata describes"),
        (RuntimeInfo("trt", "10.3.0", "8.6"), None, r"flavour 'rtx', the runtime is 'trt'.*--engine trt"),
    ],
)
def test_stale_engine_is_refused_with_the_rebuild_command(built, art, runtime, change, message):
    rtx = load_flavour("rtx")
    runtime = runtime or RuntimeInfo("rtx", rtx.version, "8.9")
    if change == "onnx":
        small_graph(art / "vision.onnx", fp16=True)
        runtime = RuntimeInfo("rtx", rtx.version, "8.6")
    if change == "engine":
        built.engine_path.write_bytes(built.engine_path.read_bytes()[:-1] + b"\0")
        runtime = RuntimeInfo("rtx", rtx.version, "8.6")
    with pytest.raises(EngineMismatchError, match=message) as info:
        validate_engine(built.engine_path, art / "vision.onnx", runtime=runtime)
    assert "Rebuild it: python -m infomerge.engines.builder" in str(info.value)


def test_changed_onnx_is_refused_before_the_gpu_check(built, art):
    small_graph(art / "vision.onnx", fp16=True)
    with pytest.raises(EngineMismatchError, match="source ONNX changed"):
        load_engine_runner(built.engine_path, expected_onnx=art / "vision.onnx")


def test_engine_without_metadata_is_refused(built):
    built.metadata_path.unlink()
    with pytest.raises(EngineMismatchError, match="metadata missing"):
        validate_engine(built.engine_path, runtime=RuntimeInfo("rtx", "1.7.1.116", "8.6"))


def test_find_engine(built, art):
    assert find_engine(art, "vision", "86") == built.engine_path
    with pytest.raises(
        ArtifactError, match="no vision engine for compute capability 8.9.*have: vision.sm86.engine"
    ):
        find_engine(art, "vision", "8.9")
    assert engine_paths(art / "engines", "vision", "8.6") == (built.engine_path, built.metadata_path)


# --- infomerge-export --engine rtx: every tiny graph, SM86 and SM89 -----------------------------
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from infomerge.export import cli

    out = tmp_path_factory.mktemp("tiny") / "tiny"
    args = [
        "--backbone",
        "tiny",
        "--frames",
        str(F),
        "--fused",
        "--merge-plugin",
        "--engine",
        "rtx",
        "--compute-capability",
        "86,89",
        "--workspace",
        "512",
        "--output",
        str(out),
    ]
    assert cli.main(args) == 0
    return out


def test_export_builds_rtx_engines_for_every_tiny_graph(tiny_export):
    from infomerge.artifacts.manifest import verify_manifest

    m = verify_manifest(tiny_export, backbone="tiny", frames=F)
    eng = m["engines"]
    assert (
        eng["flavour"] == "rtx"
        and eng["compute_capabilities"] == ["8.6", "8.9"]
        and eng["workspace_mib"] == 512
    )
    expected = {f"{g}.sm{cc}" for g in ("vision", "compress", "vision_compress") for cc in (86, 89)}
    assert set(eng["items"]) == expected
    for item in eng["items"].values():
        assert item["engine"] in m["files"] and item["metadata"] in m["files"]  # hashed by the manifest
        # a graph TensorRT-RTX compiles badly shows as a bloated engine: the fixed-order fp32 TFD
        # chain made the 8-frame compress engine 408 MB (9 min to build); 16-46 MB otherwise
        assert (tiny_export / item["engine"]).stat().st_size < 128 << 20, item["engine"]
        meta = EngineMetadata.read(tiny_export / item["metadata"])
        assert meta.source_sha256 == onnx_digest(tiny_export / meta.source_onnx)
        validate_engine(
            tiny_export / item["engine"],
            tiny_export / meta.source_onnx,
            runtime=RuntimeInfo("rtx", meta.trt_version, meta.compute_capability),
        )
    assert set(eng["skipped"]) == {"compress_plugin.onnx"}
    assert "no plugin API" in eng["skipped"]["compress_plugin.onnx"]


def test_export_writes_the_plugin_graph_beside_the_standard_one(tiny_export):
    m = json.loads((tiny_export / "manifest.json").read_text())
    g = m["graphs"]["compress_plugin"]
    assert g["plugin"] == "infomerge::MergeToAnchors" and g["plugin_nodes"] >= 1
    assert g["agreement"]["index_equal"] and g["agreement"]["tokens_max_abs"] <= 1e-6
    assert g["outputs"] == m["graphs"]["compress"]["outputs"]
    model = onnx.load(str(tiny_export / "compress_plugin.onnx"), load_external_data=False)
    assert sum(n.op_type == "MergeToAnchors" for n in model.graph.node) == g["plugin_nodes"]
    std = onnx.load(str(tiny_export / "compress.onnx"), load_external_data=False)
    assert not any(
        n.op_type == "MergeToAnchors" for n in std.graph.node
    )  # ONNX Runtime's graph stays standard


# --- every further method's graph: infomerge-export --method M --retention R --engine rtx -----------
@pytest.mark.parametrize(
    ("method", "retention"),
    [
        ("unified", 0.02),
        ("divprune", 0.15),
        ("dycoke", 0.15),
        ("visionzip", 0.15),
        ("flashvid", 0.15),
        ("holitom", 0.15),
    ],
)
def test_export_builds_an_rtx_engine_for_the_method_graph(tmp_path, method, retention):
    """The method's fixed-budget compress graph (exactly B tokens) builds with TensorRT-RTX for
    SM86; tiny, 8 frames, one target (about 15 s each on 2 cores)."""
    from infomerge.artifacts.manifest import verify_manifest
    from infomerge.compress.methods import get_method
    from infomerge.export import cli

    out = tmp_path / f"tiny-{method}"
    args = ["--backbone", "tiny", "--frames", str(F), "--method", method, "--retention", str(retention)]
    args += ["--engine", "rtx", "--compute-capability", "86", "--workspace", "512", "--output", str(out)]
    assert cli.main(args) == 0
    m = verify_manifest(out, backbone="tiny", frames=F)
    g = m["graphs"]["compress"]
    L, N, _ = g["inputs"]["H"]["shape"]
    assert m["method"] == method and g["method"] == method and L == F
    assert g["tokens_kept"] == get_method(method).budget(retention, F, N) == g["outputs"]["index"]["shape"][0]
    assert g["validation"]["ok"] and g["validation"]["outputs"]["index"]["max_abs_diff"] == 0.0
    eng = m["engines"]
    assert eng["flavour"] == "rtx" and eng["compute_capabilities"] == ["8.6"] and not eng["skipped"]
    assert set(eng["items"]) == {"vision.sm86", "compress.sm86"}
    meta = EngineMetadata.read(out / eng["items"]["compress.sm86"]["metadata"])
    assert meta.graph == "compress" and meta.source_sha256 == onnx_digest(out / "compress.onnx")
    assert meta.outputs["index"]["shape"] == [g["tokens_kept"]]
    # VisionZip: the vision engine has the extra outputs, the compress engine five inputs
    extra = list(get_method(method).vision_outputs)
    vision_meta = EngineMetadata.read(out / eng["items"]["vision.sm86"]["metadata"])
    assert set(vision_meta.outputs) == {"H", "A", "g", *extra}
    assert set(meta.inputs) == {"H", "A", "g", *extra}
    validate_engine(
        out / eng["items"]["compress.sm86"]["engine"],
        out / "compress.onnx",
        runtime=RuntimeInfo("rtx", meta.trt_version, meta.compute_capability),
    )


@pytest.mark.parametrize(
    "args, message, status",
    [
        # a missing TensorRT is the environment (1); a bad or unbuildable target is usage (2)
        (["--engine", "trt"], r"infomerge\[trt\]", 1),
        (["--engine", "rtx"], "give --compute-capability", 2),
        (["--engine", "rtx", "--compute-capability", "87"], "Jetson Orin is 8.7", 2),
        (["--engine", "rtx", "--compute-capability", "ampere"], "not a compute capability", 2),
    ],
)
def test_export_refuses_unusable_engine_options_before_any_work(tmp_path, capsys, args, message, status):
    import re

    from infomerge.export import cli

    out = tmp_path / "x"
    assert cli.main(["--frames", "2", *args, "--output", str(out)]) == status
    captured = capsys.readouterr()
    assert re.search(message, captured.err)
    assert "vision" not in captured.out  # refused by the first step, before the export did anything
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]
