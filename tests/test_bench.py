"""Benchmark harness: timing statistics, memory probe, report files, and ``infomerge-bench`` end to end."""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch

from infomerge import timing
from infomerge.bench.results import MISMATCH, OK, UNAVAILABLE, Row, fill_speedups
from infomerge.timing import Measurement, measure, speedup, summarize


def _p90_by_hand(xs):
    """Linear-interpolation percentile, written out (rank 0.9 * (n - 1) between order statistics)."""
    s = sorted(xs)
    rank = 0.9 * (len(s) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (rank - lo) * (s[hi] - s[lo])


@pytest.mark.parametrize(
    "xs",
    [[5.0], [3.0, 1.0], [1.0, 2.0, 3.0, 4.0, 100.0], [float(i * i % 17) for i in range(1, 24)], [2.5] * 7],
)
def test_summarize_matches_independent_computation(xs):
    st = summarize(xs)
    assert st.median_ms == pytest.approx(statistics.median(xs))
    assert st.p90_ms == pytest.approx(_p90_by_hand(xs))
    assert st.mean_ms == pytest.approx(statistics.fmean(xs))
    assert st.std_ms == pytest.approx(statistics.pstdev(xs))
    assert (st.min_ms, st.max_ms, st.runs) == (min(xs), max(xs), len(xs))
    assert list(st.samples_ms) == xs


def test_summarize_rejects_bad_samples():
    for bad in ([], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError):
            summarize(bad)


def test_measure_counts_warmups_and_times_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)
        return len(calls)

    m = measure(fn, runs=4, warmup=2)
    assert len(calls) == 6
    assert m.stats.runs == 4
    assert m.output == 6  # the last run's return value
    assert 9.0 <= m.stats.median_ms < 60.0
    assert m.memory_kind == "rss" and m.peak_memory_bytes > 0
    with pytest.raises(ValueError):
        measure(fn, runs=0)


def test_peak_rss_sees_a_transient_allocation():
    """The peak covers the RSS seen (by psutil, independently) while a transient array was alive.

    Compared with the RSS observed inside the call rather than with the RSS before it: the
    allocator may reuse pages that an earlier test left resident, so "before + size" is not a law.
    The kernel updates VmHWM lazily (at unmap time), so it may trail an instantaneous VmRSS reading
    by a few pages: 1 MiB of slack.
    """
    import numpy as np

    seen = []

    def work():
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, written, freed on return
        seen.append(timing.current_rss())
        return float(a.sum())

    m = measure(work, runs=1, warmup=0)
    assert m.memory_kind == "rss"
    assert m.peak_memory_bytes >= seen[0] - 2**20
    assert m.peak_memory_bytes >= 64 * 2**20


def test_speedups_against_the_baseline_row():
    def meas(ms):
        return Measurement(summarize([ms]), None, "none")

    base = Row("torch", "eager", "none", 1.0, stages={"prefill": meas(100.0)}, ttft=meas(400.0))
    r15 = Row("torch", "eager", "infomerge", 0.15, stages={"prefill": meas(20.0)}, ttft=meas(160.0))
    other = Row("ort", "cpu-ep", "infomerge", 0.15, stages={"prefill": meas(5.0)}, ttft=meas(5.0))
    missing = Row("trt", "-", "infomerge", 0.15, status=UNAVAILABLE, reason="TensorRT not installed")
    fill_speedups([base, r15, other, missing])
    assert base.prefill_speedup == 1.0
    assert r15.prefill_speedup == pytest.approx(5.0)
    assert r15.ttft_speedup == pytest.approx(2.5)
    assert other.prefill_speedup is None  # no ORT baseline in this list
    assert missing.prefill_speedup is None
    assert speedup(None, 1.0) is None and speedup(1.0, 0.0) is None
    assert r15.ttft_vs_hf is None  # no Hugging Face row in this list


def test_speedups_against_the_hugging_face_row():
    def meas(ms):
        return Measurement(summarize([ms]), None, "none")

    def stages(vision, prefill):
        return {"vision": meas(vision), "prefill": meas(prefill)}

    hf = Row("hf", "sdpa", "none", 1.0, stages=stages(300.0, 90.0), ttft=meas(420.0))
    base = Row("torch", "eager", "none", 1.0, stages=stages(400.0, 100.0), ttft=meas(560.0))
    r15 = Row("ort", "cpu-ep", "infomerge", 0.15, stages=stages(250.0, 12.0), ttft=meas(280.0))
    failed = Row("ort", "cpu-ep", "infomerge", 0.05, status="failed", reason="boom")
    fill_speedups([base, r15, hf, failed])
    # by hand: HF median / row median
    assert (base.vision_vs_hf, base.prefill_vs_hf, base.ttft_vs_hf) == pytest.approx((0.75, 0.9, 0.75))
    assert (r15.vision_vs_hf, r15.prefill_vs_hf, r15.ttft_vs_hf) == pytest.approx((1.2, 7.5, 1.5))
    assert hf.ttft_vs_hf == 1.0 and hf.ttft_speedup == 1.0
    assert failed.ttft_vs_hf is None and r15.ttft_speedup is None  # no ORT r = 1.0 row here
    d = r15.to_dict()
    assert (d["vision_vs_hf"], d["prefill_vs_hf"], d["ttft_vs_hf"]) == pytest.approx((1.2, 7.5, 1.5))


def test_report_files(tmp_path):
    from rich.console import Console

    from infomerge.bench import report

    def meas(ms):
        return Measurement(summarize([ms, ms * 1.1]), 2**20, "rss")

    def stages(k):
        names = ("video_decode", "vision", "compress", "assemble", "prefill", "token_decode")
        return {s: meas(k * v) for s, v in zip(names, (5, 20, 1, 0.5, 40, 30))}

    rows = [
        Row("torch", "eager", "none", 1.0, stages=stages(1.0), ttft=meas(66), flops={"kept_tflops": 1.0}),
        Row(
            "torch",
            "eager",
            "infomerge",
            0.15,
            stages=stages(0.5),
            ttft=meas(30),
            flops={"kept_tflops": 0.15},
        ),
        Row(
            "ort",
            "cpu-ep",
            "none",
            1.0,
            status=MISMATCH,
            reason="vision max|diff| 0.5",
            stages=stages(1.0),
            ttft=meas(60),
        ),
        Row("trt", "-", "none", 1.0, status=UNAVAILABLE, reason="TensorRT not installed"),
    ]
    fill_speedups(rows)
    console = Console(record=True, width=250)
    console.print(report.table(rows))
    text = console.export_text()
    assert "CHECK FAILED [1]" in text and "unavailable [2]" in text and "2.00x" in text
    assert report.footnotes(rows) == [
        "[1] ort/cpu-ep: vision max|diff| 0.5",
        "[2] trt/-: TensorRT not installed",
    ]
    js = report.write_json(tmp_path / "r" / "results.json", {"rows": rows})
    data = json.loads(js.read_text())
    assert data["rows"][1]["prefill_speedup"] == pytest.approx(2.0)
    assert data["rows"][0]["stages"]["vision"]["samples_ms"] == [20.0, 22.0]
    png = report.plot(rows, tmp_path / "r" / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["plot.png", "results.json"]
    again = report.rows_from_json(json.loads(js.read_text()))
    assert report.markdown(again) == report.markdown(rows)
    assert "| ort/cpu-ep | none | 1 |" in report.markdown(rows)
    assert rows[0].status == OK


def _fake_tegrastats(tmp_path, monkeypatch):
    """A stand-in `tegrastats` on PATH printing one Orin-format line every 50 ms (GPU 37 %, VDD_IN 5 W)."""
    line = (
        "RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,2%@729] GR3D_FREQ 37% "
        "VDD_IN 5000mW/5000mW"
    )
    exe = tmp_path / "bin" / "tegrastats"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nwhile true; do echo '{line}'; sleep 0.05; done\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_infomerge_bench_tiny_end_to_end(tmp_path, capsys, monkeypatch):
    """`infomerge-bench --backbone tiny` with small runs: every stage on torch and ort, the trt row with its
    reason, the Hugging Face row (token count by hand, speedups against it recomputed from the recorded
    medians), table, results.json and plot. A strict logits tolerance makes the int4 ORT LLM fail its
    cross-check, which must flag the ort rows (still measured) and leave the torch rows ok. A stand-in
    tegrastats checks the --tegrastats wiring."""
    from infomerge.bench.cli import PLOT_PNG, RESULTS_JSON, RESULTS_MD, main
    from infomerge.bench.results import STAGES

    _fake_tegrastats(tmp_path, monkeypatch)

    out = tmp_path / "out"
    argv = [
        "--backbone",
        "tiny",
        "--frames",
        "4",
        "--retention",
        "1.0",
        "0.15",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--ttft-runs",
        "1",
        "--decode-tokens",
        "2",
        "--tol-logits",
        "0.999999",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--tegrastats",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "torch/eager" in text and "ort/cpu-ep" in text and "trt/-" in text and "hf/sdpa" in text
    assert "CHECK FAILED" in text and "first-token logits cosine" in text

    data = json.loads((out / RESULTS_JSON).read_text())
    assert data["command"].startswith("infomerge-bench --backbone tiny")
    assert data["machine"]["cpu"] and "torch" in data["machine"]["libraries"]
    rows = {(r["backend"], r["method"], r["retention"]): r for r in data["rows"]}
    assert set(rows) == {
        ("torch", "none", 1.0),
        ("torch", "infomerge", 0.15),
        ("ort", "none", 1.0),
        ("ort", "infomerge", 0.15),
        ("trt", "-", None),
        ("hf", "none", 1.0),
    }
    hf = rows[("hf", "none", 1.0)]
    # 4 frames x 14 x 14 pooled tokens + the one newline, all in the LLM (HF expands <video> to them)
    assert hf["visual_tokens"] == 4 * 14 * 14 + 1 and hf["status"] == "ok"
    assert {"vision", "assemble", "prefill", "token_decode"} <= set(hf["stages"])
    assert "compress" not in hf["stages"] and hf["ttft"]["runs"] == 1
    by_metric = {d["metric"]: d for d in hf["check"]["details"]}  # against torch's uncompressed row
    assert by_metric["max rel |diff| of H"]["value"] < 1e-5
    assert by_metric["first-token logits cosine"]["value"] > 0.99999
    for r in data["rows"]:
        if r["status"] not in ("ok", "mismatch"):
            continue
        for stage, field in (("vision", "vision_vs_hf"), ("prefill", "prefill_vs_hf")):
            want = hf["stages"][stage]["median_ms"] / r["stages"][stage]["median_ms"]
            assert r[field] == pytest.approx(want, rel=1e-12)
        assert r["ttft_vs_hf"] == pytest.approx(hf["ttft"]["median_ms"] / r["ttft"]["median_ms"], rel=1e-12)
    for backend in ("torch", "ort"):
        base, comp = rows[(backend, "none", 1.0)], rows[(backend, "infomerge", 0.15)]
        for r in (base, comp):
            assert set(r["stages"]) == set(STAGES)
            for m in r["stages"].values():
                assert m["runs"] == 2 and len(m["samples_ms"]) == 2 and m["median_ms"] >= 0
                assert m["peak_memory_bytes"] > 0
            assert r["ttft"]["runs"] == 1 and r["decode_tokens_per_s"] > 0
        assert base["visual_tokens"] == 4 * 196 + 1 and comp["visual_tokens"] < 0.2 * base["visual_tokens"]
        assert base["prefill_speedup"] == 1.0 and comp["prefill_speedup"] > 0
        assert comp["flops"]["nominal_tokens"] == round(0.15 * 4 * 196)
    assert rows[("torch", "none", 1.0)]["status"] == "ok" and rows[("torch", "none", 1.0)]["check"] is None
    ort = rows[("ort", "infomerge", 0.15)]
    assert ort["status"] == "mismatch" and not ort["check"]["ok"]
    by_metric = {d["metric"]: d for d in ort["check"]["details"]}
    assert by_metric["max rel |diff| of H, A, g"]["ok"]  # same fp32 vision graph
    assert by_metric["kept-index Jaccard"]["value"] > 0.85
    assert (
        rows[("trt", "-", None)]["status"] == "unavailable"
        and "TensorRT" in rows[("trt", "-", None)]["reason"]
    )
    assert (out / PLOT_PNG).read_bytes()[:4] == b"\x89PNG"
    md = (out / RESULTS_MD).read_text()
    assert "| torch/eager | infomerge | 0.15 |" in md and "] trt/-: TensorRT" in md
    assert "| hf/sdpa | none | 1 | 785 |" in md
    assert data["goals"] and {g["backend"] for g in data["goals"]} == {"torch/eager", "ort/cpu-ep"}
    tele = data["telemetry"]
    assert set(tele) == {"torch/eager", "ort/cpu-ep", "trt/-", "hf/sdpa"}
    assert tele["torch/eager"]["gpu_load_pct"]["peak"] == 37.0
    assert tele["ort/cpu-ep"]["power_mw"]["VDD_IN"]["avg"] == 5000.0
    assert "tegrastats torch/eager" in text


def test_bad_usage_writes_nothing(tmp_path, capsys):
    from infomerge.bench.cli import main

    out = tmp_path / "out"
    assert main(["--retention", "0", "--output", str(out)]) == 2
    assert "--retention" in capsys.readouterr().err
    assert main(["--video", str(tmp_path / "missing.mp4"), "--output", str(out)]) == 2
    assert not out.exists()


def test_trt_reasons(monkeypatch):
    """The reason a trt row shows, for the machines this cannot be tried on (stand-in flavours)."""
    from infomerge.bench import stages
    from infomerge.errors import BackendUnavailableError

    class Fake:
        def __init__(self, name):
            self.name, self.label, self.module = name, f"{name}-label", None

    def flavours(*names):
        def load(name):
            if name not in names:
                raise BackendUnavailableError(f"{name} missing")
            return Fake(name)

        monkeypatch.setattr(stages, "load_flavour", load)

    flavours()
    assert stages.trt_unavailable_reason("cuda").startswith("TensorRT not installed")
    flavours("rtx")
    monkeypatch.setattr(stages, "local_compute_capability", lambda: "9.0")
    assert "cannot run on compute capability 9.0" in stages.trt_unavailable_reason("cuda")
    assert "selected (--device cpu)" in stages.trt_unavailable_reason("cpu")
    monkeypatch.setattr(stages, "local_compute_capability", lambda: "8.9")
    assert stages.trt_unavailable_reason("cuda") is None
    flavours("trt")
    monkeypatch.setattr(stages, "local_compute_capability", lambda: "9.0")
    assert stages.trt_unavailable_reason("cuda") is None


def test_hf_prompt_holds_one_placeholder_per_hf_video_feature():
    """The hf row's prompt: the pipeline's ids with <video> expanded; the placeholder count must be
    the number of feature rows transformers' own get_video_features returns (F x 14 x 14 + 1)."""
    from infomerge.backbones.loading import resolve_checkpoint
    from infomerge.bench.hf import HFBaseline

    frames = 2
    hf = HFBaseline(resolve_checkpoint("tiny", None), frames=frames)
    ids = hf.prompt_ids("What is the man doing?")
    prompt = hf.prompt(ids)
    pixels = torch.rand(frames, 3, 384, 384) * 2 - 1
    features = hf.vision(pixels)
    n_placeholders = int((prompt.input_ids == hf.model.config.video_token_index).sum())
    assert n_placeholders == prompt.video_tokens == features.shape[1] == frames * 14 * 14 + 1
    assert prompt.length == len(ids.before) + n_placeholders + len(ids.after)
    assert hf.assemble(prompt, features).shape == (1, prompt.length, features.shape[-1])


def test_side_by_side_ort_rows_need_artifacts(capsys):
    from infomerge.bench.studies import side_by_side

    with pytest.raises(SystemExit) as e:
        side_by_side.main(["--variants", "torch", "ort-fused"])
    assert e.value.code == 2
    assert "need --artifacts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        side_by_side.main(["--variants", "attention"])  # not a row key
    assert "invalid choice" in capsys.readouterr().err


def test_side_by_side_rounds_interleave_every_variant():
    from infomerge.bench.studies.side_by_side import interleaved

    calls: list[str] = []

    def variant(name, stages=None):
        def run():
            calls.append(name)
            return stages

        return run

    out = interleaved({"a": variant("a"), "b": variant("b", {"ttft": 5.0})}, runs=2, warmup=1)
    assert calls == ["a", "b"] * 3  # warm-up round, then 2 timed rounds, each variant in turn
    assert out["b"] == {"ttft": [5.0, 5.0]}
    assert list(out["a"]) == ["wall"] and len(out["a"]["wall"]) == 2
