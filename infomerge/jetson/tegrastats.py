"""Jetson telemetry from ``tegrastats``: a line parser and a background sampler.

``tegrastats`` prints one line per interval. Its fields differ by JetPack release and module;
every variant below occurs on real boards and is covered by ``tests/fixtures/tegrastats_*.txt``:

- an optional ``MM-DD-YYYY HH:MM:SS`` prefix (JetPack 5.1+);
- ``RAM used/totalMB (lfb NxSIZE)``, ``SWAP used/totalMB (cached NMB)``;
- GPU load: ``GR3D_FREQ 12%`` (JetPack 6 without root), ``GR3D_FREQ 12%@611`` (JetPack 5),
  ``GR3D_FREQ 12%@[611]`` / ``GR3D_FREQ 0%@[305,305]`` (one clock per GPC, JetPack 5.1.2+/6),
  ``GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0`` (AGX Orin on early JetPack 5: one field per GPC),
  ``GR3D_FREQ @[1000,1000]`` (Thor: clocks without a load);
- power rails ``NAME inst/avg`` without unit (JetPack 4 and Xavier on JetPack 5), ``NAME instmW/avgmW``
  (Orin, JetPack 5 and 6) or ``NAME instmW/avgmW/maxmW`` (JetPack 7). Orin Nano/NX report
  ``VDD_IN VDD_CPU_GPU_CV VDD_SOC``; AGX Orin ``VDD_GPU_SOC VDD_CPU_CV VIN_SYS_5V0 VDDQ_VDD2_1V8AO``
  plus unconnected ``NC`` channels; AGX Xavier ``GPU CPU SOC CV VDDRQ SYS5V``. Rails appear only
  when tegrastats runs as root;
- temperatures ``name@47.875C``; ``-256C`` marks an absent sensor (e.g. ``CV0`` on an Orin Nano).

Public API (used by ``infomerge-bench --tegrastats``)::

    with TegrastatsSampler(interval_ms=100) as sampler:
        run_the_workload()
    summary = sampler.summary()   # dict, see TegrastatsSampler.summary

Units: memory in MB as tegrastats prints it (MiB), power in mW (instantaneous values; the running
average tegrastats prints beside it is ignored, we average the samples ourselves), load in percent,
temperature in degrees Celsius.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from infomerge.errors import InfomergeError

__all__ = [
    "TegrastatsError",
    "TegrastatsNotFoundError",
    "TegrastatsSample",
    "TegrastatsSampler",
    "parse_line",
    "parse_lines",
    "summarize",
]


class TegrastatsError(InfomergeError):
    """``tegrastats`` could not be run or stopped with an error before printing a sample."""


class TegrastatsNotFoundError(TegrastatsError, FileNotFoundError):
    """The ``tegrastats`` executable is not on PATH (this is not a Jetson running L4T)."""


# ---- parser ---------------------------------------------------------------------------------
_TIMESTAMP_RE = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s")
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB\b")
_SWAP_RE = re.compile(r"\bSWAP (\d+)/(\d+)MB\b")
# GR3D_FREQ / GR3D2_FREQ: "12%", "12%@611", "12%@[611,611]", "@[1000,1000]" (no load).
_GR3D_RE = re.compile(r"\bGR3D2?_FREQ\s+(?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC_RE = re.compile(r"\bEMC_FREQ\s+(\d+)%")
_CPU_RE = re.compile(r"\bCPU \[([^\]]*)\]")
_TEMP_RE = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# A rail: NAME inst[mW]/avg[mW][/max[mW]] followed by whitespace or the end of the line.
# "RAM 2448/7620MB" and "SWAP 0/3810MB" do not match: their second number is followed by "MB".
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(-?\d+)(?:mW)?/(-?\d+)(?:mW)?(?:/(-?\d+)(?:mW)?)?(?=\s|$)")
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM", "NC"})  # NC: an unconnected INA3221 channel
_ABSENT_SENSOR_C = -256.0


@dataclass(frozen=True)
class TegrastatsSample:
    """One parsed ``tegrastats`` line. A field is ``None`` (or empty) when the line lacks it.

    Attributes:
        timestamp: the ``MM-DD-YYYY HH:MM:SS`` prefix, when tegrastats printed one.
        ram_used_mb, ram_total_mb: RAM in use and RAM visible to Linux (MB, shared CPU/GPU memory).
        swap_used_mb, swap_total_mb: swap in use and swap size (MB).
        gpu_load_pct: GR3D load in percent; the mean over GR3D_FREQ and GR3D2_FREQ when both appear.
        gpu_freq_mhz: GR3D clock (MHz), the mean over the GPCs listed.
        emc_load_pct: memory-controller load in percent.
        cpu_load_pct: per-core load in percent, ``None`` for a core that is off.
        temps_c: temperatures in degrees C by sensor name; absent sensors (-256C) are left out.
        rails_mw: instantaneous power in mW by rail name (``NC`` channels left out).
    """

    timestamp: str | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    gpu_load_pct: float | None = None
    gpu_freq_mhz: float | None = None
    emc_load_pct: float | None = None
    cpu_load_pct: tuple[float | None, ...] = ()
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, float] = field(default_factory=dict)


def _mean(values):
    return sum(values) / len(values) if values else None


def parse_line(line: str) -> TegrastatsSample | None:
    """Parse one ``tegrastats`` line.

    Returns:
        the sample, or ``None`` for a line that carries none of RAM, GR3D load or a power rail
        (a blank line, a banner, a ``#`` comment).
    """
    ts = _TIMESTAMP_RE.match(line)
    ram = _RAM_RE.search(line)
    swap = _SWAP_RE.search(line)

    loads, freqs = [], []
    for load, freq in _GR3D_RE.findall(line):
        if load:
            loads.append(float(load))
        if freq:
            clocks = [float(f) for f in freq.split(",") if f]
            if clocks:
                freqs.append(sum(clocks) / len(clocks))

    emc = _EMC_RE.search(line)

    cpus: tuple[float | None, ...] = ()
    cpu = _CPU_RE.search(line)
    if cpu:
        parsed = []
        for core in cpu.group(1).split(","):
            core = core.strip()
            m = re.match(r"(\d+)%", core)
            parsed.append(float(m.group(1)) if m else None)
        cpus = tuple(parsed)

    temps = {
        name: float(value)
        for name, value in _TEMP_RE.findall(line)
        if float(value) != _ABSENT_SENSOR_C
    }
    rails = {
        name: float(inst) for name, inst, _avg, _max in _RAIL_RE.findall(line) if name not in _NOT_RAILS
    }

    if ram is None and not loads and not freqs and not rails:
        return None
    return TegrastatsSample(
        timestamp=ts.group(1) if ts else None,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
        swap_used_mb=int(swap.group(1)) if swap else None,
        swap_total_mb=int(swap.group(2)) if swap else None,
        gpu_load_pct=_mean(loads),
        gpu_freq_mhz=_mean(freqs),
        emc_load_pct=float(emc.group(1)) if emc else None,
        cpu_load_pct=cpus,
        temps_c=temps,
        rails_mw=rails,
    )


def parse_lines(lines: Iterable[str]) -> list[TegrastatsSample]:
    """Parse many lines, dropping those :func:`parse_line` returns ``None`` for."""
    return [s for s in (parse_line(line) for line in lines) if s is not None]


def _stat(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"avg": sum(values) / len(values), "peak": float(max(values))}


def summarize(samples: list[TegrastatsSample], interval_ms: int | None = None) -> dict:
    """Averages and peaks over samples.

    Returns a dict (JSON-serialisable)::

        {"samples": int, "interval_ms": int | None,
         "gpu_load_pct": {"avg": float, "peak": float} | None,
         "gpu_freq_mhz": {...} | None, "emc_load_pct": {...} | None,
         "ram_used_mb": {...} | None, "ram_total_mb": int | None,
         "swap_used_mb": {...} | None,
         "power_mw": {rail: {"avg": float, "peak": float}, ...},   # empty without root
         "temp_c": {sensor: {"avg": float, "peak": float}, ...},
         "notes": [str, ...]}

    A statistic is ``None`` when no sample carried it; a rail's average is taken over the samples
    that list the rail.
    """
    def collect(attr):
        return [getattr(s, attr) for s in samples if getattr(s, attr) is not None]

    rails: dict[str, list[float]] = {}
    temps: dict[str, list[float]] = {}
    for s in samples:
        for name, mw in s.rails_mw.items():
            rails.setdefault(name, []).append(mw)
        for name, c in s.temps_c.items():
            temps.setdefault(name, []).append(c)

    totals = collect("ram_total_mb")
    notes = []
    if not samples:
        notes.append("no tegrastats sample was taken (the run was shorter than one interval?)")
    elif not rails:
        notes.append("no power rail in the tegrastats output: run as root (sudo) to read the INA3221 rails")
    return {
        "samples": len(samples),
        "interval_ms": interval_ms,
        "gpu_load_pct": _stat(collect("gpu_load_pct")),
        "gpu_freq_mhz": _stat(collect("gpu_freq_mhz")),
        "emc_load_pct": _stat(collect("emc_load_pct")),
        "ram_used_mb": _stat(collect("ram_used_mb")),
        "ram_total_mb": max(totals) if totals else None,
        "swap_used_mb": _stat(collect("swap_used_mb")),
        "power_mw": {name: _stat(v) for name, v in rails.items()},
        "temp_c": {name: _stat(v) for name, v in temps.items()},
        "notes": notes,
    }


# ---- sampler --------------------------------------------------------------------------------
class TegrastatsSampler:
    """Runs ``tegrastats --interval N`` in the background and collects parsed samples.

    Use as a context manager (or call :meth:`start` / :meth:`stop`)::

        with TegrastatsSampler(interval_ms=100) as s:
            ...
        s.summary()

    Args:
        interval_ms: sampling interval handed to ``tegrastats --interval`` (ms, >= 1).
        executable: the program to run; looked up on PATH (default ``tegrastats``).
        logfile: optional path; every raw line read is appended there (for the run's records).

    Raises:
        ValueError: from ``__init__`` for an interval < 1 ms.
        TegrastatsNotFoundError: from :meth:`start` when the executable is not on PATH.
        TegrastatsError: from :meth:`start` when the process cannot be started, and from
            :meth:`stop` when it exited with an error before printing any sample (its stderr is
            in the message).
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats", logfile=None):
        if int(interval_ms) < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms!r}")
        self.interval_ms = int(interval_ms)
        self.executable = executable
        self.logfile = os.fspath(logfile) if logfile is not None else None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._samples: list[TegrastatsSample] = []
        self._stderr = ""
        self._errfile = None
        self._started_at: float | None = None
        self._duration_s: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> TegrastatsSampler:
        if self._proc is not None:
            raise TegrastatsError("this TegrastatsSampler is already running")
        path = shutil.which(self.executable)
        if path is None:
            raise TegrastatsNotFoundError(
                f"'{self.executable}' not found on PATH: tegrastats ships with L4T on NVIDIA Jetson boards "
                "only; run on a Jetson (as root to see power rails) or drop --tegrastats"
            )
        # stderr goes to a file, not a pipe: an unread pipe could fill up and stall tegrastats.
        self._errfile = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        try:
            self._proc = subprocess.Popen(
                [path, "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=self._errfile,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self._errfile.close()
            raise TegrastatsError(f"could not start {path}: {exc}") from exc
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        log = open(self.logfile, "a", encoding="utf-8") if self.logfile else None
        try:
            for line in self._proc.stdout:
                if log is not None:
                    log.write(line)
                sample = parse_line(line)
                if sample is not None:
                    with self._lock:
                        self._samples.append(sample)
        finally:
            if log is not None:
                log.close()

    def stop(self) -> dict:
        """Stop tegrastats, wait for the reader, and return :meth:`summary`."""
        proc = self._proc
        if proc is None:
            return self.summary()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._errfile.seek(0)
        self._stderr = self._errfile.read()
        self._errfile.close()
        if proc.stdout is not None:
            proc.stdout.close()
        self._duration_s = time.monotonic() - (self._started_at or time.monotonic())
        self._proc = None
        if proc.returncode not in (0, None, -15, -9) and not self._samples:
            raise TegrastatsError(
                f"{self.executable} exited with status {proc.returncode} before printing a sample: "
                f"{self._stderr.strip() or '(no message)'}"
            )
        return self.summary()

    def __enter__(self) -> TegrastatsSampler:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        except TegrastatsError:
            if exc_type is None:
                raise

    # -- results -----------------------------------------------------------------------------
    @property
    def samples(self) -> list[TegrastatsSample]:
        """A copy of the samples taken so far (safe to call while running)."""
        with self._lock:
            return list(self._samples)

    def summary(self) -> dict:
        """:func:`summarize` over the samples so far, plus ``duration_s`` (None while running)."""
        out = summarize(self.samples, self.interval_ms)
        out["duration_s"] = self._duration_s
        return out
