"""The last step of ``jetson/setup.sh``: does the installed stack actually run on this board's GPU?

A wheel from the wrong index can import cleanly and still be useless on Orin (compute capability
8.7, ``sm_87``): a torch wheel built for server Arm GPUs only (``sm_90``/``sm_100``) reports
``torch.cuda.is_available() == True`` and fails at its first kernel with "no kernel image is
available for execution on the device"; an onnxruntime-gpu whose CUDA provider cannot load (a CUDA
or cuDNN major version the board does not have) lists ``CUDAExecutionProvider`` and silently runs a
session on the CPU. So each check runs something:

- torch: one elementwise kernel and a reduction on ``cuda`` (result checked by hand: 4 x 2 = 8);
- TensorRT: imports, version at least the minimum;
- onnxruntime: a one-node ``Add`` graph in a session that asks for the CUDA provider; the session
  must keep the CUDA provider (``get_providers()``) and return the right sum.

Usage (what setup.sh runs with the venv's python)::

    python -m infomerge.jetson.install_check --min-trt 10.3 [--no-gpu] [--no-ort-gpu] [--torch-index URL]

Exit status 0 when every check passes, 1 otherwise; each failure is one ``FAIL`` line with the fix.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from types import ModuleType

#: Indexes to try when the torch wheel cannot run on the GPU (docs/jetson.md, "wheel indexes").
OTHER_INDEXES = (
    "https://pypi.jetson-ai-lab.io/jp7/cu132",
    "https://pypi.jetson-ai-lab.io/sbsa/cu132",
)


def check_torch(torch: ModuleType, gpu: bool = True, index: str | None = None) -> list[str]:
    """Problems of the torch install: not seeing the GPU, or not able to run a kernel on it.

    Args:
        torch: the imported ``torch`` module (a stand-in in tests).
        gpu: require the GPU (``False`` in a ``docker build``, which has none).
        index: the wheel index torch came from, named in the fix.

    Returns:
        One message per problem (empty: fine).
    """
    if not gpu:
        return []
    if not torch.cuda.is_available():
        return [f"torch {torch.__version__} does not see the GPU (CPU-only wheel, or no access to "
                "/dev/nvhost*: in a container use --runtime nvidia)"]
    try:
        x = torch.ones(4, device="cuda")  # (4,) float32
        total = float((x * 2).sum())  # elementwise kernel + reduction, 4 * 2 = 8
    except Exception as exc:  # torch raises RuntimeError / torch.AcceleratorError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        arch = _device_arch(torch)
        others = " or ".join(i for i in OTHER_INDEXES if i != index)
        return [f"torch {torch.__version__} sees the GPU but cannot run a kernel on it ({first}); "
                f"the wheel{f' from {index}' if index else ''} was not built for this GPU{arch}. "
                f"Reinstall torch from another index: jetson/setup.sh --torch-index URL (try {others})"]
    if total != 8.0:
        return [f"torch {torch.__version__} computed 4 x 2 = {total} on the GPU; the install is broken"]
    return []


def _device_arch(torch: ModuleType) -> str:
    try:
        major, minor = torch.cuda.get_device_capability(0)
        built = " ".join(torch.cuda.get_arch_list())
        return f" (sm_{major}{minor}; the wheel has: {built or 'none listed'})"
    except Exception:
        return ""


def check_tensorrt(tensorrt: ModuleType | None, min_version: str) -> list[str]:
    """Problems of the TensorRT Python bindings: missing (``None``) or older than ``min_version``."""
    if tensorrt is None:
        return ["tensorrt does not import in the venv (install python3-libnvinfer; the venv must be "
                "created with --system-site-packages)"]
    want = tuple(int(x) for x in min_version.split("."))
    have = tuple(int(x) for x in tensorrt.__version__.split(".")[:len(want)])
    if have < want:
        return [f"tensorrt {tensorrt.__version__} < {min_version}"]
    return []


def tiny_add_model() -> bytes:
    """A serialized ONNX graph ``z = x + y`` over (4,) float32 inputs (opset 17)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "install_check", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def check_onnxruntime(
    ort: ModuleType, gpu: bool = True, model: Callable[[], bytes] = tiny_add_model
) -> list[str]:
    """Problems of onnxruntime: no CUDA provider, or a session that falls back to the CPU.

    Args:
        ort: the imported ``onnxruntime`` module (a stand-in in tests).
        gpu: require the CUDA provider to run a graph (``False``: only that it imports).
        model: the serialized graph to run (``z = x + y`` over (4,) float32).
    """
    import numpy as np

    providers = ort.get_available_providers()
    if not gpu:
        return []
    if "CUDAExecutionProvider" not in providers:
        return [f"onnxruntime {ort.__version__} lists no CUDAExecutionProvider ({', '.join(providers)}): "
                "the CPU wheel is installed; rerun jetson/setup.sh (it installs onnxruntime-gpu)"]
    try:
        sess = ort.InferenceSession(model(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        used = sess.get_providers()
        x = np.arange(4, dtype=np.float32)
        (z,) = sess.run(["z"], {"x": x, "y": x})
    except Exception as exc:
        return [f"onnxruntime {ort.__version__} cannot run a graph: {str(exc).strip().splitlines()[0]}"]
    if not used or used[0] != "CUDAExecutionProvider":
        return [f"onnxruntime {ort.__version__} lists the CUDA provider but a session fell back to "
                f"{', '.join(used) or 'nothing'}: its CUDA/cuDNN libraries do not load on this board "
                "(a wheel built for another CUDA major); install onnxruntime-gpu from the index of this "
                "JetPack (jetson/setup.sh --torch-index URL)"]
    if not np.array_equal(np.asarray(z), 2 * x):
        return [f"onnxruntime {ort.__version__} computed {list(z)} for 2 * {list(x)} on the GPU"]
    return []


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run every check, print ``OK``/``FAIL`` lines; 0 when all pass, 1 otherwise."""
    p = argparse.ArgumentParser(prog="python -m infomerge.jetson.install_check",
                                description=__doc__.split("\n")[0])
    p.add_argument("--min-trt", default="10.3", help="minimum TensorRT version (default 10.3)")
    p.add_argument("--no-gpu", action="store_true", help="do not require a GPU (container builds)")
    p.add_argument("--no-ort-gpu", action="store_true", help="the CPU onnxruntime wheel is kept")
    p.add_argument("--torch-index", default=None, help="the index torch was installed from (for the fix)")
    args = p.parse_args(argv)

    import infomerge

    problems: list[str] = []
    torch = _import("torch")
    if torch is None:
        problems.append("torch does not import in the venv")
    else:
        problems += check_torch(torch, gpu=not args.no_gpu, index=args.torch_index)
    tensorrt = _import("tensorrt")
    problems += check_tensorrt(tensorrt, args.min_trt)
    ort = _import("onnxruntime")
    if ort is None:
        problems.append("onnxruntime does not import in the venv")
    else:
        problems += check_onnxruntime(ort, gpu=not (args.no_gpu or args.no_ort_gpu))
    for line in problems:
        print("  FAIL  " + line)
    if problems:
        return 1
    ran = [] if args.no_gpu else ["torch"] + ([] if args.no_ort_gpu else ["onnxruntime"])
    print(f"  OK    infomerge {infomerge.__version__}, torch {torch.__version__}, tensorrt "
          f"{tensorrt.__version__}, onnxruntime {ort.__version__}"
          + (f"; a graph ran on the GPU in {' and '.join(ran)}" if ran else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
