"""The report's table in Markdown: mean ± std per group, the paper's numbers beside ours where a
suite gives them, and the paired difference against the baseline with its 95% t-interval
(alma_bench/analysis/compare.py)."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.ticker import (
    EngFormatter,
)

from alma_bench.analysis import compare

_ENG = EngFormatter(places=2)
# (metric, column header, scale, format) of the README table.
_TABLE = (
    ("final_test_acc", "final test acc (%)", 100, "{:.1f}"),
    ("cer", "CER", 1, "{:.3f}"),
    ("cer_count", "CER (errors)", 1, "{:,.0f}"),
    ("final_gen_gap", "final gen. gap (pp)", 100, "{:.1f}"),
    ("final_density", "final density (%)", 100, "{:.1f}"),
    ("flops_effective", "eff. FLOPs", 1, None),
    ("wall_time", "wall time (s)", 1, "{:,.0f}"),
)


def markdown_table(rows: pd.DataFrame) -> list[str]:
    """Mean ± std per group; a 'paper' column beside ours wherever a reference exists; the
    paired difference against the baseline with its 95% t-interval and number of pairs."""
    refs = [c for c in rows.columns if c.startswith("ref_") and rows[c].notna().any()]
    header, cells = ["strategy", "seeds"], [[md_cell(r.group_label), f"{r.n_seeds}"]
                                           for r in rows.itertuples()]
    for metric, name, scale, fmt in _TABLE:
        header.append(name)
        for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
            cell.append(_fmt(r[f"{metric}_mean"], r[f"{metric}_std"], scale, fmt))
        if f"ref_{metric}" in refs:
            header.append(f"paper {name.split(' (')[0]}")  # "paper final test acc", beside ours
            for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
                cell.append(_fmt(r[f"ref_{metric}"], math.nan, scale, fmt))
    known = {t[0] for t in _TABLE}
    for ref in (r for r in refs if r[4:] not in known):
        header.append(f"paper {ref[4:]}")
        for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
            cell.append(_fmt(r[ref], math.nan, 1, "{:.4g}"))
    look = {t[0]: t for t in _TABLE}
    for metric in (m for m in compare.DEFAULT_METRICS if f"{m}_diff" in rows.columns):
        _, name, scale, fmt = look[metric]
        unit = " (pp)" if scale == 100 else ""
        header.append(f"Δ {name.split(' (')[0]}{unit} vs baseline, 95% t-CI")
        for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
            cell.append(_diff(r, metric, scale, fmt))
    if "baseline" in rows.columns:
        header += ["pairs", "baseline"]
        first = compare.DEFAULT_METRICS[0]
        for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
            own = r["baseline"] == r["group_label"]
            n = r.get(f"{first}_n_pairs")
            cell += ["" if own or pd.isna(n) else f"{int(n)}",
                     "" if pd.isna(r["baseline"]) else md_cell(r["baseline"])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c) + " |" for c in cells]


def metrics_table(rows: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The strategies' own row metrics (``Results.row_metrics``: a plugin's ``metrics()``),
    their value at the last megabatch, mean ± std per group; only groups that have one."""
    metrics = [m for m in metrics if f"{m}_mean" in rows.columns]
    if not metrics:
        return []
    have = rows[rows[[f"{m}_mean" for m in metrics]].notna().any(axis=1)]
    if have.empty:
        return []
    lines = ["| strategy | " + " | ".join(md_cell(m) for m in metrics) + " |",
             "|" + "---|" * (len(metrics) + 1)]
    for _, r in have.iterrows():
        cells = [_fmt(r[f"{m}_mean"], r[f"{m}_std"], 1, "{:.4g}") for m in metrics]
        lines.append("| " + " | ".join([md_cell(r["group_label"]), *cells]) + " |")
    return lines


def _diff(r: pd.Series, metric: str, scale: float, fmt: str) -> str:
    """``+1.2 [0.1, 2.3]``; ``(baseline)`` on the baseline's row; the CI is NaN below 2 pairs."""
    if r["baseline"] == r["group_label"]:
        return "(baseline)"
    diff, n = r[f"{metric}_diff"], r[f"{metric}_n_pairs"]
    if pd.isna(diff):
        return "no shared seed" if not pd.isna(r["baseline"]) else ""
    text = ("+" if diff > 0 else "") + fmt.format(diff * scale)
    if n < 2:
        return f"{text}, CI NaN (1 pair)"
    low, high = (fmt.format(r[f"{metric}_{k}"] * scale) for k in ("ci_low", "ci_high"))
    return f"{text} [{low}, {high}]"


def _fmt(mean: float, std: float, scale: float, fmt: str | None) -> str:
    if mean is None or pd.isna(mean):
        return ""
    show = (lambda v: _ENG(v).strip()) if fmt is None else fmt.format
    text = show(float(mean) * scale)
    return text if pd.isna(std) else f"{text} ± {show(float(std) * scale)}"


def md_cell(value: object) -> str:
    return str(value).replace("|", "\\|")  # a pipe in a label would split the table row
