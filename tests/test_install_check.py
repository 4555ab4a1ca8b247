"""``python -m infomerge.jetson.install_check``, the last step of ``jetson/setup.sh``, against stand-ins
for torch, TensorRT and onnxruntime that fail the way wrong Jetson wheels do (no GPU here): a torch
that sees the GPU but has no kernel for it, an onnxruntime whose CUDA session falls back to the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest

from infomerge.jetson import install_check as ic

NO_KERNEL = "CUDA error: no kernel image is available for execution on the device"


class FakeTensor:
    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32)

    def __mul__(self, k):
        return FakeTensor(self.values * k)

    def sum(self):
        return FakeTensor(self.values.sum())

    def __float__(self):
        return float(self.values)


def fake_torch(*, available=True, kernel_error=None, scale=1.0):
    """A torch stand-in: ``ones`` raises ``kernel_error`` (a wheel without this GPU's arch), or
    returns tensors scaled by ``scale`` (1: correct)."""

    def ones(n, device=None):
        assert device == "cuda"
        if kernel_error:
            raise RuntimeError(kernel_error)
        return FakeTensor(np.ones(n) * scale)

    cuda = SimpleNamespace(is_available=lambda: available, get_device_capability=lambda i: (8, 7),
                           get_arch_list=lambda: ["sm_90", "sm_100"])
    return SimpleNamespace(__version__="2.9.1", cuda=cuda, ones=ones)


def test_torch_that_runs_a_kernel_passes():
    assert ic.check_torch(fake_torch()) == []


def test_torch_without_a_kernel_for_this_gpu_names_the_arch_and_other_indexes():
    [msg] = ic.check_torch(fake_torch(kernel_error=NO_KERNEL), index="https://pypi.jetson-ai-lab.io/sbsa/cu130")
    assert "sees the GPU but cannot run a kernel on it (" + NO_KERNEL + ")" in msg
    assert "sm_87; the wheel has: sm_90 sm_100" in msg
    assert "from https://pypi.jetson-ai-lab.io/sbsa/cu130" in msg
    assert "--torch-index URL (try https://pypi.jetson-ai-lab.io/jp7/cu132 or " in msg


def test_torch_other_indexes_leave_out_the_one_used():
    [msg] = ic.check_torch(fake_torch(kernel_error=NO_KERNEL), index=ic.OTHER_INDEXES[0])
    assert msg.endswith(f"(try {ic.OTHER_INDEXES[1]})")


def test_torch_without_gpu_and_wrong_results():
    assert "does not see the GPU" in ic.check_torch(fake_torch(available=False))[0]
    assert "computed 4 x 2 = 4.0" in ic.check_torch(fake_torch(scale=0.5))[0]
    assert ic.check_torch(fake_torch(available=False), gpu=False) == []  # docker build: no GPU


def test_tensorrt_version_and_missing_bindings():
    assert ic.check_tensorrt(SimpleNamespace(__version__="10.3.0.30"), "10.3") == []
    assert ic.check_tensorrt(SimpleNamespace(__version__="10.16.1.11"), "10.3") == []  # 16 > 3, not "1" < "3"
    assert ic.check_tensorrt(SimpleNamespace(__version__="8.6.2"), "10.3") == ["tensorrt 8.6.2 < 10.3"]
    assert "python3-libnvinfer" in ic.check_tensorrt(None, "10.3")[0]


def test_the_tiny_graph_adds():
    """The graph the check runs, in the real onnxruntime on the CPU: z = x + y."""
    sess = onnxruntime.InferenceSession(ic.tiny_add_model(), providers=["CPUExecutionProvider"])
    x, y = np.array([1, 2, 3, 4], np.float32), np.array([10, 20, 30, 40], np.float32)
    np.testing.assert_array_equal(sess.run(["z"], {"x": x, "y": y})[0], [11, 22, 33, 44])


class FakeSession:
    def __init__(self, providers, result=None):
        self.providers, self.result = providers, result

    def get_providers(self):
        return self.providers

    def run(self, names, feeds):
        return [feeds["x"] + feeds["y"] if self.result is None else self.result]


def fake_ort(used, result=None):
    return SimpleNamespace(
        __version__="1.23.0",
        get_available_providers=lambda: [
            "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        InferenceSession=lambda model, providers: FakeSession(used, result),
    )


def test_onnxruntime_on_cuda_passes():
    assert ic.check_onnxruntime(fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"])) == []


def test_onnxruntime_session_that_falls_back_to_the_cpu_fails():
    [msg] = ic.check_onnxruntime(fake_ort(["CPUExecutionProvider"]))
    assert "lists the CUDA provider but a session fell back to CPUExecutionProvider" in msg


def test_onnxruntime_wrong_result_fails():
    msg = ic.check_onnxruntime(fake_ort(["CUDAExecutionProvider"], result=np.zeros(4, np.float32)))[0]
    assert "computed [" in msg


def test_the_cpu_wheel_lists_no_cuda_provider():
    """This machine's real onnxruntime is the CPU wheel: exactly what setup.sh must replace."""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    [msg] = ic.check_onnxruntime(onnxruntime)
    assert "lists no CUDAExecutionProvider" in msg and "onnxruntime-gpu" in msg
    assert ic.check_onnxruntime(onnxruntime, gpu=False) == []


def test_main_without_gpu_passes_here(capsys, monkeypatch):
    """A container build (--no-gpu) on this machine: torch, onnxruntime import; TensorRT stand-in."""
    monkeypatch.setattr(ic, "_import", lambda name: SimpleNamespace(__version__="10.16.1")
                        if name == "tensorrt" else __import__(name))
    assert ic.main(["--no-gpu", "--min-trt", "10.3"]) == 0
    assert capsys.readouterr().out.startswith("  OK    infomerge ")


def test_main_reports_every_failure(capsys, monkeypatch):
    mods = {"torch": fake_torch(kernel_error=NO_KERNEL), "tensorrt": None,
            "onnxruntime": fake_ort(["CPUExecutionProvider"])}
    monkeypatch.setattr(ic, "_import", mods.get)
    assert ic.main(["--torch-index", "https://pypi.jetson-ai-lab.io/jp7/cu132"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("  FAIL  ") for line in out)
