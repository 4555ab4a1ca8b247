"""The merge plugin: ONNX node, TensorRT registration (shape/type/AOT functions), and TensorRT-RTX.

Full TensorRT (with ``tensorrt.plugin``) is not installable on this CPU machine, so the registration
runs against a stand-in of the ``tensorrt.plugin`` API that records what is registered; the shape,
type and ahead-of-time functions are then called directly (the AOT one compiles the real Triton
kernel to PTX for sm_86).
"""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace

import onnx
import pytest
import torch

from infomerge.compress.merge import merge_to_anchors
from infomerge.engines import plugin
from infomerge.errors import ArtifactError, BackendUnavailableError


# --- a stand-in for tensorrt.plugin --------------------------------------------------------------
class Expr:
    """An int-valued shape expression with the parts of trtp.ShapeExpr the plugin uses."""

    def __init__(self, v):
        self.v = int(v)

    is_fake = False

    @property
    def is_constant(self):
        return True

    def constant_value(self):
        return self.v

    def __mul__(self, o):
        return Expr(self.v * (o.v if isinstance(o, Expr) else o))

    def __add__(self, o):
        return Expr(self.v + (o.v if isinstance(o, Expr) else o))

    def __eq__(self, o):
        return isinstance(o, Expr) and o.v == self.v

    def __repr__(self):
        return f"Expr({self.v})"


class Desc:
    def __init__(self, shape, dtype):
        self.shape_expr = [s if isinstance(s, Expr) else Expr(s) for s in shape]
        self.dtype = dtype


class LaunchParams(SimpleNamespace):
    pass


def fake_trtp():
    registry = {}

    def deco(kind):
        def by_id(plugin_id):
            def wrap(fn):
                registry[(kind, plugin_id)] = fn
                return fn

            return wrap

        return by_id

    return SimpleNamespace(
        TensorDesc=Desc,
        register=deco("register"),
        autotune=deco("autotune"),
        aot_impl=deco("aot_impl"),
        from_shape_expr=lambda dims, dtype: Desc(list(dims), dtype),
        AutoTuneCombination=lambda spec: ("combination", spec),
        KernelLaunchParams=LaunchParams,
        cdiv=lambda a, b: Expr(-(-a.v // b)),
        SymInt32=lambda e: ("i32", e.v),
        SymIntExprs=SimpleNamespace(from_tuple=list),
        registry=registry,
    )


FAKE_TRT = SimpleNamespace(float32="DataType.FLOAT", float16="DataType.HALF")


def test_registration_declares_the_plugin_for_tensorrt():
    trtp = fake_trtp()
    fns = plugin.register_plugin(trtp=trtp, trt=FAKE_TRT)
    assert set(trtp.registry) == {
        (k, "infomerge::MergeToAnchors") for k in ("register", "autotune", "aot_impl")
    }
    sig = inspect.signature(fns["register"])
    # tensorrt.plugin reads these annotations as objects: TensorDesc inputs first, then attributes
    assert [p.name for p in sig.parameters.values()] == ["x", "member", "anchor_index", "anchor_valid", "mu"]
    assert all(sig.parameters[n].annotation is Desc for n in ("x", "member", "anchor_index", "anchor_valid"))
    assert sig.parameters["mu"].annotation is float
    assert sig.return_annotation is Desc
    assert fns["autotune"](None, None, None, None, None) == [
        ("combination", "FP32|FP16, FP32, INT32, FP32, FP32|FP16")
    ]


@pytest.mark.parametrize("dtype", ["DataType.FLOAT", "DataType.HALF"])
def test_shape_and_type_function(dtype):
    fns = plugin.register_plugin(trtp=fake_trtp(), trt=FAKE_TRT)
    out = fns["register"](
        Desc((8, 784, 896), dtype), Desc((8, 784), "f"), Desc((8, 12), "i"), Desc((8, 12), "f"), 0.6
    )
    assert [e.v for e in out.shape_expr] == [8, 12, 896]
    assert out.dtype == dtype
    out = fns["register"](
        Desc((2, 3, 50, 64), dtype), Desc((2, 3, 50), "f"), Desc((2, 3, 7), "i"), Desc((2, 3, 7), "f"), 0.6
    )
    assert [e.v for e in out.shape_expr] == [2, 3, 7, 64]


def test_shape_function_rejects_bad_ranks():
    fns = plugin.register_plugin(trtp=fake_trtp(), trt=FAKE_TRT)
    with pytest.raises(ValueError, match="rank"):
        fns["register"](
            Desc((8, 784, 896), "f"), Desc((8,), "f"), Desc((8, 12), "i"), Desc((8, 12), "f"), 0.6
        )


def test_aot_implementation_compiles_the_triton_kernel_for_tensorrt():
    """The @aot_impl body, with the kernel compiled for sm_86 (the registered one targets the build GPU)."""
    trtp = fake_trtp()
    x, anchors = Desc((8, 784, 896), FAKE_TRT.float16), Desc((8, 12), "INT32")
    name, ptx, params, extra = plugin.aot_kernel(trtp, FAKE_TRT, x, anchors, 0.6, None, arch=86)
    assert name == "merge_kernel"
    assert ".target sm_86" in ptx
    # TensorRT passes 4 inputs, 3 int32 args, 1 output: the PTX entry must declare exactly 8 parameters
    entry = ptx[ptx.index(".entry merge_kernel(") : ptx.index(")", ptx.index(".entry merge_kernel("))]
    assert len(re.findall(r"merge_kernel_param_\d+", entry)) == 8
    assert (params.grid_x.v, params.grid_y.v, params.grid_z.v) == (8, 1, 14)  # B, cdiv(12, 16), cdiv(896, 64)
    assert params.block_x % 32 == 0 and params.shared_mem >= 0
    assert extra == [("i32", 784), ("i32", 12), ("i32", 896)]


def test_aot_grid_for_rank2_and_many_anchors():
    trtp = fake_trtp()
    captured = {}

    def fake_compile(dtype, mu, block_k, arch=None):
        captured.update(dtype=dtype, mu=mu, block_k=block_k)
        ptx = (
            ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_8,\n"
            "\t.param .u64 k_param_9\n)\n"
        )
        return SimpleNamespace(
            asm={"ptx": ptx}, metadata=SimpleNamespace(name="k", num_warps=4, shared=0, global_scratch_size=0)
        )

    _, ptx, params, _ = plugin.aot_kernel(
        trtp,
        FAKE_TRT,
        Desc((300, 64), FAKE_TRT.float32),
        Desc((100,), "i"),
        0.5,
        None,
        compile_fn=fake_compile,
    )
    assert captured == {"dtype": "fp32", "mu": 0.5, "block_k": 64}
    assert (params.grid_x.v, params.grid_y.v, params.grid_z.v) == (1, 2, 1)
    assert "k_param_8" not in ptx and "k_param_9" not in ptx


def test_strip_unused_params_refuses_used_ones():
    ptx = ".entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n"
    ptx += "{\n\tld.param.u64 %rd1, [k_param_1];\n}\n"
    with pytest.raises(RuntimeError, match="used"):
        plugin.strip_unused_params(ptx, "k", 1)


def test_register_without_full_tensorrt_names_the_extra():
    with pytest.raises(BackendUnavailableError, match=r"infomerge\[trt\]"):
        plugin.register_plugin()


# --- the ONNX node -------------------------------------------------------------------------------
class _MergeModel(torch.nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.impl = impl

    def forward(self, x, member, anchor_index, anchor_valid):
        return self.impl(x, member, anchor_index, anchor_valid, 0.6) * 1.0


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 16, generator=g).to(dtype)
    member = (torch.rand(3, 40, generator=g) > 0.3).float()
    ai = torch.stack([torch.randperm(40, generator=g)[:5] for _ in range(3)])
    member.scatter_(-1, ai, 1.0)
    return x, member, ai, torch.ones(3, 5)


@pytest.fixture(scope="module")
def plugin_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "merge_plugin.onnx"
    torch.onnx.export(
        _MergeModel(plugin.plugin_merge),
        _inputs(),
        str(path),
        dynamo=False,
        input_names=["x", "member", "anchor_index", "anchor_valid"],
        output_names=["merged"],
    )
    return path


def test_plugin_merge_exports_one_custom_node(plugin_onnx):
    model = onnx.load(str(plugin_onnx))
    onnx.checker.check_model(model)
    custom = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    assert len(custom) == 1
    node = custom[0]
    assert (node.op_type, node.domain) == ("MergeToAnchors", "infomerge")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"infomerge" and attrs["plugin_version"] == b"1"
    assert attrs["aot"] == 1 and attrs["mu"] == pytest.approx(0.6)
    # the plugin's I/O types are fixed by standard Casts in front of it
    assert {n.op_type for n in model.graph.node if n is not node} <= {"Cast", "Constant", "Mul"}
    out = model.graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == [3, 5, 16]
    assert out.elem_type == onnx.TensorProto.FLOAT
    assert {o.domain: o.version for o in model.opset_import}["infomerge"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_plugin_merge_eager_equals_standard_form(dtype):
    x, member, ai, av = _inputs(dtype)
    got = plugin.plugin_merge(x, member, ai, av, 0.6)
    assert got.dtype == dtype
    assert torch.equal(got, merge_to_anchors(x, member, ai, av, 0.6))


def test_tensorrt_rtx_parser_reads_the_plugin_attributes(plugin_onnx):
    """TensorRT-RTX 1.7 maps the node to plugin MergeToAnchors/1/infomerge, then finds no creator."""
    trt = pytest.importorskip("tensorrt_rtx_bindings")

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, severity, msg):
            self.lines.append(str(msg))

    log = Log()
    network = trt.Builder(log).create_network(0)
    parser = trt.OnnxParser(network, log)
    assert not parser.parse_from_file(str(plugin_onnx))
    text = "\n".join(log.lines)
    assert "MergeToAnchors, plugin_version: 1, plugin_namespace: infomerge" in text
    assert "Plugin not found" in str(parser.get_error(0))


def test_rtx_engine_build_of_a_plugin_graph_says_why(plugin_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from infomerge.engines.builder import build_engine

    with pytest.raises(ArtifactError, match=r"MergeToAnchors.*--merge-plugin"):
        build_engine(plugin_onnx, tmp_path, engine="rtx", compute_capabilities="86", log=lambda s: None)
    assert not list(tmp_path.iterdir())  # nothing half-written
