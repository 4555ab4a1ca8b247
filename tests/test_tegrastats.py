"""tegrastats parser and sampler, on tegrastats lines in the formats of real boards.

The fixtures (tests/fixtures/tegrastats_*.txt) hold published tegrastats output of Orin Nano, Orin NX
and AGX Orin on JetPack 5, 6 and 7 (and AGX Xavier), plus a few lines in the same formats with edited
values; each file's header says which is which. Expected numbers below are read off the lines by hand.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infomerge.errors import InfomergeError
from infomerge.jetson.tegrastats import (
    TegrastatsError,
    TegrastatsNotFoundError,
    TegrastatsSampler,
    parse_line,
    parse_lines,
    summarize,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_lines(name: str) -> list[str]:
    text = (FIXTURES / f"tegrastats_{name}.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ---- one line per format -------------------------------------------------------------------
def test_orin_nano_jetpack6_line():
    s = parse_line(fixture_lines("orin_nano_jp6")[0])
    assert s.timestamp == "04-27-2026 14:59:43"
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb, s.swap_total_mb) == (775, 7620, 0, 3810)
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz is None  # "GR3D_FREQ 0%": no clock printed
    assert s.emc_load_pct is None  # JetPack 6 prints EMC_FREQ only in some modes
    assert s.cpu_load_pct == (0.0,) * 6
    assert s.rails_mw == {"VDD_IN": 4761.0, "VDD_CPU_GPU_CV": 515.0, "VDD_SOC": 1428.0}
    assert s.temps_c["tj"] == 49.062 and s.temps_c["gpu"] == 48.5 and len(s.temps_c) == 6


def test_orin_nano_jetpack62_bracketed_clock_and_engines():
    s = parse_line(fixture_lines("orin_nano_jp6")[3])
    assert s.gpu_load_pct == 99.0 and s.gpu_freq_mhz == 911.0  # "GR3D_FREQ 99%@[911]"
    assert s.emc_load_pct == 8.0  # "EMC_FREQ 8%@3199"
    assert s.rails_mw == {"VDD_IN": 12890.0, "VDD_CPU_GPU_CV": 6120.0, "VDD_SOC": 2950.0}


def test_orin_nx_jetpack5_line_with_cores_off_and_absent_date():
    s = parse_line(fixture_lines("orin_nx_jp5")[0])
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb) == (6334, 15388)
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == 611.0  # "GR3D_FREQ 0%@611"
    assert s.cpu_load_pct == (6.0, 9.0, 5.0, 16.0, None, None, None, None)
    assert s.rails_mw == {"VDD_IN": 5299.0, "VDD_CPU_GPU_CV": 773.0, "VDD_SOC": 1424.0}
    assert s.temps_c["CPU"] == 47.937 and s.temps_c["CV2"] == 45.75  # upper-case names on JetPack 5


def test_orin_nx_jetpack6_single_gpc_list():
    s = parse_line(fixture_lines("orin_nx_jp6")[1])
    assert s.gpu_load_pct == 90.0 and s.gpu_freq_mhz == 918.0  # "GR3D_FREQ 90%@[918]"
    assert s.cpu_load_pct[:4] == (64.0, 52.0, 47.0, 90.0)


def test_agx_orin_jetpack5_two_gpc_fields_nc_channels_and_absent_sensors():
    s = parse_line(fixture_lines("agx_orin_jp5")[1])
    # GR3D_FREQ 80%@1300 GR3D2_FREQ 60%@1300 -> load (80 + 60) / 2
    assert s.gpu_load_pct == 70.0 and s.gpu_freq_mhz == 1300.0
    # NC (not connected) channels are not rails
    assert s.rails_mw == {
        "VDD_GPU_SOC": 14399.0,
        "VDD_CPU_CV": 2400.0,
        "VIN_SYS_5V0": 5032.0,
        "VDDQ_VDD2_1V8AO": 1301.0,
    }
    # CV0/CV1/CV2 print -256C (no sensor): left out; GPU prints a real value on this line
    assert "CV0" not in s.temps_c and s.temps_c["GPU"] == 47.875
    first = parse_line(fixture_lines("agx_orin_jp5")[0])
    assert "GPU" not in first.temps_c  # GPU@-256C


def test_agx_orin_jetpack5_later_release_gpc_list():
    s = parse_line(fixture_lines("agx_orin_jp5")[2])
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == 0.0  # "GR3D_FREQ 0%@[0,0]"
    assert s.ram_total_mb == 62801


def test_agx_orin_jetpack6_padded_columns():
    s = parse_line(fixture_lines("agx_orin_jp6")[0])
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (29114, 30697, 4915)
    assert s.gpu_load_pct == 0.0 and s.gpu_freq_mhz == 305.0  # "GR3D_FREQ 0%@[305,305]"
    assert s.rails_mw == {"VDD_GPU_SOC": 3205.0, "VDD_CPU_CV": 4405.0, "VIN_SYS_5V0": 4767.0}
    assert s.cpu_load_pct[5] == 100.0 and len(s.cpu_load_pct) == 12


def test_agx_orin_negative_rail_is_kept():
    s = parse_line(fixture_lines("agx_orin_64gb_jp6")[0])
    assert s.rails_mw["VDD_CPU_CV"] == -398.0
    assert s.cpu_load_pct[-4:] == (None,) * 4


def test_agx_orin_jetpack7_three_value_rails_and_temperature_max():
    s = parse_line(fixture_lines("agx_orin_jp7")[0])
    assert s.gpu_load_pct == 12.0 and s.gpu_freq_mhz == 1300.0
    assert s.rails_mw == {"VDD_GPU_SOC": 5139.0, "VDD_CPU_CV": 3268.0, "VIN_SYS_5V0": 5500.0}
    assert s.temps_c == {"cpu": 52.968, "soc2": 48.406, "soc0": 49.531, "gpu": 47.625}
    assert s.swap_used_mb is None  # no SWAP field on that board


def test_agx_xavier_unitless_rails_named_like_the_core_list():
    s = parse_line(fixture_lines("agx_xavier_jp5")[0])
    assert s.rails_mw == {"GPU": 0.0, "CPU": 311.0, "SOC": 932.0, "CV": 0.0, "VDDRQ": 621.0, "SYS5V": 1482.0}
    assert s.cpu_load_pct == (2.0, 0.0, 0.0, 0.0, None, None, None, None)
    assert s.gpu_freq_mhz == 318.0


def test_thor_clock_list_without_load():
    s = parse_line("RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ @[1000,1000,1000] APE 150")
    assert s.gpu_load_pct is None and s.gpu_freq_mhz == 1000.0


@pytest.mark.parametrize("line", ["", "   ", "# comment", "tegrastats: started", "APE 174 NVENC off"])
def test_lines_without_a_tegrastats_field_give_none(line):
    assert parse_line(line) is None


def test_every_fixture_line_parses_with_ram_and_gpu_load():
    names = sorted(p.stem.removeprefix("tegrastats_") for p in FIXTURES.glob("tegrastats_*.txt"))
    assert len(names) >= 9
    for name in names:
        for line in fixture_lines(name):
            s = parse_line(line)
            assert s is not None and s.ram_used_mb is not None and s.gpu_load_pct is not None, (name, line)


# ---- summaries, by hand ----------------------------------------------------------------------
def test_summary_orin_nano_by_hand():
    summary = summarize(parse_lines(fixture_lines("orin_nano_jp6")), interval_ms=1000)
    assert summary["samples"] == 4 and summary["interval_ms"] == 1000
    # GR3D load 0, 55, 0, 99
    assert summary["gpu_load_pct"] == {"avg": (0 + 55 + 0 + 99) / 4, "peak": 99.0}
    # RAM used 775, 5173, 2513, 4204 of 7620
    assert summary["ram_used_mb"] == {"avg": (775 + 5173 + 2513 + 4204) / 4, "peak": 5173.0}
    assert summary["ram_total_mb"] == 7620
    assert summary["swap_used_mb"] == {"avg": (0 + 111 + 25 + 0) / 4, "peak": 111.0}
    # instantaneous (first) values only; tegrastats' running average after the slash is ignored
    assert summary["power_mw"] == {
        "VDD_IN": {"avg": (4761 + 6030 + 4744 + 12890) / 4, "peak": 12890.0},
        "VDD_CPU_GPU_CV": {"avg": (515 + 1913 + 1273 + 6120) / 4, "peak": 6120.0},
        "VDD_SOC": {"avg": (1428 + 1557 + 1234 + 2950) / 4, "peak": 2950.0},
    }
    # only the fourth line prints a GPU clock and EMC load
    assert summary["gpu_freq_mhz"] == {"avg": 911.0, "peak": 911.0}
    assert summary["emc_load_pct"] == {"avg": 8.0, "peak": 8.0}
    assert summary["temp_c"]["tj"] == {"avg": (49.062 + 50.718 + 51.718 + 59.906) / 4, "peak": 59.906}
    assert summary["notes"] == []


def test_summary_agx_orin_jetpack5_by_hand():
    summary = summarize(parse_lines(fixture_lines("agx_orin_jp5")))
    # per-line load = mean over GR3D_FREQ and GR3D2_FREQ: (0+0)/2, (80+60)/2, 0
    assert summary["gpu_load_pct"] == {"avg": (0 + 70 + 0) / 3, "peak": 70.0}
    assert summary["power_mw"]["VDD_GPU_SOC"] == {"avg": (2399 + 14399 + 2340) / 3, "peak": 14399.0}
    assert summary["power_mw"]["VIN_SYS_5V0"] == {"avg": (4032 + 5032 + 4025) / 3, "peak": 5032.0}
    assert "NC" not in summary["power_mw"]
    # absent-sensor -256C readings must not drag the GPU temperature average down
    assert summary["temp_c"]["GPU"] == {"avg": 47.875, "peak": 47.875}


def test_summary_without_rails_says_why():
    summary = summarize(parse_lines(fixture_lines("agx_orin_jp5_norails")))
    assert summary["power_mw"] == {}
    assert summary["gpu_load_pct"] == {"avg": (75 + 0) / 2, "peak": 75.0}
    assert any("root" in note for note in summary["notes"])


def test_summary_of_nothing():
    summary = summarize([])
    assert summary["samples"] == 0 and summary["gpu_load_pct"] is None and summary["power_mw"] == {}
    assert summary["notes"]


# ---- the sampler, against a fake tegrastats on PATH ----------------------------------------------
def _fake_tegrastats(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "tegrastats"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sampler_collects_and_summarises(fake_path, tmp_path):
    fixture = FIXTURES / "tegrastats_orin_nano_jp6.txt"
    argv_file = tmp_path / "argv.txt"
    _fake_tegrastats(
        fake_path,
        f"""
        import sys, time
        open({str(argv_file)!r}, "w").write(" ".join(sys.argv[1:]))
        interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
        for line in open({str(fixture)!r}):
            if not line.startswith("#"):
                print(line, end="", flush=True)
                time.sleep(interval)
        time.sleep(60)  # like tegrastats: keep running until stopped
        """,
    )
    log = tmp_path / "tegrastats.log"
    with TegrastatsSampler(interval_ms=5, logfile=log) as sampler:
        assert _wait_for(lambda: len(sampler.samples) == 4)
    summary = sampler.summary()
    assert argv_file.read_text() == "--interval 5"
    expected = summarize(parse_lines(fixture_lines("orin_nano_jp6")), interval_ms=5)
    assert {k: v for k, v in summary.items() if k != "duration_s"} == expected
    assert summary["duration_s"] is not None and summary["duration_s"] > 0
    assert len([ln for ln in log.read_text().splitlines() if ln.strip()]) == 4


def test_sampler_reports_missing_tegrastats(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    sampler = TegrastatsSampler(interval_ms=100)
    with pytest.raises(TegrastatsNotFoundError, match="not found on PATH") as info:
        sampler.start()
    assert isinstance(info.value, InfomergeError) and isinstance(info.value, FileNotFoundError)


def test_sampler_reports_a_failing_tegrastats(fake_path):
    _fake_tegrastats(
        fake_path,
        """
        import sys
        sys.stderr.write("tegrastats: permission denied\\n")
        sys.exit(1)
        """,
    )
    sampler = TegrastatsSampler(interval_ms=10).start()
    assert _wait_for(lambda: sampler._proc.poll() is not None)
    with pytest.raises(TegrastatsError, match="permission denied"):
        sampler.stop()


def test_sampler_rejects_bad_interval():
    with pytest.raises(ValueError):
        TegrastatsSampler(interval_ms=0)
