"""A multiple-choice video QA set in the VideoMME layout: reading and checking it.

Schema (one record per question; JSON list, JSON Lines or Parquet; see docs/evaluation.md):

=================  ========  ====================================================================
field              required  meaning
=================  ========  ====================================================================
``question``       yes       the question text
``options``        yes       list of 2-8 strings, lettered ``"A. ..."`` (VideoMME) or not
``answer``         yes       the correct letter, ``"A"`` ... (case-insensitive)
``video``          one of    video file path: absolute, or relative to ``video_root`` (default:
                             the dataset file's folder)
``videoID``        one of    VideoMME's id: the video is ``<video_root>/<videoID>.mp4`` (or
                             ``.MP4`` / ``.mkv``, lmms-eval's lookup order)
``question_id``    no        unique id (the key of resumed runs); default: the row number
``duration``,      no        categories: accuracy is broken down by each one present
``domain``,
``sub_category``,
``task_type``,
``category``
=================  ========  ====================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from infomerge.errors import InfomergeError
from infomerge.eval.mcq import LETTERS

#: Optional fields the accuracy is broken down by (VideoMME's, plus a generic one).
CATEGORY_FIELDS = ("duration", "domain", "sub_category", "task_type", "category")
#: Video extensions tried for ``videoID`` (lmms-eval 0.7.3 videomme_doc_to_visual's order).
VIDEO_ID_SUFFIXES = (".mp4", ".MP4", ".mkv")
_MAX_LISTED = 10


class DatasetError(InfomergeError, ValueError):
    """A dataset file that cannot be read or does not follow the schema (the message lists the
    offending rows and fields, and the fix)."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes:
        qid: unique id (``question_id``, or the row number as a string).
        video: the video file.
        question: question text.
        options: option texts as given.
        answer: the correct letter (upper case).
        categories: category field -> value, for the fields present.
    """

    qid: str
    video: Path
    question: str
    options: tuple[str, ...]
    answer: str
    categories: dict[str, str] = field(default_factory=dict)

    @property
    def choices(self) -> tuple[str, ...]:
        """The valid letters of this question."""
        return LETTERS[: len(self.options)]


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DatasetError(
                f"{path}: reading Parquet needs pyarrow; `pip install pyarrow` (or infomerge[eval]), "
                "or convert the file to JSON"
            ) from exc
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc}); a dataset is .json, .jsonl or .parquet") from exc
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}, line {n}: not JSON ({exc.msg})") from exc
        return rows
    if suffix != ".json":
        raise DatasetError(f"{path}: unknown dataset format {suffix!r}; use .json, .jsonl or .parquet")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if isinstance(data, dict) and isinstance(data.get("questions"), list):
        data = data["questions"]
    if not isinstance(data, list):
        raise DatasetError(f'{path}: expected a JSON list of question objects (or {{"questions": [...]}})')
    return data


def _resolve_video(row: dict, root: Path) -> Path | str:
    """The video path of a row, or a problem description."""
    if row.get("video"):
        p = Path(str(row["video"])).expanduser()
        return p if p.is_absolute() else root / p
    if row.get("videoID"):
        stem = root / str(row["videoID"])
        for suffix in VIDEO_ID_SUFFIXES:
            if stem.with_name(stem.name + suffix).is_file():
                return stem.with_name(stem.name + suffix)
        return stem.with_name(stem.name + VIDEO_ID_SUFFIXES[0])
    return "no 'video' path or 'videoID'"


def _check_row(n: int, row, root: Path) -> tuple[Question | None, list[str]]:
    where = f"row {n}"
    if not isinstance(row, dict):
        return None, [f"{where}: not an object"]
    problems = []
    qid = str(row["question_id"]) if row.get("question_id") not in (None, "") else str(n)
    where = f"row {n} (question_id {qid})"
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{where}: 'question' missing or empty")
    options = row.get("options")
    if isinstance(options, str):  # some exports store the list as JSON text
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            pass
    if not isinstance(options, (list, tuple)) or not 2 <= len(options) <= len(LETTERS):
        problems.append(f"{where}: 'options' must be a list of 2 to {len(LETTERS)} strings")
        options = None
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        problems.append(f"{where}: 'answer' missing (the correct letter, e.g. \"B\")")
    elif options is not None and answer.strip().upper() not in LETTERS[: len(options)]:
        problems.append(
            f"{where}: 'answer' {answer!r} is not one of the letters {', '.join(LETTERS[: len(options)])}"
        )
    video = _resolve_video(row, root)
    if isinstance(video, str):
        problems.append(f"{where}: {video}")
    elif not video.is_file():
        problems.append(f"{where}: video {video} not found")
    if problems:
        return None, problems
    cats = {k: str(row[k]) for k in CATEGORY_FIELDS if row.get(k) not in (None, "")}
    return Question(qid, video, question, tuple(str(o) for o in options), answer.strip().upper(), cats), []


def load_dataset(path: str | os.PathLike, video_root: str | os.PathLike | None = None) -> list[Question]:
    """Read and check every question of a dataset file (no video is decoded).

    Args:
        path: a ``.json`` (list, or ``{"questions": [...]}``), ``.jsonl`` or ``.parquet`` file.
        video_root: folder that relative ``video`` paths and ``videoID`` names resolve against
            (default: the dataset file's folder).

    Returns:
        The questions, in file order.

    Raises:
        DatasetError: unreadable file, a row off the schema, a missing video file, duplicate
            ``question_id`` values, or no question at all (every problem found is listed, up to 10).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} not found")
    root = Path(video_root) if video_root is not None else path.parent
    if video_root is not None and not root.is_dir():
        raise DatasetError(f"video root {root} is not a folder")
    rows = _read_records(path)
    questions, problems, seen = [], [], {}
    for n, row in enumerate(rows):
        q, bad = _check_row(n, row, root)
        problems += bad
        if q is not None:
            if q.qid in seen:
                problems.append(
                    f"row {n}: question_id {q.qid!r} repeats row {seen[q.qid]}; ids must be unique"
                )
            seen[q.qid] = n
            questions.append(q)
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise DatasetError(
            f"{path}: {len(problems)} problem(s) with the dataset (schema: docs/evaluation.md):"
            f"\n  {listed}{more}"
        )
    if not questions:
        raise DatasetError(f"{path}: no questions")
    return questions


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes: identifies the dataset a results file belongs to."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
