"""Run multiple-choice questions through one loaded pipeline for several methods and retentions.

One pipeline is loaded (vision tower, tokenizer, LLM); every (method, retention) run is a
:meth:`~infomerge.runtime.pipeline.Pipeline.with_compression` view of it. The loop is
question-major: each video is decoded once and answered by every run still missing it, so an
interrupted evaluation leaves every run with about the same questions done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infomerge.eval.dataset import Question
from infomerge.eval.mcq import build_prompt, extract_choice, is_correct
from infomerge.eval.store import ResultsFile, run_key

#: lmms-eval 0.7.3 videomme.yaml generation_kwargs: max_new_tokens 16, greedy.
DEFAULT_MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class RunSpec:
    """One evaluated configuration: a method at a retention (None or 1.0: no compression)."""

    method: str | None
    retention: float | None

    @property
    def key(self) -> str:
        return run_key(self.method, self.retention)

    @property
    def compressed(self) -> bool:
        return self.retention is not None and float(self.retention) < 1.0


def plan_runs(methods: Sequence[str], retentions: Sequence[float]) -> list[RunSpec]:
    """Every method at every retention; retention 1.0 (no compression) once, whatever the methods.

    Raises:
        ValueError: no method, no retention, or a retention outside (0, 1].
    """
    if not methods or not retentions:
        raise ValueError("give at least one method and one retention")
    runs: list[RunSpec] = []
    for r in retentions:
        if not 0.0 < float(r) <= 1.0:
            raise ValueError(f"retention must be in (0, 1] (the kept share of video tokens), got {r}")
    if any(float(r) >= 1.0 for r in retentions):
        runs.append(RunSpec(None, None))
    for m in methods:
        for r in sorted({float(r) for r in retentions if float(r) < 1.0}):
            runs.append(RunSpec(m, r))
    return runs


def score(question: Question, response: str) -> tuple[str, bool]:
    """The extracted letter of ``response`` and whether it is ``question``'s answer (lmms-eval's rules,
    see :mod:`infomerge.eval.mcq`)."""
    letter = extract_choice(response, question.choices)
    return letter, is_correct(letter, question.answer)


def sample_record(question: Question, spec: RunSpec, answer, decode_ms: float | None) -> dict:
    """The JSON record of one answered question.

    Args:
        question: the question.
        spec: the run.
        answer: an :class:`~infomerge.runtime.pipeline.Answer` (``text``, ``timings``).
        decode_ms: wall time of the shared video decode (ms), counted once per question.
    """
    letter, ok = score(question, answer.text)
    t = answer.timings
    return {
        "run": spec.key,
        "method": spec.method,
        "retention": spec.retention,
        "question_id": question.qid,
        "video": str(question.video),
        **{f"cat_{k}": v for k, v in question.categories.items()},
        "answer": question.answer,
        "response": answer.text,
        "predicted": letter,
        "correct": ok,
        "video_tokens": int(t.video_tokens),
        "uncompressed_video_tokens": int(t.uncompressed_video_tokens),
        "prompt_tokens": int(t.prompt_tokens),
        "new_tokens": int(t.new_tokens),
        "ttft_ms": t.ttft_ms,
        "total_ms": t.total_ms,
        "decode_ms": decode_ms,
        "stages_ms": dict(t.stages_ms),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def evaluate(
    questions: Sequence[Question],
    runs: Sequence[RunSpec],
    pipelines: dict,
    results: ResultsFile,
    done: dict,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    post_prompt: str | None = None,
    on_sample: Callable[[dict], None] | None = None,
) -> int:
    """Answer every (run, question) pair not in ``done``, appending one record per sample.

    Args:
        questions: the dataset.
        runs: the configurations, in report order.
        pipelines: run key -> pipeline (``decode(path)``, ``generate(decoded, prompt,
            max_new_tokens=)``), e.g. from :func:`infomerge.eval.cli.build_pipelines`.
        results: an opened :class:`ResultsFile`.
        done: (run key, question id) pairs already answered (from :meth:`ResultsFile.open`).
        max_new_tokens: generation limit per answer.
        post_prompt: answer instruction (default: lmms-eval's VideoMME default).
        on_sample: called with each new record (progress display).

    Returns:
        The number of samples answered now.

    Raises:
        VideoError: a video that fails to decode (the samples before it are kept).
        KeyboardInterrupt: passed on after the current sample's record is written or dropped whole.
    """
    kwargs = {} if post_prompt is None else {"post_prompt": post_prompt}
    decoder = pipelines[runs[0].key]
    n = 0
    for q in questions:
        pending = [spec for spec in runs if (spec.key, q.qid) not in done]
        if not pending:
            continue
        t0 = time.perf_counter()
        decoded = decoder.decode(q.video)
        decode_ms = (time.perf_counter() - t0) * 1000.0
        prompt = build_prompt(q.question, q.options, **kwargs)
        for spec in pending:
            answer = pipelines[spec.key].generate(decoded, prompt, max_new_tokens=max_new_tokens)
            record = sample_record(q, spec, answer, decode_ms)
            results.append(record)
            done[(spec.key, q.qid)] = record
            n += 1
            if on_sample is not None:
                on_sample(record)
    return n
