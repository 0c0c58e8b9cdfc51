"""Report of a result store: seaborn figures, ``summary.csv`` and a ``README.md`` embedding them.

One figure set per suite (file names prefixed with the suite name when the store holds more
than one suite). A strategy label has the same colour in every figure. A strategy missing a
metric still appears wherever it has data; its table cell is left empty.

Tables and figures are per group (alma_bench/groups.py): runs of one label with different
configs are never averaged, each is its own row and line, named by the keys that differ. The
table also gives each group's paired difference against the baseline (alma_bench/compare.py).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from alma_bench import compare
from alma_bench.groups import display_key, shared_and_own, show, unflatten
from alma_bench.results import Results, load, summary_table

WIDTH, HEIGHT, DPI = 8.0, 4.5, 110  # ~880 px wide: readable when shown at 800 px
_ENG = EngFormatter(places=2)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
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


def make_report(results_dir: str | Path, out_dir: str | Path | None = None,
                command: str | None = None) -> Path:
    """Write figures, ``summary.csv`` and ``README.md`` for ``results_dir``; return the out dir.

    ``out_dir`` defaults to ``<results_dir>/report``; ``command`` is recorded in the README as
    the command that made the report.
    """
    results = load(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(results.runs)
    table = table.merge(compare.wide(compare.paired(results.runs)), on=["suite", "group"],
                        how="left")
    table.to_csv(out / "summary.csv", index=False)
    results = _by_group(results)
    labels = sorted(results.runs["label"].dropna().astype(str).unique())
    colours = sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))
    # One colour and one marker per label, the same in every figure and suite; markers keep
    # strategies with identical curves (e.g. two dense baselines at density 1) apart.
    look = {"palette": dict(zip(labels, colours, strict=True)),
            "markers": {lb: _MARKERS[i % len(_MARKERS)] for i, lb in enumerate(labels)}}
    suites = sorted(results.runs["suite"].dropna().astype(str).unique())
    sections = []
    # Context managers, not set_theme: a report must not restyle the caller's notebook.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        for suite in suites:
            prefix = f"{_slug(suite)}_" if len(suites) > 1 else ""
            figures = _figures(results, suite, out, prefix, look)
            sections.append(_section(results, table, suite, figures))
    (out / "README.md").write_text(_head(command, suites) + "\n".join(sections))
    return out


def _figures(res: Results, suite: str, out: Path, prefix: str, look: dict) -> list[tuple]:
    """Draw the figures of one suite; return (title, file name) pairs for the README."""
    runs = res.runs[res.runs["suite"] == suite]
    metrics = res.metrics[res.metrics["suite"] == suite]
    tag = f" — {suite}"
    figures = [
        ("Anytime test accuracy", _curve(metrics, "test_acc", "test accuracy (%)", 100,
                                         "Test accuracy after each megabatch" + tag, look)),
        ("Cumulative error rate", _cer(runs, "Cumulative error rate" + tag, look)),
        ("Generalisation gap", _curve(metrics, "gen_gap", "train − test accuracy (pp)", 100,
                                      "Generalisation gap" + tag, look, zero_line=True)),
        ("Density", _curve(metrics, "density", "global density (% of prunable weights)", 100,
                           "Density of the prunable weights" + tag, look)),
        ("Accuracy vs density and FLOPs", _tradeoff(runs, "Final accuracy vs cost" + tag, look)),
    ]
    names = ["anytime_accuracy", "cer", "generalisation_gap", "density", "accuracy_vs_density"]
    written = []
    for (title, fig), name in zip(figures, names, strict=True):
        written.append((title, _save(fig, out / f"{prefix}{name}.png")))
    layers = res.layer_density[res.layer_density["suite"] == suite]
    for label in sorted(layers["label"].dropna().astype(str).unique()):
        if (layers.loc[layers["label"] == label, "density"] >= 1.0).all():
            continue  # a dense strategy: an all-ones heatmap says nothing
        title = f"Per-layer density (seed mean): {label}{tag}"
        fig = _heatmap(layers[layers["label"] == label], title)
        path = out / f"{prefix}layer_density_{_slug(label)}.png"
        written.append((f"Per-layer density: {label}", _save(fig, path)))
    return written


def _curve(metrics: pd.DataFrame, y: str, ylabel: str, scale: float, title: str,
           look: dict, zero_line: bool = False) -> Figure:
    """One line per label (seed mean), band = std over seeds."""
    fig = Figure(figsize=(WIDTH, HEIGHT))
    ax = fig.subplots()
    data = metrics.assign(value=metrics[y] * scale).dropna(subset=["value", "megabatch"])
    if data.empty:
        return _no_data(fig, ax, title, y)
    order = sorted(data["label"].astype(str).unique())
    sns.lineplot(data=data, x="megabatch", y="value", hue="label", style="label",
                 hue_order=order, style_order=order, dashes=False, errorbar="sd", ax=ax,
                 # long streams (app-long: 100 megabatches): markers every ~10 points only
                 markersize=7, markevery=max(1, data["megabatch"].nunique() // 10), **look)
    if zero_line:
        ax.axhline(0, color="0.3", lw=1, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel="megabatch", ylabel=ylabel)
    return fig


def _cer(runs: pd.DataFrame, title: str, look: dict) -> Figure:
    """CER per label: bar = seed mean, error bar = std; rate and error count beside the bar."""
    data = runs.dropna(subset=["cer"])
    order = sorted(data["label"].astype(str).unique())
    # Horizontal bars: long strategy names and the two-number labels fit without overlap.
    fig = Figure(figsize=(WIDTH, max(2.5, 1.3 + 0.45 * len(order))))
    ax = fig.subplots()
    if data.empty:
        return _no_data(fig, ax, title, "cer")
    sns.barplot(data=data, y="label", x="cer", hue="label", order=order, hue_order=order,
                palette=look["palette"], errorbar="sd", capsize=0.3, legend=False, ax=ax)
    stats = data.groupby("label")[["cer", "cer_count"]].agg(["mean", "std"])
    right = 0.0
    for i, label in enumerate(order):
        cer, count = stats.loc[label, ("cer", "mean")], stats.loc[label, ("cer_count", "mean")]
        end = cer + _nan0(stats.loc[label, ("cer", "std")])
        text = f"{cer:.2f}" + ("" if math.isnan(count) else f"  ({count:,.0f} errors)")
        ax.annotate(text, (end, i), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=10)
        right = max(right, end)
    ax.set_xlim(0, right * 1.45)  # room for the labels right of the bars
    # The bar text says "errors" for the count form, so the axis needs only the rate's formula.
    ax.set(title=title, ylabel="",
           xlabel=r"CER = $\Sigma_t\,(1 - \mathrm{test\ acc}_t)$, summed over megabatches")
    return fig


def _tradeoff(runs: pd.DataFrame, title: str, look: dict) -> Figure:
    """Final accuracy against final density and against effective FLOPs, one point per run."""
    fig = Figure(figsize=(WIDTH * 1.15, HEIGHT))
    axes = fig.subplots(1, 2, sharey=True)
    data = runs.assign(acc=runs["final_test_acc"] * 100, dens=runs["final_density"] * 100)
    order = sorted(data["label"].dropna().astype(str).unique())
    for ax, x, xlabel in zip(axes, ["dens", "flops_effective"],
                             ["final density (% of prunable weights)",
                              "effective inference FLOPs"], strict=True):
        points = data.dropna(subset=["acc", x])
        if points.empty:
            _no_data(fig, ax, "", "a final accuracy and " + xlabel.split(" (")[0])
        else:
            sns.scatterplot(data=points, x=x, y="acc", hue="label", style="label",
                            hue_order=order, style_order=order, s=70, ax=ax, **look)
        ax.set(xlabel=xlabel, ylabel="")
    axes[0].set_ylabel("final test accuracy (%)")
    if axes[0].get_legend() and axes[1].get_legend():
        axes[0].get_legend().remove()  # one shared legend, at the right
    flops = data.dropna(subset=["acc"])["flops_effective"].dropna()
    if len(flops):
        if flops.min() > 0 and flops.max() / flops.min() > 20:
            axes[1].set_xscale("log")  # sparse and dense runs differ by orders of magnitude
        axes[1].xaxis.set_major_formatter(EngFormatter())
    fig.suptitle(title)
    return fig


def _heatmap(layers: pd.DataFrame, title: str) -> Figure:
    """Rows: layers in model order; columns: megabatch; cell: density averaged over seeds."""
    grid = layers.groupby(["layer", "megabatch"])["density"].mean().unstack("megabatch")
    grid = grid.reindex(list(dict.fromkeys(layers["layer"])))  # model order, not alphabetical
    grid.columns = [int(c) for c in grid.columns]
    fig = Figure(figsize=(WIDTH, max(3.0, 1.6 + 0.38 * len(grid))))
    ax = fig.subplots()
    # At most ~15 megabatch labels, upright: 30 rotated labels are hard to read at 800 px.
    sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=grid.size <= 160, fmt=".2f",
                cbar_kws={"label": "density (fraction of weights kept)"}, ax=ax,
                xticklabels=max(1, math.ceil(grid.shape[1] / 15)))
    ax.tick_params(axis="x", labelrotation=0)
    ax.set(title=title, xlabel="megabatch", ylabel="layer")
    return fig


def _no_data(fig: Figure, ax, title: str, metric: str) -> Figure:
    # Keep the file set stable for readers and tools: an empty figure says why it is empty.
    ax.text(0.5, 0.5, f"no run has recorded\n{metric} yet", ha="center", va="center",
            transform=ax.transAxes)
    ax.set(title=title, xticks=[], yticks=[])
    return fig


def _nan0(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)


def _save(fig: Figure, path: Path) -> str:
    """Move legends outside the axes (many strategies would hide the data), write the PNG."""
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="strategy",
                            frameon=False)
    # A Figure drawn without pyplot renders with Agg and leaves the global backend alone.
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path.name


def _by_group(res: Results) -> Results:
    """The store with each run's label replaced by its group label: figures draw one line
    per group, so two configs of one strategy are never pooled into one curve."""
    return Results(*(df.assign(label=df["group_label"]) for df in
                     (res.runs, res.metrics, res.layer_density)), configs=res.configs)


def _section(res: Results, table: pd.DataFrame, suite: str, figures: list[tuple]) -> str:
    runs = res.runs[res.runs["suite"] == suite].drop_duplicates("group")
    shared, own = shared_and_own({str(g): json.loads(c) for g, c
                                  in zip(runs["group_label"], runs["config"])})
    # One line per top-level key: compact, and still valid JSON to paste into a script.
    body = ",\n ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in unflatten(shared).items())
    lines = [f"## Suite `{suite}`", "", "Config shared by every group:", "", "```json",
             "{" + body + "}", "```", ""]
    if len(own) > 1:
        lines += ["Config of each group (the keys that differ):", "", "| group | config |",
                  "|---|---|"]
        for g, keys in own.items():
            text = ", ".join(f"{display_key(k)}={show(v)}" for k, v in keys.items())
            lines.append(f"| {_cell(g)} | {_cell(text)} |")
        lines.append("")
    lines += _markdown_table(table[table["suite"] == suite]) + [""]
    unfinished = res.runs[(res.runs["suite"] == suite) & (res.runs["state"] != "done")]
    if len(unfinished):
        note = f"{len(unfinished)} run(s) unfinished: their megabatches so far are in the curves"
        lines += [note + ", not in the table.", ""]
    lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in figures]
    return "\n".join(lines)


def _markdown_table(rows: pd.DataFrame) -> list[str]:
    """Mean ± std per group; a 'paper' column beside ours wherever a reference exists; the
    paired difference against the baseline with its 95% t-interval and number of pairs."""
    refs = [c for c in rows.columns if c.startswith("ref_") and rows[c].notna().any()]
    header, cells = ["strategy", "seeds"], [[_cell(r.group_label), f"{r.n_seeds}"]
                                           for r in rows.itertuples()]
    for metric, name, scale, fmt in _TABLE:
        header.append(name)
        for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
            cell.append(_fmt(r[f"{metric}_mean"], r[f"{metric}_std"], scale, fmt))
        if f"ref_{metric}" in refs:
            header.append(f"paper {name.split(' (')[0]}")  # "paper final test acc", beside ours
            for cell, (_, r) in zip(cells, rows.iterrows(), strict=True):
                cell.append(_fmt(r[f"ref_{metric}"], math.nan, scale, fmt))
    for ref in (r for r in refs if r[4:] not in {t[0] for t in _TABLE}):
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
                     "" if pd.isna(r["baseline"]) else _cell(r["baseline"])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c) + " |" for c in cells]


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


def _head(command: str | None, suites: list[str]) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join([
        "# alma-bench report", "", f"Suites: {', '.join(suites)}. Generated {now}.", "",
        "Command:", "", "```", command or "(not recorded)", "```", "",
        f"Machine (where this report was made): {_machine()}", "",
        ("Table: one row per group, the runs whose configs are equal except for the seed "
         "(a label run with several configs is split, named by the keys that differ); mean ± "
         "sample std over seeds; *seeds* counts finished runs. Δ = mean paired difference "
         "from the baseline over the seeds both ran (a seed fixes stream, split and init), "
         "with its 95% t-interval; *pairs* = shared seeds (the interval is NaN below 2). "
         "CER = Σₜ (1 − test accₜ); CER (errors) = misclassified test images "
         "summed over megabatches. Gen. gap = train − test accuracy. *paper* = the number the "
         "strategy's paper reports, when the suite gives one."), "", ""])


def _machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    try:
        import torch  # only to name the GPU and version; heavy, so not imported at module load

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        version = torch.__version__
    except ImportError:
        gpu, version = "none", "not installed"
    return (f"{cpu}, {os.cpu_count()} cores; GPU: {gpu}; torch {version}; "
            f"Python {platform.python_version()}; {platform.system()} {platform.release()}")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")  # a pipe in a label would split the table row


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))
