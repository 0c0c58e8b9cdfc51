"""The report's figures (seaborn): accuracy and CER curves over megabatches, the CER bars, the
accuracy-density trade-off, layer-density heatmaps and learned schedules, one set per suite
(``make_report`` in alma_bench/analysis/report.py writes them). A strategy label has the same
colour in every figure; lines are per group (alma_bench/analysis/groups.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    EngFormatter,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from alma_bench.analysis.groups import (
    ABSENT,
    base_label,
    differing,
    display_key,
    show,
)
from alma_bench.analysis.results import Results

WIDTH, HEIGHT, DPI = 8.0, 4.5, 110  # ~880 px wide: readable when shown at 800 px
_ENG = EngFormatter(places=2)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
# Dash patterns per label: with the markers they tell coinciding lines apart in grey print.
_DASHES = ("-", (0, (5, 1.5)), (0, (1.5, 1.2)), (0, (6, 1.5, 1.5, 1.5)), (0, (3, 1.2)),
           (0, (8, 2, 1.5, 2, 1.5, 2)), (0, (10, 3)), (0, (2.5, 2.5)),
           (0, (6, 1.5, 1.5, 1.5, 1.5, 1.5)), (0, (1, 3)))
# Strategy parameters that set the final density: a sweep over them is one trade-off curve.
_SWEPT = frozenset({"strategy.params.density", "strategy.params.tau"})


def figures(results: Results, suite: str, look: dict | None = None) -> list[tuple]:
    """The figures of one suite as (file stem, title, matplotlib Figure), not saved: what a
    report writes, for a notebook or a test to inspect. ``results`` as ``load`` returns it."""
    res = by_group(results)
    look = look or label_look(res.runs)
    runs = res.runs[res.runs["suite"] == suite]
    metrics = res.metrics[res.metrics["suite"] == suite]
    tag = f" — {suite}"
    with theme():
        drawn = [
            ("anytime_accuracy", "Anytime test accuracy",
             _curve(metrics, "test_acc", "test accuracy (%)", 100,
                    "Test accuracy after each megabatch" + tag, look, zoom=True)),
            ("cer", "Cumulative error rate", _cer(runs, "Cumulative error rate" + tag, look)),
            ("generalisation_gap", "Generalisation gap",
             _curve(metrics, "gen_gap", "train − test accuracy (pp)", 100,
                    "Generalisation gap" + tag, look, zero_line=True)),
            ("density", "Density",
             _curve(metrics, "density", f"global density ({density_unit(runs)})", 100,
                    "Density of the prunable weights" + tag, look)),
            ("accuracy_vs_density", "Accuracy vs density and FLOPs",
             _tradeoff(runs, "Final accuracy vs cost" + tag, look)),
        ]
        layers = res.layer_density[res.layer_density["suite"] == suite]
        for label in sorted(layers["label"].dropna().astype(str).unique()):
            if (layers.loc[layers["label"] == label, "density"] >= 1.0).all():
                continue  # a dense strategy: an all-ones heatmap says nothing
            title = f"Per-layer density (seed mean): {label}{tag}"
            drawn.append((f"layer_density_{slug(label)}", f"Per-layer density: {label}",
                          _heatmap(layers[layers["label"] == label], title)))
        decisions = res.schedule[res.schedule["suite"] == suite]
        for label in sorted(decisions["label"].dropna().astype(str).unique()):
            title = f"Learned schedule (seed mean of each decision's target): {label}{tag}"
            drawn.append((f"learned_schedule_{slug(label)}", f"Learned schedule: {label}",
                          _schedule_heatmap(decisions[decisions["label"] == label], title)))
    return drawn


def write_figures(res: Results, suite: str, out: Path, prefix: str, look: dict,
             formats: tuple[str, ...] = ("png",), on_figure=None) -> list[tuple]:
    """Draw and write the figures of one suite; return (title, file name) pairs for the
    README."""
    written = []
    for stem, title, fig in figures(res, suite, look):
        if on_figure is not None:
            on_figure(prefix + stem, fig)
        written.append((title, _save(fig, out / f"{prefix}{stem}", formats)))
    return written


@contextlib.contextmanager
def theme():
    # Context managers, not set_theme: a report must not restyle the caller's notebook.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        yield


def label_look(runs: pd.DataFrame) -> dict:
    """Colour, marker and dash pattern of every group label and every trade-off curve, the
    same in every figure and suite.

    A curve (a strategy over its swept densities, ``_curve_names``) has one colour; each of
    its groups a shade of it, sparser lighter, so ``osp-snip[density=0.1]`` in
    the anytime curves is visibly the ``osp-snip`` of the trade-off figure. Markers and dashes
    differ per group label, so lines that coincide (two dense baselines at density 1, two
    pruners at one schedule) stay distinguishable without colour.
    """
    curves = _curve_names(runs) if len(runs) else pd.Series(dtype=str)
    groups = list(dict.fromkeys(runs["label"].dropna().astype(str)))
    names = list(dict.fromkeys(curves.astype(str)))
    base = dict(zip(names, _colours(len(names)), strict=True))
    palette = dict(base)
    of_curve = dict(zip(runs["label"].astype(str), curves.astype(str), strict=True))
    # shades from light to dark with the final density, where known: sparser is lighter
    density = (pd.to_numeric(runs["final_density"], errors="coerce")
               .groupby(runs["label"].astype(str)).mean().dropna().to_dict()
               if "final_density" in runs.columns else {})
    for name in names:
        members = sorted((g for g in groups if of_curve.get(g) == name),
                         key=lambda g: (g not in density, density.get(g, 0.0)))
        if len(members) > 1:  # shades only where a curve has several groups
            colour = base[name]
            shades = sns.blend_palette([_mix(colour, (1, 1, 1), 0.5), colour,
                                        _mix(colour, (0, 0, 0), 0.45)], len(members))
            palette.update(zip(members, shades, strict=True))
        else:
            palette.update({g: base[name] for g in members})
    every = list(dict.fromkeys(groups + names))
    return {"palette": palette,
            "markers": {lb: _MARKERS[i % len(_MARKERS)] for i, lb in enumerate(every)},
            "dashes": {lb: _DASHES[i % len(_DASHES)] for i, lb in enumerate(every)}}


def _colours(n: int) -> list:
    """``n`` distinct qualitative colours: tab10, then Dark2 (husl's evenly spaced hues are
    too alike beyond 10, e.g. two pinks for dense and imp-q in quickstart), husl past 18."""
    if n > 18:
        return sns.color_palette("husl", n)
    return (sns.color_palette("tab10") + sns.color_palette("Dark2"))[:n]


def _mix(colour, towards, amount: float) -> tuple:
    return tuple((1 - amount) * c + amount * t for c, t in zip(colour, towards, strict=True))


def _curve_names(runs: pd.DataFrame) -> pd.Series:
    """The trade-off curve of each run: its suite entry's label without the grid suffix
    (``osp-snip[density=0.1]`` -> ``osp-snip``), so a density sweep is one curve. Runs of one
    entry whose configs differ in anything but the final-density parameters (a second
    learning rate, another pruner) are separate curves, named by the keys that differ:
    one curve never pools configs that the tables keep apart."""
    entry = (runs["entry"] if "entry" in runs.columns else runs["label"]).astype(str)
    base = entry.map(base_label)
    if "config" not in runs.columns:
        return base
    rest = runs["config"].map(lambda c: {k: v for k, v in json.loads(c).items()
                                         if k not in _SWEPT} if isinstance(c, str) else {})
    names = base.copy()
    # per suite, as groups are: one entry in two suites is two figures, not two curves
    suite = runs["suite"].astype(str) if "suite" in runs.columns else base.map(lambda _: "")
    for _, idx in base.groupby([suite, base], sort=False).groups.items():
        diff = differing(list(rest.loc[idx]))
        for i in idx if diff else ():
            suffix = ", ".join(f"{display_key(k)}={show(rest[i].get(k, ABSENT))}" for k in diff)
            names[i] = f"{base[i]} [{suffix}]"
    return names


def _curve(metrics: pd.DataFrame, y: str, ylabel: str, scale: float, title: str,
           look: dict, zero_line: bool = False, zoom: bool = False) -> Figure:
    """One line per label: mean over seeds, band = ± 1 sample SD over seeds. ``zoom`` adds a
    panel over the last third of the stream with its own y range: the final differences
    (tenths of a point at 98%) are invisible on the full stream's 60-100% axis."""
    fig = Figure(figsize=(WIDTH * (1.5 if zoom else 1.15), HEIGHT), layout="constrained")
    data = metrics.assign(value=metrics[y] * scale).dropna(subset=["value", "megabatch"])
    if data.empty:
        return _no_data(fig, fig.subplots(), title, y)
    stats = (data.groupby(["label", "megabatch"], sort=False)["value"]
             .agg(["mean", "std", "count"]).reset_index().sort_values("megabatch"))
    order = list(dict.fromkeys(data["label"].astype(str)))
    seeds = stats.groupby("label")["count"].max()
    steps = sorted(stats["megabatch"].unique())
    window = steps[-max(2, math.ceil(len(steps) / 3)):] if zoom and len(steps) >= 4 else []
    if window:
        ax, zax = fig.subplots(1, 2, width_ratios=[3, 2])
    else:
        ax, zax = fig.subplots(), None
    # Long streams (app-long: 100 megabatches) get ~10 markers per line, each line's markers
    # shifted, so lines that coincide still show every marker shape.
    every = max(1, len(steps) // 10)
    span = _span(stats["mean"], stats["mean"])
    same = _coinciding(stats, order, 0.002 * (span[1] - span[0]))
    for i, label in enumerate(order):
        s = stats[stats["label"] == label]
        kw = _line_style(look, label, i, len(order), every)
        name = label if seeds[label] == seeds.max() else f"{label} (n = {seeds[label]})"
        if label in same:  # drawn over another line: the legend says which
            name += f"  (≈ {same[label]})"
        ax.plot(s["megabatch"], s["mean"], label=name, **kw)
        ax.fill_between(s["megabatch"], s["mean"] - s["std"], s["mean"] + s["std"],
                        color=kw["color"], alpha=_band_alpha(len(order)), lw=0)
    if zero_line:
        ax.axhline(0, color="0.3", lw=1, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="megabatch", ylabel=ylabel)
    kind = "band"
    if zax is not None:
        kind = "band, bars" if len(window) <= 12 else "band"
        _zoom(ax, zax, stats, order, window, look, every)
        fig.suptitle(title)
    else:
        ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", frameon=False,
               title=_legend_title(seeds, kind))
    return fig


def _zoom(ax, zax, stats: pd.DataFrame, order: list[str], window: list, look: dict,
          every: int) -> None:
    """The last megabatches on their own y range. Up to 12 megabatches: points with ± SD
    bars, shifted apart in x per label (overlapping bands would hide each other); more:
    lines and bands as in the full panel."""
    part = stats[stats["megabatch"] >= window[0]]
    low, high = _span(part["mean"] - part["std"].fillna(0), part["mean"] + part["std"].fillna(0))
    bars = len(window) <= 12
    for i, label in enumerate(order):
        s = part[part["label"] == label]
        kw = _line_style(look, label, i, len(order), every)
        if bars:
            shift = (i - (len(order) - 1) / 2) * min(0.6 / len(order), 0.15)
            kw.pop("markevery")
            zax.errorbar(s["megabatch"] + shift, s["mean"], yerr=s["std"], capsize=2.5,
                         elinewidth=1.1, **kw)
        else:
            zax.plot(s["megabatch"], s["mean"], **kw)
            zax.fill_between(s["megabatch"], s["mean"] - s["std"], s["mean"] + s["std"],
                             color=kw["color"], alpha=_band_alpha(len(order)), lw=0)
    pad = 0.5 if bars else 0
    zax.set_xlim(window[0] - pad, window[-1] + pad)
    zax.set_ylim(low, high)
    zax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    zax.set(xlabel="megabatch", title=f"zoom: megabatches {window[0]}–{window[-1]}")
    zax.title.set_fontsize("medium")
    # where the zoom sits in the full stream
    ax.axvspan(window[0] - pad, window[-1] + pad, color="0.5", alpha=0.08, lw=0, zorder=0)


def _band_alpha(n: int) -> float:
    # many overlapping bands add up to an opaque smear: fainter bands the more lines there are
    return max(0.06, 0.18 - 0.01 * n)


def _coinciding(stats: pd.DataFrame, order: list[str], tol: float) -> dict[str, str]:
    """Label -> the earlier label whose mean line it covers (within ``tol``, a fraction of a
    line's width, at every megabatch; e.g. scratch on dense in the density figure): markers
    and dashes alone do not show a line hidden under another, so the legend names it."""
    series = {lb: stats[stats["label"] == lb].set_index("megabatch")["mean"] for lb in order}
    same = {}
    for i, label in enumerate(order):
        for other in order[:i]:
            a, b = series[label].align(series[other], join="inner")
            if len(a) == len(series[label]) and len(a) and (a - b).abs().max() <= tol:
                same[label] = same.get(other, other)
                break
    return same


def _span(low: pd.Series, high: pd.Series) -> tuple[float, float]:
    lo, hi = float(low.min()), float(high.max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 0.5)
    return lo - pad, hi + pad


def _line_style(look: dict, label: str, i: int, n: int, every: int) -> dict:
    return {"color": look["palette"].get(label, "0.3"), "marker": look["markers"].get(label, "o"),
            "ls": look["dashes"].get(label, "-"), "lw": 1.6, "ms": 6.5, "mec": "white",
            "mew": 0.7, "markevery": (round(i * every / n) % every, every) if every > 1 else None}


def _legend_title(seeds: pd.Series, kind: str) -> str:
    """Says what the bands/bars are: ± 1 sample SD over the seeds, and how many seeds."""
    lo, hi = int(seeds.min()), int(seeds.max())
    if hi <= 1:
        return "strategy\n(one seed each: no band)"
    n = f"n = {hi}" if lo == hi else f"n = {lo}–{hi}"
    return f"strategy\nline: mean over {n} seeds\n{kind}: ± 1 SD over seeds"


def _cer(runs: pd.DataFrame, title: str, look: dict) -> Figure:
    """CER per label as a point range: mean ± 1 SD over seeds, each seed an open circle; the
    axis spans the data, not zero, so differences of a few hundredths are visible. Mean, SD
    and the error count are printed in a column right of the axes."""
    data = runs.dropna(subset=["cer"])
    order = list(dict.fromkeys(data["label"].astype(str)))
    fig = Figure(figsize=(WIDTH, max(3.0, 1.9 + 0.42 * len(order))), layout="constrained")
    ax = fig.subplots()
    if data.empty:
        return _no_data(fig, ax, title, "cer")
    stats = data.groupby("label", sort=False).agg(
        mean=("cer", "mean"), sd=("cer", "std"), n=("cer", "count"),
        count=("cer_count", "mean"))
    for i, label in enumerate(order):
        colour, row = look["palette"].get(label, "0.3"), stats.loc[label]
        ax.scatter(data.loc[data["label"] == label, "cer"], [i] * int(row["n"]), s=28,
                   facecolors="none", edgecolors=[colour], linewidths=1.1, zorder=2)
        ax.errorbar(row["mean"], i, xerr=row["sd"], fmt=look["markers"].get(label, "o"),
                    color=colour, ms=8, mec="white", mew=0.8, capsize=4, lw=1.8, zorder=3)
        text = f"{row['mean']:.3f}" + ("" if math.isnan(row["sd"]) else f" ± {row['sd']:.3f}")
        if not math.isnan(row["count"]):
            text += f"   {row['count']:,.0f}"
        ax.annotate(text, (1.02, i), xycoords=("axes fraction", "data"), va="center",
                    fontsize=10, family="monospace")
    ax.annotate("mean ± SD   errors", (1.02, 1.0), xycoords="axes fraction", va="bottom",
                fontsize=10, family="monospace", weight="bold")
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.6)  # first label on top, as in the table
    base = _baseline(order)
    if base is not None:
        ax.axvline(stats.loc[base, "mean"], color="0.35", ls="--", lw=1, zorder=1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set(title=title, ylabel="",
           xlabel=r"CER = $\Sigma_t\,(1 - \mathrm{test\ acc}_t)$, summed over megabatches")
    seeds = stats["n"]
    handles = [Line2D([], [], color="0.3", marker="o", ls="-", ms=7,
                      label=f"mean ± 1 SD over {_n(seeds)} seeds"),
               Line2D([], [], color="0.3", marker="o", ls="", ms=6, mfc="none",
                      label="one seed")]
    if base is not None:
        handles.append(Line2D([], [], color="0.35", ls="--", label=f"{base} mean"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False,
               fontsize="small")
    return fig


def _n(seeds: pd.Series) -> str:
    lo, hi = int(seeds.min()), int(seeds.max())
    return f"n = {hi}" if lo == hi else f"n = {lo}–{hi}"


def _baseline(labels: list[str]) -> str | None:
    """The reference drawn in a figure: ``dense`` when present (compare.py's default)."""
    return next((lb for lb in labels if lb == "dense"), None)


def density_unit(runs: pd.DataFrame) -> str:
    """What a density axis is a percentage of: the prunable layers the runs were measured
    over (``density_over``, one definition for every strategy, docs/algorithms.md), e.g.
    ``% of the weights of every Conv2d``. Runs still at density 1 (dense) fit any set and are
    not asked; runs with different sets say so."""
    if "density_over" not in runs.columns:
        return "% of prunable weights"
    sparse = runs[pd.to_numeric(runs["final_density"], errors="coerce") < 1]
    sets = (sparse if len(sparse) else runs)["density_over"].dropna().astype(str).unique()
    if len(sets) == 1:
        return f"% of the weights of {sets[0]}"
    if len(sets) > 1:
        return "% of each run's prunable layers; the sets differ: " + "; ".join(sorted(sets))
    return "% of prunable weights"


def _tradeoff(runs: pd.DataFrame, title: str, look: dict) -> Figure:
    """Final accuracy against final density and against forward FLOPs per sample: one curve
    per strategy over its swept densities (mean ± 1 SD over seeds per point), and the
    Pareto front over all points (the best mean accuracy at that cost or less)."""
    fig = Figure(figsize=(WIDTH * 1.5, HEIGHT * 1.05), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    data = runs.assign(acc=runs["final_test_acc"] * 100, dens=runs["final_density"] * 100,
                       curve=_curve_names(runs) if len(runs) else pd.Series(dtype=str))
    data = data.dropna(subset=["acc"])
    if data.empty:
        for ax in axes:
            _no_data(fig, ax, "", "a final accuracy")
        fig.suptitle(title)
        return fig
    # A point is a group (one config, its seeds); its final density is exact, so every
    # seed sits at the same x.
    points = data.groupby(["curve", "group"], sort=False).agg(
        acc=("acc", "mean"), acc_sd=("acc", "std"), n=("acc", "count"),
        dens=("dens", "mean"), flops=("flops_effective", "mean"),
        flops_sd=("flops_effective", "std")).reset_index()
    curves = list(dict.fromkeys(points["curve"]))
    panels = ((axes[0], "dens", None, f"final density ({density_unit(runs)})"),
              (axes[1], "flops", "flops_sd", "forward FLOPs per sample (effective, final masks)"))
    for ax, x, x_sd, xlabel in panels:
        pts = points.dropna(subset=[x])
        if pts.empty:
            _no_data(fig, ax, "", xlabel.split(" (")[0])
            continue
        log = pts[x].min() > 0 and pts[x].max() / pts[x].min() > 10
        for i, curve in enumerate(curves):
            c = pts[pts["curve"] == curve].sort_values(x)
            if c.empty:
                continue
            xs = _dodge(c[x], i, len(curves), pts[x], log)
            kw = _line_style(look, curve, i, len(curves), 1)
            kw.pop("markevery")
            ax.errorbar(xs, c["acc"], yerr=c["acc_sd"],
                        xerr=None if x_sd is None else c[x_sd], capsize=3, elinewidth=1.1,
                        label=curve, **{**kw, "ms": 8})
        if len(pts) > 1:  # one point is no trade-off
            fx, fy = _pareto(pts[x], pts["acc"])
            ax.step(fx, fy, where="post", color="black", ls=(0, (4, 2)), lw=1.3, zorder=1,
                    label="Pareto front (best mean accuracy\nat this cost or less)")
        if log:  # sweeps over 0.05-1 densities: even spacing of the swept values
            ax.set_xscale("log")
        elif x == "dens":  # a density axis ends at 100%, and one point gets a sensible range
            low = pts[x].min()
            left = max(0.0, low - 0.08 * (100 - low)) if low < 100 else 0.0
            ax.set_xlim(left, 100 + 0.04 * (100 - left))
        ax.set(xlabel=xlabel + (", log scale" if log else ""), ylabel="")
    axes[0].set_ylabel("final test accuracy (%)")
    if axes[0].get_xscale() == "log":  # 1-2-5 ticks read as densities; 10^1 does not
        axes[0].xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[1].xaxis.set_major_formatter(EngFormatter())
    handles, names = axes[0].get_legend_handles_labels()
    # strategies first, in table order, then the front
    pairs = sorted(zip(handles, names, strict=True), key=lambda p: p[1].startswith("Pareto"))
    handles, names = [h for h, _ in pairs], [n for _, n in pairs]
    fig.legend(handles, names, loc="outside right upper", frameon=False,
               title=(f"strategy\npoint: mean over {_n(points['n'])} seeds\n"
                      "bars: ± 1 SD over seeds\n(x shifted slightly per strategy\n"
                      "so bars do not overlap)"))
    fig.suptitle(title)
    return fig


def _dodge(x: pd.Series, i: int, n: int, every: pd.Series, log: bool) -> pd.Series:
    """``x`` shifted by a small amount per curve (±2% of the axis span at most): strategies
    at one density (dense and scratch at 100%, OSP and APP at each swept density) would
    otherwise hide each other's error bars."""
    if n < 2:
        return x
    step = 0.04 / (n - 1) * (i - (n - 1) / 2)
    if log:
        return x * 10 ** (step * math.log10(every.max() / every.min()))
    span = every.max() - every.min() or abs(every.max()) or 1.0
    return x + step * span


def _pareto(x: pd.Series, y: pd.Series) -> tuple[list[float], list[float]]:
    """The Pareto front of (cost x, accuracy y) as a step line: points that no cheaper or
    equally cheap point beats, extended flat to the largest cost."""
    fx, fy = [], []
    for cost, acc in sorted(zip(x, y, strict=True), key=lambda p: (p[0], -p[1])):
        if not fy or acc > fy[-1]:
            fx.append(cost)
            fy.append(acc)
    if fx and x.max() > fx[-1]:
        fx.append(float(x.max()))
        fy.append(fy[-1])
    return fx, fy


def _heatmap(layers: pd.DataFrame, title: str) -> Figure:
    """Rows: layers in model order; columns: megabatch; cell: density averaged over seeds."""
    return _layer_grid(layers, "megabatch", title, "megabatch",
                       "density (fraction of weights kept)")


def _schedule_heatmap(decisions: pd.DataFrame, title: str) -> Figure:
    """A learned schedule, readable inside a megabatch: columns are the agent's decisions in
    run order (labelled by optimizer step), cells the target density it chose, averaged over
    seeds (every seed decides at the same steps)."""
    return _layer_grid(decisions, "step", title, "optimizer step of the decision",
                       "target density chosen by the agent")


def _layer_grid(long: pd.DataFrame, column: str, title: str, xlabel: str,
                cbar: str) -> Figure:
    """Heatmap of ``density`` with layers as rows (model order, not alphabetical) and
    ``column`` as columns."""
    grid = long.groupby(["layer", column])["density"].mean().unstack(column)
    grid = grid.reindex(list(dict.fromkeys(long["layer"])))
    grid.columns = [int(c) for c in grid.columns]
    fig = Figure(figsize=(WIDTH, max(3.0, 1.6 + 0.38 * len(grid))))
    ax = fig.subplots()
    # At most ~15 column labels, upright: 30 rotated labels are hard to read at 800 px.
    # Numbers in the cells only while they fit (~16 columns at 800 px); the colour bar reads
    # the rest.
    annot = grid.size <= 160 and grid.shape[1] <= 16
    sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", annot=annot, fmt=".2f",
                cbar_kws={"label": cbar}, ax=ax,
                xticklabels=max(1, math.ceil(grid.shape[1] / 15)))
    ax.tick_params(axis="x", labelrotation=0)
    ax.set(title=title, xlabel=xlabel, ylabel="layer")
    return fig


def _no_data(fig: Figure, ax, title: str, metric: str) -> Figure:
    # Keep the file set stable for readers and tools: an empty figure says why it is empty.
    ax.text(0.5, 0.5, f"no run has recorded\n{metric} yet", ha="center", va="center",
            transform=ax.transAxes)
    ax.set(title=title, xticks=[], yticks=[])
    return fig


def _save(fig: Figure, stem: Path, formats: tuple[str, ...] = ("png",)) -> str:
    """Write ``fig`` as ``stem.<format>`` for each format; return the file name the README
    embeds (the PNG when written: every Markdown viewer shows it; else the first)."""
    for fmt in formats:
        # A Figure drawn without pyplot renders with Agg and leaves the global backend alone.
        fig.savefig(stem.with_name(f"{stem.name}.{fmt}"), dpi=DPI, bbox_inches="tight")
    shown = "png" if "png" in formats else formats[0]
    return f"{stem.name}.{shown}"


def by_group(res: Results) -> Results:
    """The store with each run's label replaced by its group label: figures draw one line
    per group, so two configs of one strategy are never pooled into one curve. The label
    itself is kept as ``entry`` (the trade-off figure's curves are per entry); applying this
    twice changes nothing."""
    runs, metrics, layers, schedule = (
        df.assign(entry=df["entry"] if "entry" in df.columns else df["label"],
                  label=df["group_label"])
        for df in (res.runs, res.metrics, res.layer_density, res.schedule))
    return Results(runs, metrics, layers, configs=res.configs, schedule=schedule,
                   row_metrics=res.row_metrics)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))
