"""Benchmark output: the rich table, ``results.json`` and the PNG plot.

- :func:`table`: one line per row (backend, variant, method, retention) with the median of each
  stage, the end-to-end TTFT, decode tokens/s, speedups against r = 1.0 of the same backend and
  against the Hugging Face row (vision, prefill, TTFT), theoretical prefill FLOPs,
  peak memory and the cross-check status. Rows that could not run show their reason; rows whose
  outputs disagree with the reference are flagged in red, as Ultralytics' benchmark flags a failed
  validation.
- :func:`write_json`: every raw figure (all samples, p90, memory), the machine and the command.
- :func:`plot`: left, stacked stage latency (median ms) per backend and retention; right, prefill
  and TTFT speedup against retention, beside the theoretical FLOPs ratio.

Files are written to a temporary name and renamed, so an interrupted run leaves no half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.table import Table

from infomerge.bench.results import (
    FAILED,
    MISMATCH,
    OK,
    STAGE_LABELS,
    TTFT_STAGES,
    UNAVAILABLE,
    Row,
)

_STATUS_STYLE = {OK: "green", MISMATCH: "bold red", UNAVAILABLE: "yellow", FAILED: "red"}
_STAGE_COLOURS = {
    "video_decode": "#9e9e9e",
    "vision": "#1f77b4",
    "compress": "#d62728",
    "assemble": "#ff7f0e",
    "prefill": "#2ca02c",
}


_SHORT = {
    "video_decode": "video\ndecode",
    "vision": "vision",
    "compress": "com-\npress",
    "assemble": "assem-\nble",
    "prefill": "prefill",
}


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _flops(tf: float | None) -> str:
    """TFLOPs -> '48.8T' / '918G' / '1.2M'."""
    if tf is None:
        return "-"
    for scale, unit in ((1.0, "T"), (1e-3, "G"), (1e-6, "M")):
        if tf >= scale:
            return f"{tf / scale:.3g}{unit}"
    return f"{tf * 1e9:.3g}k"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def row_label(r: Row) -> str:
    return f"{r.backend}/{r.variant}"


def _notes(rows: list[Row]) -> dict[int, int]:
    """Row position -> footnote number, for rows that carry a reason (equal reasons share one)."""
    numbers: dict[str, int] = {}
    out = {}
    for i, r in enumerate(rows):
        if r.status != OK and r.reason:
            out[i] = numbers.setdefault(f"{row_label(r)}: {r.reason}", len(numbers) + 1)
    return out


def footnotes(rows: list[Row]) -> list[str]:
    """The reasons of the rows that are not OK, numbered as in :func:`table`."""
    seen: dict[int, str] = {}
    for i, n in _notes(rows).items():
        seen.setdefault(n, f"[{n}] {row_label(rows[i])}: {rows[i].reason}")
    return [seen[n] for n in sorted(seen)]


# (header, right-aligned) of the table's columns; stage columns are inserted after "video tokens"
_HEAD = [("backend", False), ("method", False), ("r", True), ("video\ntokens", True)]
_TAIL = [
    ("TTFT\nms", True),
    ("decode\ntok/s", True),
    ("prefill\nspeedup", True),
    ("TTFT\nspeedup", True),
    ("vision\nvs hf", True),
    ("prefill\nvs hf", True),
    ("TTFT\nvs hf", True),
    ("prefill\nFLOPs", True),
    ("peak\nMiB", True),
    ("status", False),
]


def _columns() -> list[tuple[str, bool]]:
    return _HEAD + [(f"{_SHORT[s]}\nms", True) for s in TTFT_STAGES] + _TAIL


def _cells(rows: list[Row]) -> list[list[str]]:
    """The text of every cell, row by row, in the order of :func:`_columns`."""
    notes = _notes(rows)
    out = []
    for i, r in enumerate(rows):
        status = {MISMATCH: "CHECK FAILED"}.get(r.status, r.status)
        if i in notes:
            status += f" [{notes[i]}]"
        out.append(
            [
                row_label(r),
                r.method,
                "-" if r.retention is None else f"{r.retention:g}",
                "-" if r.visual_tokens is None else str(r.visual_tokens),
                *[_ms(r.median(s)) for s in TTFT_STAGES],
                _ms(r.median("ttft")),
                _rate(r.decode_tokens_per_s()),
                _x(r.prefill_speedup),
                _x(r.ttft_speedup),
                _x(r.vision_vs_hf),
                _x(r.prefill_vs_hf),
                _x(r.ttft_vs_hf),
                _flops(r.flops.get("kept_tflops")),
                _mb(r.peak_memory_bytes()),
                status,
            ]
        )
    return out


def table(rows: list[Row], title: str = "infomerge-bench", caption: str | None = None) -> Table:
    """A rich Table of the rows (medians in ms; p90 and raw samples are in results.json).

    A row that is not OK shows its status and a footnote number; :func:`footnotes` gives the texts.
    """
    t = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for name, right in _columns():
        t.add_column(
            name, justify="right" if right else "left", no_wrap=name in ("backend", "method", "status")
        )
    for r, cells in zip(rows, _cells(rows)):
        style = _STATUS_STYLE.get(r.status, "")
        t.add_row(*cells[:-1], f"[{style}]{cells[-1]}[/]" if style else cells[-1])
    return t


def markdown(rows: list[Row]) -> str:
    """The same table in GitHub Markdown, footnotes below it (for docs and ``results.md``)."""
    cols = _columns()
    lines = [
        "| " + " | ".join(name.replace("-\n", "").replace("\n", " ") for name, _ in cols) + " |",
        "|" + "|".join("---:" if right else "---" for _, right in cols) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(rows)]
    notes = footnotes(rows)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _atomic_write(path: Path, write) -> None:
    from infomerge.artifacts.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    data = json.dumps(payload, indent=2, default=_json_default).encode()
    _atomic_write(path, lambda fh: fh.write(data))
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    path = Path(path)
    _atomic_write(path, lambda fh: fh.write(text.encode()))
    return path


def rows_from_json(payload: dict) -> list[Row]:
    """The rows of a ``results.json`` payload (as :func:`write_json` wrote them), speedups included."""
    from infomerge.timing import Measurement, Stats

    fields = set(Stats.__dataclass_fields__)

    def meas(d):
        if d is None:
            return None
        stats = Stats(**{k: (tuple(v) if k == "samples_ms" else v) for k, v in d.items() if k in fields})
        return Measurement(stats, d.get("peak_memory_bytes"), d.get("memory_kind", "none"))

    rows = []
    for d in payload["rows"]:
        rows.append(
            Row(
                d["backend"],
                d["variant"],
                d["method"],
                d["retention"],
                d["status"],
                d["reason"],
                d["visual_tokens"],
                {k: meas(v) for k, v in (d["stages"] or {}).items()},
                meas(d["ttft"]),
                d["decode_tokens"],
                d["flops"] or {},
                d["check"],
                d["prefill_speedup"],
                d["ttft_speedup"],
                d.get("vision_vs_hf"),
                d.get("prefill_vs_hf"),
                d.get("ttft_vs_hf"),
            )
        )
    return rows


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plot(rows: list[Row], path: str | os.PathLike, title: str = "infomerge-bench") -> Path:
    """Save the PNG: stacked stage medians per row (left), speedups against retention (right).

    Rows that were not measured are left out. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.measured]
    fig, (ax_bar, ax_sp) = plt.subplots(
        1, 2, figsize=(13, max(4.0, 0.32 * len(measured) + 2.4)), gridspec_kw={"width_ratios": [3, 2]}
    )
    labels = [f"{row_label(r)} {r.method} r={r.retention:g}" for r in measured]
    y = list(range(len(measured)))[::-1]
    left = [0.0] * len(measured)
    for stage in TTFT_STAGES:
        widths = [r.median(stage) or 0.0 for r in measured]
        ax_bar.barh(y, widths, left=left, color=_STAGE_COLOURS[stage], label=STAGE_LABELS[stage], height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    ttft = [(yi, r.median("ttft")) for yi, r in zip(y, measured) if r.median("ttft") is not None]
    if ttft:
        ax_bar.scatter(
            [t for _, t in ttft],
            [yi for yi, _ in ttft],
            marker="|",
            s=120,
            color="black",
            zorder=3,
            label="TTFT measured end to end",
        )
    for yi, end, r in zip(y, left, measured):
        if r.status == MISMATCH:
            ax_bar.text(end, yi, " check failed", color="red", va="center", fontsize=7)
    ax_bar.set_yticks(y)
    ax_bar.set_yticklabels(labels, fontsize=7)
    ax_bar.set_xlabel("median latency per stage (ms), stacked = time to first token")
    ax_bar.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax_bar.grid(axis="x", alpha=0.3)

    series: dict[tuple, list[Row]] = {}
    for r in measured:
        if r.prefill_speedup is not None:
            series.setdefault((row_label(r), r.method), []).append(r)
    for (label, method), rs in sorted(series.items()):
        if method == "none":
            continue
        base = next((b for b in measured if row_label(b) == label and b.retention == 1.0), None)
        pts = sorted(([base] if base else []) + rs, key=lambda r: r.retention)
        xs = [r.retention * 100 for r in pts]
        line = ax_sp.plot(
            xs, [r.prefill_speedup for r in pts], marker="o", label=f"{label} {method}: prefill"
        )
        ax_sp.plot(
            xs,
            [r.ttft_speedup if r.ttft_speedup is not None else float("nan") for r in pts],
            marker="s",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{label} {method}: TTFT",
        )
        if any(r.ttft_vs_hf is not None for r in pts):
            ax_sp.plot(
                xs,
                [r.ttft_vs_hf if r.ttft_vs_hf is not None else float("nan") for r in pts],
                marker="^",
                linestyle=":",
                color=line[0].get_color(),
                label=f"{label} {method}: TTFT vs Hugging Face",
            )
    flops_pts = sorted(
        {(r.retention, r.flops.get("paper_tflops")) for r in measured if r.flops.get("paper_tflops")},
        reverse=True,
    )
    base_flops = next((f for rr, f in flops_pts if rr == 1.0), None)
    if base_flops:
        ax_sp.plot(
            [rr * 100 for rr, _ in flops_pts],
            [base_flops / f for _, f in flops_pts],
            color="black",
            linestyle=":",
            label="theoretical: prefill FLOPs ratio, round(r*tokens)",
        )
    ax_sp.set_xlabel("retention (%)")
    ax_sp.set_ylabel("speedup vs r = 100 % (triangles: vs Hugging Face)")
    ax_sp.set_yscale("log")
    ax_sp.grid(alpha=0.3, which="both")
    if ax_sp.get_legend_handles_labels()[0]:
        ax_sp.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)

    def save(fh):
        fig.savefig(fh, format="png", dpi=110)

    try:
        _atomic_write(path, save)
    finally:
        plt.close(fig)
    return path


__all__ = [
    "footnotes",
    "markdown",
    "plot",
    "row_label",
    "rows_from_json",
    "table",
    "write_json",
    "write_text",
]
