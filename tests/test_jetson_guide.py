"""The guide is tested (issue 18): every command of ``jetson/README.md`` runs against a faked board.

For each board (Orin Nano 8GB with ov-0.5b, AGX Orin 64GB with ov-7b) and each JetPack (6.2: L4T R36.4.3,
TensorRT 10.3, Python 3.10; 7.2: L4T R39.2, TensorRT 10.16, Python 3.12) the test walks the README's
``bash`` blocks in order, in a workstation folder and a board folder:

- ``jetson/setup.sh`` and ``jetson/build_engines.sh`` run for real, in ``--dry-run`` form, against fake
  ``/etc/nv_tegra_release``, device-tree model, CUDA ``version.json``, TensorRT ``NvInferVersion.h``,
  ``/proc/meminfo`` and a fake python answering setup.sh's probe (the scripts' own env overrides);
- ``infomerge-*`` and ``python -m infomerge...`` commands are parsed by the real argument parsers (an
  unknown flag fails); ``infomerge-plan`` runs and must say the configuration fits; ``infomerge-export``
  and the engine builds are simulated by writing what they would write (manifest with backbone, frames
  and LLM execution provider; graphs; engines), so a later step that names a path nobody wrote fails;
- ``infomerge-run`` is checked the way the runtime checks an artifact: backbone, frames (the runtime
  samples the backbone's own), the LLM's execution provider against ``--device``, engines for the TRT
  backends;
- system commands (sudo, apt, nvpmodel, ...) must be in a known list; anything else fails.

Inline commands in the prose (``infomerge-...``, ``jetson/*.sh``, ``python -m infomerge...``) are
checked for flags too.
"""

from __future__ import annotations

import json
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
README = REPO / "jetson" / "README.md"

BOARDS = {
    "orin-nano-8gb": dict(backbone="ov-0.5b",
                          model="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                          mem_kb=7_802_000),
    "agx-orin-64gb": dict(backbone="ov-7b", model="NVIDIA Jetson AGX Orin Developer Kit", mem_kb=64_335_000),
}
JETPACKS = {
    "jp6.2": dict(release="# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                  "DATE: Wed Jan  8 01:49:37 UTC 2025", cuda="12.6.68", trt=(10, 3, 0), python="3.10.12",
                  plugin=False),
    "jp7.2": dict(release="# R39 (release), REVISION: 2.0, GCID: 40000000, BOARD: generic, EABI: aarch64, "
                  "DATE: Fri Jul 10 2026", cuda="13.2.51", trt=(10, 16, 1), python="3.12.3", plugin=True),
}
SYSTEM = {"cat", "apt", "apt-get", "nvpmodel", "grep", "jetson_clocks", "systemctl", "fallocate", "chmod",
          "mkswap", "swapon", "tee", "echo", "free", "tegrastats", "git", "cd", ".", "source", "rsync",
          "docker", "sync", "dmesg", "tail", "ps", "head", "python3", "pip", "gst-launch-1.0", "ls"}


# ---- reading the README -------------------------------------------------------------------------
def blocks() -> list[tuple[str, str]]:
    """(where, text) of every ```bash block, where = "board" or "workstation" from its '# on:' line."""
    out = []
    for m in re.finditer(r"```bash\n(.*?)```", README.read_text(), re.S):
        text = m.group(1)
        where = re.search(r"^# on: (board|workstation)\s*$", text, re.M)
        assert where, f"a bash block of jetson/README.md does not say where it runs ('# on: board'):\n{text}"
        out.append((where.group(1), text))
    return out


def commands(text: str) -> list[list[str]]:
    """Simple commands of a block: continuation lines joined, comments dropped, $VARS expanded, split
    on ;, &&, || and |."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        words, cmd = [], []
        for tok in lex:
            if tok in (";", "&&", "||", "|"):
                if cmd:
                    words.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            words.append(cmd)
        out.extend(words)
    return out


def _expand(word: str, env: dict) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in env, f"${name} is used before the guide sets it"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, word)


# ---- the fake board -----------------------------------------------------------------------------
def fake_board(root: Path, board: str, jp: str) -> dict:
    b, j = BOARDS[board], JETPACKS[jp]
    root.mkdir(parents=True)
    (root / "nv_tegra_release").write_text(j["release"] + "\n")
    (root / "model").write_bytes(b["model"].encode() + b"\0")
    cuda = root / "cuda"
    cuda.mkdir()
    (cuda / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": j["cuda"]}}))
    major, minor, patch = j["trt"]
    (root / "NvInferVersion.h").write_text(
        f"#define TRT_MAJOR_ENTERPRISE {major}\n#define TRT_MINOR_ENTERPRISE {minor}\n"
        f"#define TRT_PATCH_ENTERPRISE {patch}\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n"
        "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n"
    )
    (root / "meminfo").write_text(f"MemTotal: {b['mem_kb']} kB\nMemAvailable: {b['mem_kb'] * 9 // 10} kB\n"
                                  "SwapTotal: 16777212 kB\n")
    probe = root / "probe.txt"
    probe.write_text(f"python={j['python']}\nexecutable=/usr/bin/python3\ntensorrt={major}.{minor}.{patch}\n"
                     "torch=none\nonnxruntime=none\n")
    fake_py = root / "python3"
    fake_py.write_text(f'#!/usr/bin/env bash\n[[ "${{1:-}}" == "-" ]] && cat "{probe}"\nexit 0\n')
    fake_py.chmod(fake_py.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ)
    for k in ("INFOMERGE_L4T", "INFOMERGE_TORCH_INDEX", "INFOMERGE_TRT_VERSION"):
        env.pop(k, None)
    env.update(
        INFOMERGE_NV_TEGRA_RELEASE=str(root / "nv_tegra_release"), INFOMERGE_DEVICE_MODEL=str(root / "model"),
        INFOMERGE_CUDA_HOME=str(cuda), INFOMERGE_TRT_HEADER=str(root / "NvInferVersion.h"),
        INFOMERGE_MEMINFO=str(root / "meminfo"), INFOMERGE_PLAN="infomerge-plan",
    )
    return env | {"_FAKE_PY": str(fake_py)}


# ---- the walk -----------------------------------------------------------------------------------
def _parse(parser, argv, what):
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`{what} {shlex.join(argv)}` is refused by its parser (exit {exc.code})")


def _parsers():
    from infomerge.bench.cli import build_parser as bench
    from infomerge.export.cli import build_parser as export
    from infomerge.jetson.planner import build_parser as plan
    from infomerge.runtime.cli import build_parser as run

    return {"infomerge-export": export(), "infomerge-run": run(), "infomerge-bench": bench(),
            "infomerge-plan": plan()}


class Walk:
    def __init__(self, tmp: Path, board: str, jp: str):
        self.board, self.jp = board, jp
        self.backbone = BOARDS[board]["backbone"]
        self.env = fake_board(tmp / "fake", board, jp)
        self.ws = tmp / "workstation"
        self.host = tmp / "board"
        self.ws.mkdir()
        self.host.mkdir()
        self.cwd = {"workstation": self.ws, "board": self.host}
        repo = "https://example.invalid/infomerge.git"  # the guide's placeholder for this repository
        self.vars = {w: {"PATH": "/usr/bin", "INFOMERGE_REPO": repo} for w in ("workstation", "board")}
        self.setup_ran = False
        self.parsers = _parsers()
        self.log = []

    def choose(self, where, cmd):
        """A VAR=value line: the board's values (the AGX Orin line is the commented alternative)."""
        for word in cmd:
            name, _, value = word.partition("=")
            if name == "BACKBONE":
                value = self.backbone
            if name == "DEVICE":
                value = self.board
            self.vars[where][name] = value

    def step(self, where: str, raw: list[str]):
        env = self.vars[where] | {"PWD": str(self.cwd[where])}
        return self.run(where, [_expand(w, env) for w in raw])

    def run(self, where: str, cmd: list[str]):
        self.log.append((where, shlex.join(cmd)))
        while cmd and cmd[0] == "sudo":
            cmd = [w for w in cmd[1:] if w != "-E"] if cmd[1:2] == ["-E"] else cmd[1:]
        if cmd and cmd[0] == "env":
            cmd = cmd[1:]
            while cmd and "=" in cmd[0]:
                cmd = cmd[1:]
        if all("=" in w and not w.startswith("-") for w in cmd):
            return self.choose(where, cmd)
        name = cmd[0]
        cwd = self.cwd[where]
        if name in ("jetson/setup.sh", "jetson/build_engines.sh"):
            assert where == "board", f"{name} runs on the board"
            return self.script(name, cmd[1:], cwd)
        if name in self.parsers:
            return self.cli(where, name, cmd[1:], cwd)
        if name == "python" and cmd[1:3] == ["-m", "infomerge.engines.builder"]:
            from infomerge.engines.builder import main

            return self.builder(cmd[3:], cwd, main)
        assert name in SYSTEM, f"unknown command `{shlex.join(cmd)}` in jetson/README.md ({where})"
        if name == "git":
            assert cmd[1] == "clone" and cmd[-1] == "infomerge", cmd
            (cwd / "infomerge").mkdir(exist_ok=True)
        elif name == "cd":
            self.cwd[where] = cwd / cmd[1]
            assert self.cwd[where].is_dir(), f"cd {cmd[1]}: not there"
        elif name in (".", "source"):
            assert cmd[1] in (".venv/bin/activate",), cmd
            if where == "board":
                assert self.setup_ran, ". .venv/bin/activate before jetson/setup.sh created it"
        elif name == "rsync":
            src, dest = cmd[-2], cmd[-1]
            assert where == "workstation" and ":" in dest, cmd
            assert (cwd / src).is_dir(), f"rsync {src}: the previous steps did not write it"
            target = self.host / dest.split(":", 1)[1]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(cwd / src, target / Path(src).name, dirs_exist_ok=True)
        elif name == "docker" and cmd[1] == "build":
            dockerfile = cmd[cmd.index("-f") + 1]
            assert (REPO / dockerfile).is_file(), dockerfile
        return None

    def script(self, name, args, cwd):
        env = dict(self.env)
        if name == "jetson/setup.sh":
            env["INFOMERGE_PYTHON"] = self.env["_FAKE_PY"]
            args = args if "--check" in args else [*args, "--dry-run"]
        else:
            env["INFOMERGE_PYTHON"] = sys.executable
            args = [*args, "--dry-run"]
        r = subprocess.run(["bash", str(REPO / name), *args], env=env, cwd=cwd, capture_output=True,
                           text=True, timeout=120)
        where = f"{name} {shlex.join(args)} failed on {self.board} {self.jp}"
        assert r.returncode == 0, f"{where}:\n{r.stdout}{r.stderr}"
        if name == "jetson/setup.sh":
            self.setup_ran = self.setup_ran or "--check" not in args
            if "--check" not in args:
                assert "onnxruntime-gpu" in r.stdout and "pypi.jetson-ai-lab.io" in r.stdout
                assert "onnxruntime-genai" not in r.stdout and "[genai]" not in r.stdout
            return r
        # build_engines.sh: the choice it announces, then every command it would run
        if JETPACKS[self.jp]["plugin"]:
            assert "plugin graph compress_plugin.onnx as well" in r.stdout
        else:
            assert "standard graph compress.onnx only" in r.stdout
        assert "weakly typed networks with the FP16 builder flag" in r.stdout  # TensorRT 10 on both
        inner = [shlex.split(ln[2:]) for ln in r.stdout.splitlines() if ln.startswith("+ ")]
        assert inner, r.stdout
        from infomerge.engines.builder import main as builder_main

        for c in inner:
            if c[0] == "infomerge-plan":
                self.cli("board", "infomerge-plan", c[1:], cwd)
            elif c[0] == sys.executable:
                args = c[3:] if c[1] == "-m" else c[3:]
                self.builder(args, cwd, builder_main)
            else:
                pytest.fail(f"build_engines.sh would run {c}")
        built = {p.name for p in (cwd / f"artifacts/{self.backbone}/engines").glob("*.engine")}
        want = {"vision.sm87.engine", "compress.sm87.engine"}
        if JETPACKS[self.jp]["plugin"]:
            want.add("compress_plugin.sm87.engine")
        assert built == want, built
        return r

    def builder(self, args, cwd, main):
        from infomerge.engines.builder import main as _  # noqa: F401  (the parser below is main's)

        graph = Path(args[0])
        assert (cwd / graph).is_file(), f"builder: {graph} was not written by a previous step"
        out = args[args.index("--out") + 1] if "--out" in args else str(graph.parent / "engines")
        assert "--engine" in args and args[args.index("--engine") + 1] == "trt"
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("source")
        for flag in ("--engine", "--compute-capability", "--workspace", "--precision", "--out"):
            ap.add_argument(flag)
        _parse(ap, args, "python -m infomerge.engines.builder")
        (cwd / out).mkdir(parents=True, exist_ok=True)
        (cwd / out / f"{graph.stem}.sm87.engine").write_bytes(b"")

    def cli(self, where, name, args, cwd):
        ns = _parse(self.parsers[name], args, name)
        if name == "infomerge-plan":
            from infomerge.jetson.planner import main

            assert where == "board" or ns.list_devices
            if not ns.list_devices:
                assert ns.device == self.board and ns.backbone == self.backbone, args
                assert main(args) == 0, f"infomerge-plan {shlex.join(args)}: does not fit"
            return None
        if name == "infomerge-export":
            return self.export(where, ns, cwd)
        art = cwd / ns.artifacts
        assert art.is_dir(), f"{name} --artifacts {ns.artifacts}: no step wrote it"
        m = json.loads((art / "manifest.json").read_text())
        assert m["backbone"]["name"] == self.backbone
        if name == "infomerge-run":
            from infomerge.backbones.registry import get_backbone

            assert where == "board"
            frames = get_backbone(self.backbone).frames
            assert m["frames"] == frames, "the runtime samples the backbone's frames"
            if ns.llm == "ort":
                assert m["llm"]["execution_provider"] == ns.device, (
                    f"LLM built for {m['llm']['execution_provider']}, run with --device {ns.device}")
            for graph, backend in (("vision", ns.vision_backend), ("compress", ns.compress_backend)):
                if backend == "trt":
                    assert (art / "engines" / f"{graph}.sm87.engine").is_file(), f"no {graph} engine"
        if name == "infomerge-bench":
            assert ns.backbone == self.backbone
        return None

    def export(self, where, ns, cwd):
        from infomerge.backbones.registry import get_backbone

        assert where == "workstation", "the export (with the int4 LLM) runs on the workstation"
        assert ns.backbone == self.backbone
        out = cwd / (ns.output or f"artifacts/{ns.backbone}")
        out.mkdir(parents=True, exist_ok=True)
        m = {"backbone": {"name": ns.backbone}, "frames": ns.frames or get_backbone(ns.backbone).frames}
        graphs = ["vision.onnx", "compress.onnx"] + (["compress_plugin.onnx"] if ns.merge_plugin else [])
        for g in graphs:
            (out / g).write_bytes(b"")
        if ns.llm != "none":
            (out / "llm").mkdir(exist_ok=True)
            m["llm"] = {"dir": "llm", "execution_provider": ns.llm_ep}
        (out / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("jp", sorted(JETPACKS))
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_guide_walks_on_a_fake_board(tmp_path, board, jp):
    walk = Walk(tmp_path, board, jp)
    for where, text in blocks():
        for cmd in commands(text):
            walk.step(where, cmd)
    ran = [c for _, c in walk.log]
    assert any(c.startswith("infomerge-run ") for c in ran), "the guide ends in infomerge-run"
    assert any(c.startswith("jetson/build_engines.sh ") for c in ran)


def test_the_walk_catches_mistakes(tmp_path):
    """The checks can fail: a frames override, a CPU-built LLM, a wrong path and an unknown flag."""
    from infomerge.backbones.registry import get_backbone

    def walk_until_run(tmp, export_extra=(), run_path=None, run_flag=None):
        w = Walk(tmp, "orin-nano-8gb", "jp6.2")
        for where, text in blocks():
            for raw in commands(text):
                env = w.vars[where] | {"PWD": str(w.cwd[where])}
                cmd = [_expand(x, env) for x in raw]
                if cmd[0] == "infomerge-export":
                    cmd = [*cmd, *export_extra]
                if cmd[0] == "infomerge-run":
                    if run_path:
                        cmd[cmd.index("--artifacts") + 1] = run_path
                    if run_flag:
                        cmd.append(run_flag)
                w.run(where, cmd)

    assert get_backbone("ov-0.5b").frames == 32
    with pytest.raises(AssertionError, match="exported for 16 frames; infomerge-run samples 32"):
        walk_until_run(tmp_path / "a", export_extra=("--frames", "16"))
    with pytest.raises(AssertionError, match="built for the cpu execution provider"):
        walk_until_run(tmp_path / "b", export_extra=("--llm-ep", "cpu"))
    with pytest.raises(AssertionError, match="no step wrote it"):
        walk_until_run(tmp_path / "c", run_path="artifacts/ov-0.5b-jetson")
    with pytest.raises(pytest.fail.Exception, match="refused by its parser"):
        walk_until_run(tmp_path / "d", run_flag="--frames")


INLINE = re.compile(r"`((?:infomerge-(?:export|run|plan|bench)|jetson/(?:setup|build_engines)\.sh|"
                    r"python -m infomerge\.[\w.]+) [^`]*)`")


def test_inline_commands_use_real_flags():
    text = README.read_text()
    found = INLINE.findall(text)
    assert len(found) >= 5, found
    parsers = _parsers()
    scripts = {n: (REPO / "jetson" / n.split("/")[1]).read_text() for n in ("jetson/setup.sh",
                                                                               "jetson/build_engines.sh")}
    for line in found:
        words = shlex.split(line.replace("...", ""))
        if words[0] in parsers:
            _parse(parsers[words[0]], [w for w in words[1:] if w != "|"], words[0])
        elif words[0] in scripts:
            for w in words[1:]:
                if w.startswith("--"):
                    assert re.search(rf"^\s+{re.escape(w)}\)", scripts[words[0]], re.M) or re.search(
                        rf"\s{re.escape(w)}\)", scripts[words[0]]), f"{words[0]} has no option {w}"
        elif words[:3] == ["python", "-m", "infomerge.engines.builder"]:
            assert set(w for w in words if w.startswith("--")) <= {"--engine", "--workspace", "--out",
                                                                   "--precision", "--compute-capability"}
