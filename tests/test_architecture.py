"""The package's layering (pyproject.toml [tool.importlinter]) holds: no upward or circular import
between layers, and compress imports nothing of the package but infomerge.errors."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout or "broken" not in proc.stdout.split("Contracts:")[-1]


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path):
    """docs/architecture.md's toy method, added to a copy of the package as the docs say, runs through
    infomerge-run, infomerge-export (its fixed-budget graph, validated) and infomerge-bench."""
    import difflib
    import json
    import os

    pkg = tmp_path / "src" / "infomerge"
    shutil.copytree(ROOT / "infomerge", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "docs" / "examples" / "uniform_pool.py", pkg / "compress" / "uniform_pool.py")
    registry = pkg / "compress" / "methods.py"
    before = registry.read_text()
    marker = '    "infomerge.compress.presets",\n'
    registry.write_text(before.replace(marker, marker + '    "infomerge.compress.uniform_pool",\n'))

    # exactly one new module and one changed line
    new = {p.relative_to(pkg) for p in pkg.rglob("*.py")} - {
        p.relative_to(ROOT / "infomerge") for p in (ROOT / "infomerge").rglob("*.py")
    }
    assert new == {Path("compress/uniform_pool.py")}
    diff = [
        line
        for line in difflib.unified_diff(before.splitlines(), registry.read_text().splitlines(), lineterm="")
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == ['+    "infomerge.compress.uniform_pool",']

    env = {**os.environ, "PYTHONPATH": str(pkg.parent), "PYTHONUNBUFFERED": "1"}

    def run(module, *args):
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = run(
        "infomerge.runtime.cli",
        "--method",
        "uniform_pool",
        "--retention",
        "0.25",
        "--max-new-tokens",
        "2",
        "--json",
        str(tmp_path / "run.json"),
    )
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["pipeline"]["method"] == "uniform_pool"
    assert len(record["kept_index"]) == 8 * 196  # 32 frames in windows of 4: 8 x N tokens
    assert "answer:" in out

    art = tmp_path / "art"
    run(
        "infomerge.export.cli",
        "--method",
        "uniform_pool",
        "--retention",
        "0.25",
        "--frames",
        "4",
        "--output",
        str(art),
    )
    manifest = json.loads((art / "manifest.json").read_text())
    comp = manifest["graphs"]["compress"]
    assert comp["method"] == "uniform_pool" and comp["tokens_kept"] == 1 * 196
    assert comp["validation"]["ok"]

    bench = tmp_path / "bench"
    run(
        "infomerge.bench.cli",
        "--method",
        "uniform_pool",
        "--retention",
        "1.0",
        "0.25",
        "--backends",
        "torch",
        "--frames",
        "4",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--ttft-runs",
        "0",
        "--decode-tokens",
        "1",
        "--output",
        str(bench),
    )
    results = json.loads((bench / "results.json").read_text())
    methods = {row["method"] for row in results["rows"]}
    assert "uniform_pool" in methods
