"""Summaries of evaluation records: accuracy with its Wilson interval per run and per category,
tokens kept and latency, a comparison table and plots of accuracy against retention and TTFT.

All files are written atomically (``infomerge.artifacts.atomic``).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from infomerge.artifacts.atomic import atomic_path, atomic_write_json, atomic_write_text
from infomerge.eval.stats import accuracy

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_RETENTION = "accuracy_vs_retention.png"
PLOT_TTFT = "accuracy_vs_ttft.png"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(records: Sequence[dict], run_order: Sequence[str] | None = None) -> list[dict]:
    """One summary per run: accuracy and 95 % Wilson interval, per-category accuracy, mean tokens
    kept, mean and median TTFT and request time.

    Args:
        records: per-sample records (:func:`infomerge.eval.harness.sample_record`).
        run_order: run keys in the order wanted (others follow, in order of appearance).

    Returns:
        A list of dicts (JSON-ready): ``run, method, retention, n, correct, accuracy, ci95_low,
        ci95_high, kept_tokens_mean, kept_share_mean, ttft_ms_mean, ttft_ms_median,
        total_ms_mean, categories`` (field -> value -> accuracy dict).
    """
    by_run: dict[str, list[dict]] = {}
    for rec in records:
        by_run.setdefault(rec["run"], []).append(rec)
    order = [k for k in (run_order or []) if k in by_run] + [k for k in by_run if k not in (run_order or [])]
    out = []
    for key in order:
        recs = by_run[key]
        acc = accuracy(sum(bool(r["correct"]) for r in recs), len(recs))
        cats: dict[str, dict[str, dict]] = {}
        fields = sorted({k for r in recs for k in r if k.startswith("cat_")})
        for f in fields:
            values = sorted({r[f] for r in recs if f in r})
            cats[f[4:]] = {
                v: accuracy(
                    sum(bool(r["correct"]) for r in recs if r.get(f) == v),
                    sum(1 for r in recs if r.get(f) == v),
                ).to_dict()
                for v in values
            }
        shares = [
            r["video_tokens"] / r["uncompressed_video_tokens"]
            for r in recs
            if r.get("uncompressed_video_tokens")
        ]
        out.append(
            {
                "run": key,
                "method": recs[0].get("method"),
                "retention": recs[0].get("retention"),
                "n": acc.total,
                **{k: v for k, v in acc.to_dict().items() if k != "total"},
                "kept_tokens_mean": _mean(r.get("video_tokens") for r in recs),
                "kept_share_mean": _mean(shares),
                "ttft_ms_mean": _mean(r.get("ttft_ms") for r in recs),
                "ttft_ms_median": _median(r.get("ttft_ms") for r in recs),
                "total_ms_mean": _mean(r.get("total_ms") for r in recs),
                "categories": cats,
            }
        )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def markdown_table(summary: Sequence[dict]) -> str:
    """The comparison table (GitHub Markdown), then one per-category table per category field."""
    lines = [
        "| run | method | retention | n | accuracy % | 95 % CI (Wilson) | kept tokens | kept share | "
        "TTFT mean ms | TTFT median ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['run']} | {s['method'] or 'none'} "
            f"| {s['retention'] if s['retention'] is not None else 1.0:g} "
            f"| {s['n']} | {_pct(s['accuracy'])} | [{_pct(s['ci95_low'])}, {_pct(s['ci95_high'])}] "
            f"| {s['kept_tokens_mean'] or 0:.0f} | {_pct(s['kept_share_mean'])} % "
            f"| {_ms(s['ttft_ms_mean'])} | {_ms(s['ttft_ms_median'])} |"
        )
    fields = sorted({f for s in summary for f in s["categories"]})
    for f in fields:
        values = sorted({v for s in summary for v in s["categories"].get(f, {})})
        lines += ["", f"Accuracy % by {f} (n in parentheses):", ""]
        lines.append("| run | " + " | ".join(values) + " |")
        lines.append("|---|" + "---:|" * len(values))
        for s in summary:
            cells = []
            for v in values:
                a = s["categories"].get(f, {}).get(v)
                cells.append("-" if a is None else f"{_pct(a['accuracy'])} ({a['correct']}/{a['total']})")
            lines.append(f"| {s['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(summary: Sequence[dict]):
    """The comparison table as a ``rich.table.Table``."""
    from rich.table import Table

    t = Table(
        title="infomerge-eval: accuracy (95 % Wilson interval), tokens kept, latency", title_justify="left"
    )
    for col, just in (
        ("run", "left"),
        ("n", "right"),
        ("accuracy %", "right"),
        ("95 % CI", "right"),
        ("kept tokens", "right"),
        ("TTFT mean ms", "right"),
    ):
        t.add_column(col, justify=just)
    for s in summary:
        t.add_row(
            s["run"],
            str(s["n"]),
            _pct(s["accuracy"]),
            f"[{_pct(s['ci95_low'])}, {_pct(s['ci95_high'])}]",
            f"{s['kept_tokens_mean'] or 0:.0f}",
            _ms(s["ttft_ms_mean"]),
        )
    return t


def plot(summary: Sequence[dict], path: str | os.PathLike, x: str) -> Path:
    """Accuracy (with its 95 % interval as error bars) against ``x`` for each method.

    Args:
        summary: from :func:`summarize`.
        path: the PNG to write (atomically).
        x: ``"retention"`` (the uncompressed run is drawn at 1.0 as a horizontal reference) or
            ``"ttft"`` (mean TTFT in ms).

    Raises:
        ValueError: another ``x``.
    """
    if x not in ("retention", "ttft"):
        raise ValueError(f"x must be 'retention' or 'ttft', got {x!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = [m for m in dict.fromkeys(s["method"] for s in summary)]
    for m in methods:
        rows = [s for s in summary if s["method"] == m and s["accuracy"] is not None]
        if x == "retention":
            rows.sort(key=lambda s: s["retention"] if s["retention"] is not None else 1.0)
            xs = [s["retention"] if s["retention"] is not None else 1.0 for s in rows]
        else:
            rows.sort(key=lambda s: s["ttft_ms_mean"] or 0.0)
            xs = [s["ttft_ms_mean"] or 0.0 for s in rows]
        ys = [100 * s["accuracy"] for s in rows]
        err = [
            [100 * (s["accuracy"] - s["ci95_low"]) for s in rows],
            [100 * (s["ci95_high"] - s["accuracy"]) for s in rows],
        ]
        label = m or "no compression"
        if m is None and x == "retention":
            ax.axhline(ys[0], color="grey", linestyle="--", linewidth=0.8)
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            marker="o",
            capsize=3,
            label=label,
            linestyle="-" if m else "none",
            color="grey" if m is None else None,
        )
    ax.set_xlabel("retention (kept share of video tokens)" if x == "retention" else "mean TTFT (ms)")
    ax.set_ylabel("accuracy % (95 % Wilson interval)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def write_reports(out: str | os.PathLike, summary: Sequence[dict], settings: dict) -> list[Path]:
    """``summary.json``, ``summary.md`` and both plots in ``out`` (each written atomically)."""
    out = Path(out)
    written = [
        atomic_write_json(out / SUMMARY_JSON, {"settings": settings, "runs": list(summary)}),
        atomic_write_text(out / SUMMARY_MD, markdown_table(summary)),
        plot(summary, out / PLOT_RETENTION, "retention"),
        plot(summary, out / PLOT_TTFT, "ttft"),
    ]
    return [Path(p) for p in written]
