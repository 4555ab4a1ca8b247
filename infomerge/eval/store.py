"""The per-sample results file: JSON Lines, appended and flushed one sample at a time.

This file is append-only by design, the one exception to the toolkit's atomic writes: a run that
is interrupted keeps every sample it finished, and the next run with the same settings skips them.
Each record is one ``write`` of one complete line, flushed and fsync'd before the next sample
starts. A line cut short by a hard kill (SIGKILL, power loss) is the only partial write possible;
:meth:`ResultsFile.open` drops it (truncating the file to its last complete line) and says so.

Beside it, ``run.json`` (written atomically) records the settings the results belong to; a run
with other settings refuses to append to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from infomerge.artifacts.atomic import atomic_write_json
from infomerge.errors import InfomergeError

RESULTS_NAME = "results.jsonl"
SETTINGS_NAME = "run.json"


class ResultsMismatchError(InfomergeError, ValueError):
    """An output folder holding results of other settings (another dataset, backbone, ...)."""


def run_key(method: str | None, retention: float | None) -> str:
    """The name of one (method, retention) run: ``"infomerge@0.15"``; ``"none@1"`` without compression."""
    if retention is None or float(retention) >= 1.0:
        return "none@1"
    return f"{method}@{float(retention):g}"


class ResultsFile:
    """Append-only per-sample records in ``<out>/results.jsonl``.

    Args:
        out: the output folder (created if missing).
        settings: what the results depend on (dataset digest, backbone, frames, backends,
            max_new_tokens, ...); compared with ``run.json`` of an earlier run in ``out``.
        restart: discard earlier results in ``out`` instead of continuing them.

    Raises:
        ResultsMismatchError: ``out`` holds results of other settings (the message names the
            differing keys and the fixes: another ``--out``, or ``--restart``).
    """

    def __init__(self, out: str | os.PathLike, settings: dict, *, restart: bool = False):
        self.out = Path(out)
        self.path = self.out / RESULTS_NAME
        self.settings = settings
        self.restart = restart
        self.dropped_partial = False
        self._fh = None

    def open(self) -> dict[tuple[str, str], dict]:
        """Check the settings, repair a cut-off last line, and return the finished samples.

        Returns:
            (run key, question id) -> record, of every complete earlier record.

        Raises:
            ResultsMismatchError: see the class.
            InfomergeError: a results line that is not JSON in the middle of the file.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        settings_path = self.out / SETTINGS_NAME
        if self.restart:
            self.path.unlink(missing_ok=True)
        elif settings_path.is_file() and self.path.is_file():
            earlier = json.loads(settings_path.read_text(encoding="utf-8"))
            differ = sorted(
                k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k)
            )
            if differ:
                detail = ", ".join(
                    f"{k}: {earlier.get(k)!r} then, {self.settings.get(k)!r} now" for k in differ
                )
                raise ResultsMismatchError(
                    f"{self.out} holds results of other settings ({detail}); choose another --out, "
                    "or pass --restart to discard them"
                )
        atomic_write_json(settings_path, self.settings)
        done = self._read()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for appends)
        return done

    def _read(self) -> dict[tuple[str, str], dict]:
        done: dict[tuple[str, str], dict] = {}
        if not self.path.is_file():
            return done
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # after the last complete line
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
            self.dropped_partial = True
        for n, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InfomergeError(
                    f"{self.path}, line {n}: not JSON ({exc.msg}); the file was edited by hand? "
                    "Fix or delete that line, or pass --restart"
                ) from exc
            done[(rec["run"], rec["question_id"])] = rec
        return done

    def append(self, record: dict) -> None:
        """Write one record as one line, flush and fsync it."""
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_results(out: str | os.PathLike) -> list[dict]:
    """Every complete record of ``<out>/results.jsonl`` in file order (a cut-off last line ignored)."""
    path = Path(out) / RESULTS_NAME
    if not path.is_file():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
