"""Describe the machine a benchmark ran on: CPU, memory, GPU, driver, library versions.

Everything is read without importing heavy optional packages where metadata suffices
(``importlib.metadata`` for TensorRT, Triton, ...), and nothing here raises: a field that cannot be
read is None.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata

# distributions whose versions go into results.json (those not installed are listed as None)
_LIBRARIES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-genai",
    "onnx",
    "tensorrt",
    "tensorrt-rtx-cu13-bindings",
    "triton",
    "transformers",
    "numpy",
    "opencv-python-headless",
    "polygraphy",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = (
            subprocess.run(
                [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    name, driver, mem = (s.strip() for s in (out[0].split(",") + ["", "", ""])[:3])
    return {"name": name, "driver": driver, "memory": mem}


def _jetson() -> str | None:
    """The L4T release line on a Jetson (``/etc/nv_tegra_release``), else None."""
    try:
        with open("/etc/nv_tegra_release", errors="replace") as fh:
            return fh.readline().strip().lstrip("# ") or "Jetson"
    except OSError:
        return None


def gpu_info() -> dict | None:
    """GPU name, compute capability, memory, driver and CUDA version; None without a CUDA device."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    smi = _nvidia_smi()
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "count": torch.cuda.device_count(),
        "driver": smi.get("driver"),
        "cuda_runtime": torch.version.cuda,
    }


def describe() -> dict:
    """The machine as a JSON-ready dict: host, OS, CPU, cores, memory, load average (1, 5, 15 min:
    other processes competing for the cores), GPU, ORT providers, library versions."""
    import psutil

    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except Exception:  # noqa: BLE001 - a broken ORT install must not stop the description
        providers = []
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": int(psutil.virtual_memory().total),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu_info(),
        "jetson": _jetson(),
        "ort_providers": providers,
        "libraries": {name: _version(name) for name in _LIBRARIES},
    }


def summary_line(machine: dict) -> str:
    """One line for a table caption or the docs: 'CPU x N cores, M GiB[, GPU (cc), driver]'."""
    cores = machine.get("cpu_affinity") or machine.get("cpu_cores_logical")
    parts = [f"{machine.get('cpu')} x {cores} cores", f"{machine.get('memory_bytes', 0) / 2**30:.0f} GiB RAM"]
    gpu = machine.get("gpu")
    if gpu:
        parts.append(f"{gpu['name']} (cc {gpu['compute_capability']}, driver {gpu.get('driver')})")
    else:
        parts.append("no GPU")
    if machine.get("jetson"):
        parts.append(machine["jetson"])
    return ", ".join(parts)


__all__ = ["cpu_name", "describe", "gpu_info", "summary_line"]
