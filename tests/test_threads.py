"""The threading policy: the default count, and ``--threads`` reaching torch and ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import psutil
import pytest
import torch
from onnx import TensorProto, helper

from infomerge.engines import threads
from infomerge.engines.ort import ort_session


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """Each test starts without an applied count and leaves torch's own setting as it was."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_threads", None)
    yield
    torch.set_num_threads(before)


def _mock_cpus(monkeypatch, affinity: set[int], physical: int | None, quota: int | None = None) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: affinity, raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: physical)
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: quota)


@pytest.mark.parametrize(
    ("affinity", "physical", "quota", "want"),
    [
        ({0, 1, 2, 3, 4, 5, 6, 7}, 8, None, 8),  # every core
        ({2, 5}, 8, None, 2),  # taskset -c 2,5: the affinity mask, not the machine
        ({0, 1, 2, 3, 4, 5, 6, 7}, 4, None, 4),  # 8 hyper-threads on 4 cores: the cores
        ({0, 1, 2, 3, 4, 5, 6, 7}, 8, 3, 3),  # docker --cpus 2.5 -> quota of 3 CPUs
        ({0}, None, None, 1),  # psutil cannot tell the physical cores
    ],
)
def test_default_threads_follows_affinity_cores_and_quota(monkeypatch, affinity, physical, quota, want):
    _mock_cpus(monkeypatch, affinity, physical, quota)
    assert threads.default_threads() == want


@pytest.mark.parametrize(
    ("text", "want"), [("150000 100000\n", 2), ("100000 100000", 1), ("max 100000", None)]
)
def test_cgroup_quota_is_rounded_up_to_whole_cpus(tmp_path, text, want):
    (tmp_path / "cpu.max").write_text(text)
    assert threads._cgroup_cpus(tmp_path) == want
    assert threads._cgroup_cpus(tmp_path / "missing") is None


def _identity_graph(path) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_apply_threads_sets_torch_and_every_later_ort_session(tmp_path, monkeypatch):
    graph = _identity_graph(tmp_path / "identity.onnx")
    _mock_cpus(monkeypatch, {0, 1, 2, 3}, 4)
    default = ort_session(graph).get_session_options()
    assert default.intra_op_num_threads == 4  # the policy's count, not ONNX Runtime's own default
    assert threads.apply_threads(3) == 3
    assert torch.get_num_threads() == 3
    assert ort_session(graph).get_session_options().intra_op_num_threads == 3
    assert ort_session(graph, threads=1).get_session_options().intra_op_num_threads == 1  # explicit wins
    with pytest.raises(ValueError, match=">= 1"):
        threads.apply_threads(0)


def test_ort_spinning_follows_the_policy_unless_asked(tmp_path, monkeypatch):
    graph = _identity_graph(tmp_path / "identity.onnx")
    key = "session.intra_op.allow_spinning"
    for policy, want in ((True, "1"), (False, "0")):
        monkeypatch.setattr("infomerge.engines.ort.ORT_SPINNING", policy)
        assert ort_session(graph).get_session_options().get_session_config_entry(key) == want
    assert ort_session(graph, spinning=True).get_session_options().get_session_config_entry(key) == "1"


class _Stop(Exception):
    pass


def _stop(*_args, **_kwargs):
    raise _Stop


def test_threads_flag_of_run_reaches_torch_and_ort(monkeypatch):
    from infomerge.runtime import cli

    monkeypatch.setattr(cli, "_build_pipeline", _stop)  # after the checks and the flag, before loading
    args = cli.build_parser().parse_args(["--threads", "3"])
    with pytest.raises(_Stop):
        cli.run(args)
    assert (torch.get_num_threads(), threads.intra_op_threads()) == (3, 3)


def test_threads_flag_of_bench_and_export(monkeypatch):
    from infomerge.bench import cli as bench
    from infomerge.export import cli as export

    monkeypatch.setattr(bench, "_checkpoint", _stop)
    with pytest.raises(_Stop):
        bench.run(bench.build_parser().parse_args(["--threads", "3"]))
    assert (torch.get_num_threads(), threads.intra_op_threads()) == (3, 3)

    seen = {}
    monkeypatch.setattr(export, "export", lambda opts: seen.update(torch=torch.get_num_threads()))
    assert export.main(["--threads", "1"]) == 0
    assert seen == {"torch": 1} and threads.intra_op_threads() == 1


@pytest.mark.parametrize("flag", ["0", "-2", "two"])
def test_bad_threads_is_a_usage_error(flag):
    from infomerge.runtime import cli

    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["--threads", flag])
    assert exc.value.code == 2


def test_openmp_waits_passively_unless_the_environment_says_otherwise():
    code = "import os, infomerge; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
