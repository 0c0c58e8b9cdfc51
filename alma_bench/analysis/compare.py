"""Paired comparison of groups against a baseline group (ALGORITHMS.md section 2).

A seed fixes the stream, its split and the initialisation, so two groups of one suite run with
the same seed are paired: the difference of a metric between them is measured per shared
seed, and the mean of those differences gets a 95% t-interval,
``mean ± t_{0.975, n-1} * sd / sqrt(n)`` over the n shared seeds (NaN with fewer than 2).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from alma_bench.analysis.groups import base_label
from alma_bench.analysis.results import grouped
from alma_bench.analysis.tables import latex_cell
from alma_bench.errors import UserError

DEFAULT_METRICS = ("final_test_acc", "cer")
DEFAULT_BASELINE = "dense"
LEVEL = 0.95
#: metric -> (scale, unit of a mean, unit of a difference, decimals) for text; others are
#: shown as they are, with 2 decimals.
UNITS = {
    "final_test_acc": (100, "%", "pp", 2), "final_gen_gap": (100, "pp", "pp", 2),
    "mean_gen_gap": (100, "pp", "pp", 2), "final_density": (100, "%", "pp", 2),
    "cer": (1, "", "", 3), "wall_time": (1, "s", "s", 2),
}
COLUMNS = ("suite", "group", "group_label", "baseline", "metric", "n_seeds", "mean", "std",
           "diff", "ci_low", "ci_high", "n_pairs")


def paired(runs: pd.DataFrame, baseline: str | None = None,
           metrics: tuple[str, ...] = DEFAULT_METRICS, level: float = LEVEL) -> pd.DataFrame:
    """One row per (group, metric), groups in the order of ``runs``: mean and sample std over
    seeds, and against the suite's baseline group the mean paired difference (group minus
    baseline) over shared seeds, its ``level`` t-interval and ``n_pairs``. The baseline's
    own row has NaN differences; ``baseline`` names the group_label it was compared with.

    ``baseline``: a group label, a label, or a suite entry's label (covering a grid's
    expansions); default ``dense`` where a suite has it, else the suite's first group. When
    several groups answer to the name (dense under a grid of learning rates), each group is
    compared with the one whose config outside the strategy equals its own.
    """
    # the t quantile: scipy.stats.t.ppf is this function, and scipy.special loads in half
    # the time of scipy.stats (scipy comes with scikit-learn)
    from scipy.special import stdtrit

    runs = grouped(runs)
    rows = []
    for suite, in_suite in runs.groupby("suite", sort=False, dropna=False):
        order = list(dict.fromkeys(in_suite["group"]))
        name = {g: str(lb) for g, lb in zip(in_suite["group"], in_suite["group_label"])}
        against = _baselines(in_suite, order, baseline, str(suite))
        for g in order:
            mine = in_suite[in_suite["group"] == g]
            base = in_suite[in_suite["group"] == against[g]] if against[g] else None
            for metric in metrics:
                values = pd.to_numeric(mine[metric], errors="coerce").dropna()
                row = {"suite": suite, "group": g, "group_label": name[g],
                       "baseline": name.get(against[g]), "metric": metric,
                       "n_seeds": len(values), "mean": values.mean(),
                       "std": values.std(ddof=1), "diff": math.nan, "ci_low": math.nan,
                       "ci_high": math.nan, "n_pairs": 0}
                if base is not None and against[g] != g:
                    diffs = (_by_seed(mine, metric) - _by_seed(base, metric)).dropna()
                    row.update(_interval(diffs, level, stdtrit))
                rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """``paired`` as one row per (suite, group): ``baseline``, and per metric ``<m>_diff``,
    ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_n_pairs``; to join onto ``summary_table``."""
    out = table.groupby(["suite", "group"], sort=False)[["baseline"]].first()
    for metric, part in table.groupby("metric", sort=False):
        part = part.set_index(["suite", "group"])
        for col in ("diff", "ci_low", "ci_high", "n_pairs"):
            out[f"{metric}_{col}"] = part[col]
    return out.reset_index()


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    # one value per seed; equal configs and seed are one computation, so a seed found twice
    # (copied folders) is that value, not two samples
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.groupby(rows["seed"]).mean()


def _interval(diffs: pd.Series, level: float, stdtrit) -> dict:
    """Mean of ``diffs`` and its ``level`` t-interval; ``stdtrit(df, p)`` is the t quantile."""
    n = len(diffs)
    if n == 0:
        return {"n_pairs": 0}
    mean = float(diffs.mean())
    out = {"diff": mean, "n_pairs": n}
    if n >= 2:
        half = float(stdtrit(n - 1, 0.5 + level / 2)) * float(diffs.std(ddof=1)) / math.sqrt(n)
        out.update(ci_low=mean - half, ci_high=mean + half)
    return out


def _baselines(runs: pd.DataFrame, order: list[str], wanted: str | None,
               suite: str) -> dict[str, str | None]:
    """Group -> its baseline group in one suite (None where no baseline config matches)."""
    first = runs.drop_duplicates("group").set_index("group")
    candidates = _named(first, wanted or DEFAULT_BASELINE)
    if not candidates:
        if wanted is not None:
            names = list(dict.fromkeys([*first["group_label"], *first["label"]]))
            raise UserError(f"baseline '{wanted}' is not a group of suite '{suite}'. "
                            f"Valid: {', '.join(map(str, names))}")
        candidates = order[:1]
    if len(candidates) == 1:
        return {g: candidates[0] for g in order}
    outside = {g: _outside_strategy(first.at[g, "config"]) if "config" in first else ""
               for g in order}
    return {g: next((c for c in candidates if outside[c] == outside[g]), None) for g in order}


def _named(first: pd.DataFrame, name: str) -> list[str]:
    """Groups a baseline name means: the one group of that group label, else every group of
    that label or suite entry (a grid's expansions share their entry's label)."""
    exact = [g for g, v in first["group_label"].items() if str(v) == name]
    if len(exact) == 1:
        return exact
    return [g for g, v in first["label"].items() if name in (str(v), base_label(str(v)))]


def _outside_strategy(config: str) -> str:
    """The part of a config key that is not about the strategy (JSON text, comparable)."""
    key = json.loads(config) if isinstance(config, str) else {}
    return json.dumps({k: v for k, v in key.items() if not k.startswith(("strategy", "deps."))},
                      sort_keys=True, default=str)


def format_text(table: pd.DataFrame, level: float = LEVEL) -> str:
    """``paired`` as aligned tables (one per suite and metric), then one sentence per
    comparison, e.g. ``app-snip vs dense: final_test_acc +1.23 pp, 95% t-CI [0.10, 2.30],
    n = 3``."""
    pct = f"{level * 100:g}%"
    blocks, sentences = [], []
    for suite, part in table.groupby("suite", sort=False):
        bases = list(dict.fromkeys(str(b) for b in part["baseline"].dropna()))
        blocks.append(f"Suite {suite}: each group minus its baseline ({', '.join(bases)}), "
                      f"paired by seed; mean difference over the shared seeds with a {pct} "
                      "t-interval (mean ± t quantile × sd / √n).")
        for metric, rows in part.groupby("metric", sort=False):
            unit = UNITS.get(metric, (1, "", "", 2))
            header = ["group", "seeds", f"mean ± std{_paren(unit[1])}",
                      f"diff vs baseline{_paren(unit[2])}", f"{pct} t-interval", "n pairs"]
            header += ["baseline"] if len(bases) > 1 else []
            cells = []
            for r in rows.itertuples():
                cells.append(_cells(r, unit)[:len(header)])
                if r.baseline != r.group_label:
                    sentences.append(_sentence(r, unit, pct))
            blocks.append(f"\n{metric}\n" + _aligned(header, cells))
        blocks.append("")
    return "\n".join(blocks + sentences)


FORMATS = ("text", "csv", "markdown", "latex")


def render(table: pd.DataFrame, fmt: str = "text", level: float = LEVEL) -> str:
    """``paired`` as ``text`` (:func:`format_text`), ``csv`` (every column, numbers as they
    are), or one table with a row per (group, metric) in ``markdown`` or ``latex``."""
    if fmt == "text":
        return format_text(table, level)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'. Valid: {', '.join(FORMATS)}")
    several = table["suite"].nunique() > 1
    header = (["suite"] if several else []) + [
        "group", "metric", "seeds", "mean ± std", "diff vs baseline",
        f"{level * 100:g}% t-interval", "n pairs", "baseline"]
    rows = []
    for r in table.itertuples():
        unit = UNITS.get(r.metric, (1, "", "", 2))
        cells = _cells(r, unit)
        rows.append(([str(r.suite)] if several else []) + [cells[0], str(r.metric), *cells[1:]])
    if fmt == "markdown":
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                 for row in [header, *rows]]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    body = [" & ".join(latex_cell(c) for c in row) + r" \\" for row in rows]
    return "\n".join([r"\begin{tabular}{" + "l" * (2 + several) + "r" * 5 + "l}", r"\toprule",
                      " & ".join(map(latex_cell, header)) + r" \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"])


def _cells(r, unit: tuple) -> list[str]:
    scale, digits = unit[0], unit[3]
    own = r.baseline == r.group_label
    return [r.group_label, str(r.n_seeds), _pm(r.mean, r.std, scale, digits),
            "(baseline)" if own else _num(r.diff, scale, digits, signed=True),
            "" if own else _ci(r.ci_low, r.ci_high, scale, digits),
            "" if own else str(r.n_pairs), "" if r.baseline is None else str(r.baseline)]


def _sentence(r, unit: tuple, pct: str) -> str:
    scale, dunit, digits = unit[0], unit[2], unit[3]
    if r.baseline is None:
        return (f"{r.group_label}: {r.metric}: no baseline group has its config outside the "
                "strategy, n = 0")
    head = f"{r.group_label} vs {r.baseline}: {r.metric}"
    if r.n_pairs == 0:
        return f"{head}: no seed in common with the baseline, n = 0"
    diff = _num(r.diff, scale, digits, signed=True) + (f" {dunit}" if dunit else "")
    if r.n_pairs < 2:
        return (f"{head} {diff}, {pct} t-CI NaN (one pair: an interval needs at least 2 "
                f"shared seeds), n = {r.n_pairs}")
    return (f"{head} {diff}, {pct} t-CI {_ci(r.ci_low, r.ci_high, scale, digits)}, "
            f"n = {r.n_pairs}")


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, *rows])


def _paren(unit: str) -> str:
    return f" ({unit})" if unit else ""


def _num(v, scale: float, digits: int, signed: bool = False) -> str:
    if v is None or pd.isna(v):
        return "NaN"
    return f"{v * scale:{'+' if signed else ''}.{digits}f}"


def _pm(mean, std, scale: float, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    return _num(mean, scale, digits) + ("" if pd.isna(std) else f" ± {_num(std, scale, digits)}")


def _ci(low, high, scale: float, digits: int) -> str:
    if pd.isna(low) or pd.isna(high):
        return "NaN"
    return f"[{_num(low, scale, digits)}, {_num(high, scale, digits)}]"
