"""``alma-bench show`` output: the summary table as aligned text, CSV, Markdown or LaTeX.

Rows are groups (alma_bench/analysis/groups.py): one label with two configs is two rows, each
named by the config keys that differ. CSV keeps every grouping column (suite, group, group_label,
label, strategy, the varying config keys) so it loads back into pandas as it was.
"""

from __future__ import annotations

import math

import pandas as pd

from alma_bench.analysis.groups import base_label
from alma_bench.analysis.results import RUN_COLUMNS, SUMMARY_FIELDS
from alma_bench.errors import UserError, unknown

FORMATS = ("table", "csv", "markdown", "latex")
#: metric -> (column header, scale) of the text table; other metrics: their name, scale 1.
HEADERS = {
    "final_test_acc": ("final acc %", 100), "cer": ("CER", 1), "cer_count": ("CER count", 1),
    "final_gen_gap": ("gap %", 100), "final_density": ("density", 1),
    "wall_time": ("time s", 1),
}
DEFAULT_METRICS = tuple(HEADERS)
ID_COLUMNS = ("suite", "group", "group_label", "label", "strategy")


def metric_names(runs: pd.DataFrame) -> list[str]:
    """Metrics a table can average: summary.json fields (numeric columns of ``runs`` that are
    not run bookkeeping, references or config keys)."""
    skip = set(RUN_COLUMNS) | {"seed"}
    extra = [c for c in runs.columns if c not in skip and not str(c).startswith("ref_")
             and not str(c).startswith("config.") and "." not in str(c)
             and pd.api.types.is_numeric_dtype(runs[c])]
    return list(dict.fromkeys([*SUMMARY_FIELDS, *extra]))


def check_metrics(runs: pd.DataFrame, metrics: list[str] | None, default) -> tuple[str, ...]:
    """``metrics`` (names, or comma-separated names) validated; ``default`` when none given."""
    if not metrics:
        return tuple(default)
    names = [m.strip() for text in metrics for m in text.split(",") if m.strip()]
    valid = metric_names(runs)
    for m in names:
        if m not in valid:
            raise unknown("metric", m, valid)
    return tuple(dict.fromkeys(names))


def in_order(table: pd.DataFrame, labels: list[str] | None) -> pd.DataFrame:
    """Rows sorted by the position of their label (or its grid entry's) in ``labels``, the
    suite's run order; rows not named keep their order, after the named ones."""
    if not labels:
        return table
    rank = {str(lb): i for i, lb in enumerate(labels)}
    keys = [rank.get(str(lb), rank.get(base_label(str(lb)), len(rank))) for lb in table["label"]]
    return table.iloc[sorted(range(len(table)), key=lambda i: keys[i])].reset_index(drop=True)


def render(table: pd.DataFrame, metrics: tuple[str, ...], fmt: str = "table") -> str:
    """``summary_table`` output as text in one of FORMATS."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'. Valid: {', '.join(FORMATS)}")
    if fmt == "csv":
        keys = [c for c in table.columns if "." in str(c)]  # the varying config keys
        cols = [*ID_COLUMNS, *keys, "n_seeds", "n_runs",
                *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]
        return table.reindex(columns=cols).to_csv(index=False)
    several = table["suite"].nunique() > 1
    header = (["suite"] if several else []) + ["strategy", "seeds"]
    header += [HEADERS.get(m, (m, 1))[0] for m in metrics]
    rows = []
    for _, r in table.iterrows():
        cells = ([str(r["suite"])] if several else []) + [str(r["group_label"]),
                                                          str(int(r["n_seeds"]))]
        for m in metrics:
            scale = HEADERS.get(m, (m, 1))[1]
            cells.append(_pm(r.get(f"{m}_mean"), r.get(f"{m}_std"), scale, m in HEADERS))
        rows.append(cells)
    if fmt == "markdown":
        esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
        lines = ["| " + " | ".join(row) + " |" for row in esc]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    if fmt == "latex":
        body = [" & ".join(_latex(c) for c in row) + r" \\" for row in rows]
        return "\n".join([r"\begin{tabular}{" + "l" * (1 + several) + "r" * (len(header)
                                                                              - 1 - several)
                          + "}", r"\toprule", " & ".join(map(_latex, header)) + r" \\",
                          r"\midrule", *body, r"\bottomrule", r"\end{tabular}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _pm(m, s, scale: float, fixed: bool) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    # the known metrics keep the table's two decimals; others (FLOPs, counts) need 4 digits
    show = (lambda v: f"{v * scale:.2f}") if fixed else (lambda v: f"{v * scale:.4g}")
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return show(m)
    return f"{show(m)} ± {show(s)}"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "±": r"$\pm$"}


def latex_cell(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``±`` as ``$\\pm$``)."""
    return _latex(text)


def _latex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
