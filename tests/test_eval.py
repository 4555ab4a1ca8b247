"""infomerge-eval and the lmms-eval plugin: prompt, answer extraction, Wilson intervals, dataset
checks, scoring, resume after a kill, and an lmms-eval run of a local task with the plugin.

The ``tiny`` backbone has random weights, so its answers are noise: the tests check the mechanics
with independent expectations (hand-computed intervals, crafted answers with known letters,
lmms-eval's own extraction function) and never the accuracy of ``tiny``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from infomerge.eval import mcq
from infomerge.eval.dataset import DatasetError, load_dataset
from infomerge.eval.harness import evaluate, plan_runs
from infomerge.eval.report import markdown_table, summarize, write_reports
from infomerge.eval.stats import accuracy, wilson_interval
from infomerge.eval.store import ResultsFile, ResultsMismatchError, read_results
from infomerge.video import sample_video

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "eval_mcq.json"
TASK_FUNCS = REPO / "tests" / "fixtures" / "lmms_task" / "infomerge_mcq_task.py"
VIDEO_ROOT = sample_video("bikes.mp4").parent
HAVE_LMMS = importlib.util.find_spec("lmms_eval") is not None


def _env(extra: list[str] | None = None) -> dict:
    env = dict(os.environ)
    paths = [*(extra or []), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


# --- prompt and extraction ------------------------------------------------------------------------
def test_prompt_is_lmms_eval_videomme_default():
    # written out by hand from lmms-eval 0.7.3 videomme_doc_to_text + videomme.yaml default post_prompt
    expected = (
        "Select the best answer to the following multiple-choice question based on the video and the "
        "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "Where is the man sitting?\n"
        "A. On a beach\nB. In a car\nC. On a stage\nD. In a classroom\n"
        "\nAnswer with the option's letter from the given choices directly."
    )
    lettered = ["A. On a beach", "B. In a car", "C. On a stage", "D. In a classroom"]
    assert mcq.build_prompt("Where is the man sitting?", lettered) == expected
    assert (
        mcq.build_prompt(
            "Where is the man sitting?", ["On a beach", "In a car", "On a stage", "In a classroom"]
        )
        == expected
    )


# (model output, expected letter): the letter each output names, worked out by hand from the rules
CRAFTED = [
    ("B", "B"),
    ("  c  ", ""),  # lower case is not a letter to lmms-eval
    ("(C) Bicycles", "C"),
    ("The answer is D.", "D"),
    ("A. A rabbit", "A"),
    ("I think B is wrong; the best answer is C", "C"),
    ("Answer: B", "B"),
    ("", ""),
    ("no idea", ""),
    ("Definitely", "D"),  # any capital A-D counts when nothing else matches
    ("CAB", "B"),  # ... the last one
    ("The correct answer is (B), not (A)", "A"),  # phrase candidates: the later letter wins
    ("B) In a car", "B"),
    ("Option C: On a stage, I choose it", "C"),
    ("(C) is wrong, my answer is B ok", "B"),  # an answer phrase outranks a parenthesised letter
]


@pytest.mark.parametrize(("text", "letter"), CRAFTED)
def test_extraction_on_crafted_outputs(text, letter):
    assert mcq.extract_choice(text) == letter


@pytest.mark.skipif(not HAVE_LMMS, reason="lmms-eval not installed (pip install infomerge[eval])")
def test_extraction_agrees_with_lmms_eval():
    import random

    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    rng = random.Random(0)
    pieces = [
        "A",
        "B",
        "C",
        "D",
        "(B)",
        "C.",
        "D:",
        "A)",
        "the answer is",
        "I choose",
        " ",
        ",",
        ".",
        "x",
        "Bob",
        "答案是",
        "no",
        "\n",
        '"',
        "?",
    ]
    texts = [t for t, _ in CRAFTED] + [
        "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(400)
    ]
    for t in texts:
        assert mcq.extract_choice(t, ["A", "B", "C", "D"]) == extract_mcq_answer(
            t, choices=["A", "B", "C", "D"]
        ), t


# --- Wilson intervals: hand computations and published values --------------------------------------
def test_wilson_interval_by_hand():
    # 3 of 6, z = 1.959964: centre 0.5; half = z/(1+z²/6) * sqrt(0.25/6 + z²/144) = 0.312390
    low, high = wilson_interval(3, 6)
    assert low == pytest.approx(0.187610, abs=1e-5) and high == pytest.approx(0.812390, abs=1e-5)
    # 0 of 3: [0, z²/(3+z²)] = [0, 0.561497]
    assert wilson_interval(0, 3) == pytest.approx((0.0, 0.561497), abs=1e-5)
    # 8 of 10 (Newcombe 1998, table I style): [0.4902, 0.9433]
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    a = accuracy(0, 0)
    assert a.value is None and a.percent() == "-"
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


# --- dataset ----------------------------------------------------------------------------------------
def test_fixture_dataset_loads():
    qs = load_dataset(FIXTURE, VIDEO_ROOT)
    assert [q.qid for q in qs] == ["bbb-1", "bbb-2", "bikes-1", "bikes-2", "car-1", "car-2"]
    assert qs[2].video == VIDEO_ROOT / "bikes.mp4" and qs[2].answer == "C"
    assert qs[3].categories == {"duration": "short", "task_type": "Action Recognition"}


def _write(tmp_path, rows, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps(rows))
    return p


def test_dataset_problems_are_listed(tmp_path):
    good = {"video": str(VIDEO_ROOT / "bikes.mp4"), "question": "q?", "options": ["a", "b"], "answer": "A"}
    rows = [
        good,
        {**good, "answer": "E"},
        {**good, "video": "missing.mp4"},
        {**good, "options": "not a list"},
        {k: v for k, v in good.items() if k != "question"},
        {**good, "question_id": "0"},  # repeats row 0's default id
    ]
    with pytest.raises(DatasetError) as err:
        load_dataset(_write(tmp_path, rows))
    msg = str(err.value)
    assert "5 problem(s)" in msg
    for part in (
        "'answer' 'E' is not one of the letters A, B",
        "missing.mp4 not found",
        "'options' must be a list",
        "'question' missing",
        "question_id '0' repeats row 0",
    ):
        assert part in msg, part
    (tmp_path / "bad.json").write_text("[{,")
    with pytest.raises(DatasetError, match="not JSON"):
        load_dataset(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset(_write(tmp_path, [good], "d.csv"))


def test_parquet_and_video_id(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [
        {
            "videoID": "bikes",
            "question_id": "7",
            "question": "q?",
            "options": ["A. x", "B. y", "C. z", "D. w"],
            "answer": "d",
            "task_type": "Counting Problem",
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (q,) = load_dataset(tmp_path / "d.parquet", VIDEO_ROOT)
    assert q.video == VIDEO_ROOT / "bikes.mp4" and q.answer == "D" and q.choices == ("A", "B", "C", "D")


def test_cli_rejects_bad_dataset_before_loading(tmp_path):
    bad = _write(tmp_path, [{"video": "nope.mp4", "question": "q", "options": ["a", "b"], "answer": "A"}])
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "infomerge.eval.cli", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "nope.mp4 not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - t0 < 30  # no model was loaded


# --- harness with a scripted pipeline: scoring, categories, resume, settings check -----------------
class ScriptedPipeline:
    """Answers with a fixed text per question (recognised by its prompt)."""

    def __init__(self, replies: dict[str, str], kept: int):
        self.replies, self.kept, self.calls = replies, kept, []

    def decode(self, path):
        return path

    def generate(self, decoded, prompt, max_new_tokens):
        self.calls.append(prompt)
        text = next(r for q, r in self.replies.items() if q in prompt)
        timings = SimpleNamespace(
            video_tokens=self.kept,
            uncompressed_video_tokens=100,
            prompt_tokens=self.kept + 50,
            new_tokens=2,
            ttft_ms=10.0 * self.kept,
            total_ms=12.0 * self.kept,
            stages_ms={"prefill": 1.0},
        )
        return SimpleNamespace(text=text, timings=timings)


def test_scoring_categories_and_in_process_resume(tmp_path):
    qs = load_dataset(FIXTURE, VIDEO_ROOT)
    runs = plan_runs(["infomerge", "fastvid"], [1.0, 0.25])
    assert [r.key for r in runs] == ["none@1", "infomerge@0.25", "fastvid@0.25"]
    # none@1 answers all 6 right; the compressed runs get bbb-1 ("B", truth A) and car-2 (nothing) wrong
    right = {
        "What kind of animal": "A",
        "live-action": "The answer is B.",
        "Which vehicles": "(C) bicycles",
        "people in the video doing": "D",
        "Where is the man": "B. In a car",
        "What is the man doing": "A",
    }
    wrong = {**right, "What kind of animal": "B", "What is the man doing": "hmm"}
    pipes = {
        "none@1": ScriptedPipeline(right, 100),
        "infomerge@0.25": ScriptedPipeline(wrong, 25),
        "fastvid@0.25": ScriptedPipeline(wrong, 26),
    }
    settings = {"dataset_sha256": "x"}
    store = ResultsFile(tmp_path, settings)
    done = store.open()
    assert evaluate(qs[:3], runs, pipes, store, done, max_new_tokens=4) == 9
    store.close()
    store = ResultsFile(tmp_path, settings)
    done = store.open()
    assert len(done) == 9
    assert evaluate(qs, runs, pipes, store, done, max_new_tokens=4) == 9  # only the 3 new questions
    store.close()
    recs = read_results(tmp_path)
    assert len(recs) == 18 and len({(r["run"], r["question_id"]) for r in recs}) == 18
    summary = {s["run"]: s for s in summarize(recs, [r.key for r in runs])}
    assert summary["none@1"]["correct"] == 6 and summary["infomerge@0.25"]["correct"] == 4
    assert summary["infomerge@0.25"]["ci95_low"] == pytest.approx(wilson_interval(4, 6)[0])
    assert summary["fastvid@0.25"]["kept_share_mean"] == pytest.approx(0.26)
    assert summary["fastvid@0.25"]["ttft_ms_mean"] == pytest.approx(260.0)
    by_task = summary["infomerge@0.25"]["categories"]["task_type"]
    # Object Recognition: bbb-1 wrong, bikes-1 right, car-1 right
    # Action Recognition: bikes-2 right, car-2 wrong
    assert (by_task["Object Recognition"]["correct"], by_task["Object Recognition"]["total"]) == (2, 3)
    assert (by_task["Action Recognition"]["correct"], by_task["Action Recognition"]["total"]) == (1, 2)
    table = markdown_table(list(summary.values()))
    assert "| infomerge@0.25 | infomerge | 0.25 | 6 | 66.7 |" in table
    paths = write_reports(tmp_path, list(summary.values()), settings)
    assert all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(ResultsMismatchError, match="dataset_sha256"):
        ResultsFile(tmp_path, {"dataset_sha256": "y"}).open()


def test_cut_off_last_line_is_dropped(tmp_path):
    store = ResultsFile(tmp_path, {})
    store.open()
    store.append({"run": "none@1", "question_id": "1", "correct": True})
    store.close()
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"run": "none@1", "question_id": "2", "corr')  # a hard kill mid-line
    store = ResultsFile(tmp_path, {})
    done = store.open()
    store.close()
    assert list(done) == [("none@1", "1")] and store.dropped_partial
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 1


# --- tiny, end to end: a run killed after some samples, then resumed ------------------------------
TINY_ARGS = [
    "--frames",
    "4",
    "--max-new-tokens",
    "3",
    "--methods",
    "infomerge",
    "--retentions",
    "0.25",
    "1.0",
    "--limit",
    "4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    cmd = [
        sys.executable,
        "-m",
        "infomerge.eval.cli",
        str(FIXTURE),
        "--video-root",
        str(VIDEO_ROOT),
        "--out",
        str(out),
        *TINY_ARGS,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err1 = proc.communicate(timeout=60)
    first = results.read_text()
    proc2 = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=180)
    return SimpleNamespace(
        out=out, rc1=proc.returncode, err1=err1, first=first, rc2=proc2.returncode, proc2=proc2
    )


def test_resume_after_kill(resumed_run):
    r = resumed_run
    assert r.rc1 == 130, r.err1
    before = [json.loads(line) for line in r.first.splitlines()]
    assert 3 <= len(before) < 8  # 4 questions x 2 runs; stopped part way
    assert r.rc2 == 0, r.proc2.stderr
    assert f"{8 - len(before)} samples to answer" in r.proc2.stdout
    after = read_results(r.out)
    keys = [(x["run"], x["question_id"]) for x in after]
    assert len(keys) == 8 and len(set(keys)) == 8  # none repeated, none lost
    assert after[: len(before)] == before  # earlier samples untouched
    assert {k[1] for k in keys} == {"bbb-1", "bbb-2", "bikes-1", "bikes-2"}
    for x in after:
        assert x["predicted"] == mcq.extract_choice(x["response"])
        assert x["correct"] == (x["predicted"] == x["answer"])
        kept = x["video_tokens"] / x["uncompressed_video_tokens"]
        assert kept == 1.0 if x["run"] == "none@1" else 0.2 < kept < 0.3
        assert x["ttft_ms"] > 0
    summary = json.loads((r.out / "summary.json").read_text())
    assert [s["run"] for s in summary["runs"]] == ["none@1", "infomerge@0.25"]
    assert all(s["n"] == 4 for s in summary["runs"])
    assert (r.out / "accuracy_vs_retention.png").stat().st_size > 0
    assert not [p for p in r.out.iterdir() if p.name.startswith(".")]  # no temporaries left


# --- lmms-eval with the plugin (entry point) and a local task ----------------------------------------
def _lmms_runnable() -> str | None:
    if not HAVE_LMMS:
        return "lmms-eval not installed (pip install infomerge[eval])"
    extra = os.environ.get("INFOMERGE_LMMS_EXTRA_PATH")
    probe = subprocess.run(
        [sys.executable, "-c", "import filelock._api"],
        env=_env([extra] if extra else []),
        capture_output=True,
    )
    if probe.returncode:
        return (
            "lmms-eval 0.7.3 imports filelock._api, gone in filelock 4: pip install 'filelock<4' "
            "(or put it on "
            "INFOMERGE_LMMS_EXTRA_PATH)"
        )
    return None


@pytest.mark.skipif(_lmms_runnable() is not None, reason=str(_lmms_runnable()))
def test_lmms_eval_plugin_runs_local_task(tmp_path, resumed_run):
    import shutil

    # the plugin registered as an installed distribution would (pip install -e is not used here)
    dist = tmp_path / "ep" / "infomerge_eval_stub-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: infomerge-eval-stub\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[lmms_eval.models]\ninfomerge = infomerge.eval.lmms_plugin:manifest\n"
    )
    task = tmp_path / "task"
    task.mkdir()
    shutil.copy(TASK_FUNCS, task / TASK_FUNCS.name)
    rows = json.loads(FIXTURE.read_text())[:2]
    for row in rows:
        row["video"] = str(VIDEO_ROOT / row["video"])
    (task / "data.json").write_text(json.dumps(rows))
    (task / "infomerge_mcq.yaml").write_text(
        "task: infomerge_mcq\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {task / 'data.json'}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_visual: !function infomerge_mcq_task.doc_to_visual\n"
        "doc_to_text: !function infomerge_mcq_task.doc_to_text\ndoc_to_target: answer\n"
        "generation_kwargs:\n  max_new_tokens: 3\n  temperature: 0\n  do_sample: false\n"
        "process_results: !function infomerge_mcq_task.process_results\n"
        "metric_list:\n  - metric: mcq_accuracy\n    aggregation: mean\n    higher_is_better: true\n"
        'lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: ""\n'
        '    post_prompt: "\\nAnswer with the option\'s letter from the given choices directly."\n'
    )
    extra = os.environ.get("INFOMERGE_LMMS_EXTRA_PATH")
    env = _env([p for p in (extra, str(dist.parent)) if p])
    env["HF_HOME"] = str(tmp_path / "hf")
    out = tmp_path / "lmms-out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_eval",
            "--model",
            "infomerge",
            "--model_args",
            "backbone=tiny,method=infomerge,retention=0.25,frames=4",
            "--tasks",
            "infomerge_mcq",
            "--include_path",
            str(task),
            "--output_path",
            str(out),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (samples_file,) = out.rglob("*samples_infomerge_mcq.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    (results_file,) = out.rglob("*_results.json")
    score = json.loads(results_file.read_text())["results"]["infomerge_mcq"]["mcq_accuracy,none"]
    # same prompt, same pipeline settings, greedy: the same answers as infomerge-eval's own run
    ours = {x["question_id"]: x for x in read_results(resumed_run.out) if x["run"] == "infomerge@0.25"}
    for s in samples:
        row = rows[s["doc_id"]]
        assert s["input"] == mcq.build_prompt(row["question"], row["options"])
        assert s["resps"] == ours[row["question_id"]]["response"]
    assert score == pytest.approx(sum(ours[r["question_id"]]["correct"] for r in rows) / len(rows))
