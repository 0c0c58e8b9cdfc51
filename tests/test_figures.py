"""Report figures judged on their matplotlib objects, on a density sweep written by hand:
osp-snip and app-snip at 3 densities x 3 seeds, plus dense x 3 seeds, 8 megabatches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fake_results import write_run
from matplotlib.container import ErrorbarContainer

from alma_bench.analysis.figures import figures
from alma_bench.analysis.report import make_report
from alma_bench.analysis.results import load
from alma_bench.cli import main

DENSITIES = (0.05, 0.2, 0.5)
SEEDS = (0, 1, 2)
SUITE = "sweep"
STEMS = ("anytime_accuracy", "cer", "generalisation_gap", "density", "accuracy_vs_density")


def _final_acc(strategy: str, density: float, seed: int) -> float:
    # sparser is worse; APP a little better than OSP; seeds differ by tenths of a point
    return 0.97 - (0.0 if strategy == "dense" else 0.012 * math.log(1 / density)
                   - (0.004 if strategy == "app" else 0.0)) + 0.002 * (seed - 1)


def _rewrite(run: Path, strategy: str, density: float, seed: int, n: int) -> None:
    """Replace fake_results' 2-megabatch run by an n-megabatch one with real densities."""
    final = _final_acc(strategy, density, seed)
    rows = []
    for t in range(1, n + 1):
        # APP: 0.8 at megabatch 1 down to exactly the target at the last (as the schedule)
        app = density if t == n else 0.8 ** (1 + (t - 1) / (n - 1) * (math.log(density, 0.8) - 1))
        dens = {"dense": 1.0, "osp": density}.get(strategy, app)
        acc = final - 0.3 * math.exp(-(t - 1)) - 0.002 * (n - t)
        rows.append({"megabatch": t, "test_acc": acc, "train_acc": min(1.0, acc + 0.02),
                     "gen_gap": min(1.0, acc + 0.02) - acc, "test_errors": round(1000 * (1 - acc)),
                     "density": dens, "flops_effective": 1e6 * (0.1 + 0.9 * dens),
                     "layer_density": {"conv1.weight": dens ** 0.5, "conv2.weight": dens}})
    summary = {"final_test_acc": rows[-1]["test_acc"],
               "cer": sum(1 - r["test_acc"] for r in rows),
               "cer_count": sum(r["test_errors"] for r in rows),
               "final_gen_gap": rows[-1]["gen_gap"], "final_density": rows[-1]["density"],
               # SNIP masks differ per seed, so the effective FLOPs do a little
               "flops_effective": rows[-1]["flops_effective"] * (1 + 0.01 * seed),
               "wall_time": 1.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "status.json").write_text(json.dumps({"state": "done", "megabatches_done": n,
                                                 "n_megabatches": n}))


def write_sweep(root: Path, n: int = 8) -> Path:
    suite = root / SUITE
    for seed in SEEDS:
        _rewrite(write_run(suite, "dense", seed, 0.9), "dense", 1.0, seed, n)
        for strategy, label in (("osp", "osp-snip"), ("app", "app-snip")):
            for d in DENSITIES:
                run = write_run(suite, f"{label}[density={d}]", seed, 0.9, strategy=strategy,
                                params={"density": d, "pruner": "snip"})
                _rewrite(run, strategy, d, seed, n)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep, its report, and the Figure objects the report wrote."""
    root = write_sweep(tmp_path_factory.mktemp("results"))
    figs = {}
    out = make_report(root, root / "report", on_figure=figs.__setitem__)
    return out, figs


def test_every_figure_is_written(sweep):
    out, figs = sweep
    heatmaps = [f"layer_density_{s}-snip_density_{d}_" for s in ("osp", "app") for d in DENSITIES]
    assert set(figs) == {*STEMS, *heatmaps}
    readme = (out / "README.md").read_text()
    for stem in figs:
        assert (out / f"{stem}.png").stat().st_size > 10_000, stem
        assert f"]({stem}.png)" in readme


def _legend_text(fig) -> str:
    return "\n".join([lg.get_title().get_text() for lg in fig.legends]
                     + [t.get_text() for lg in fig.legends for t in lg.get_texts()])


def test_accuracy_vs_density_is_one_curve_per_strategy(sweep):
    _, figs = sweep
    fig = figs["accuracy_vs_density"]
    dens_ax, flops_ax = fig.axes[:2]
    for ax in (dens_ax, flops_ax):
        curves = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
        assert set(curves) == {"dense", "osp-snip", "app-snip"}  # no grid suffix, one each
        for label in ("osp-snip", "app-snip"):
            line = curves[label].lines[0]
            assert len(line.get_xdata()) == 3  # its 3 densities, seeds averaged
            assert curves[label].has_yerr  # ± SD over seeds
        assert len(curves["dense"].lines[0].get_xdata()) == 1
        # told apart without colour too
        assert len({c.lines[0].get_marker() for c in curves.values()}) == 3
    # densities 5% ... 100% span 20x: log x; points at the swept densities, dodged apart by
    # at most 2% of the axis span (1.3 decades here: a factor 10 ** 0.026, about 6%)
    assert dens_ax.get_xscale() == "log"
    xs = sorted(curves_x for c in dens_ax.containers if isinstance(c, ErrorbarContainer)
                for curves_x in c.lines[0].get_xdata())
    assert xs == pytest.approx([5, 5, 20, 20, 50, 50, 100], rel=0.07)
    assert "forward FLOPs per sample" in flops_ax.get_xlabel()
    assert "density" in dens_ax.get_xlabel() and "accuracy" in dens_ax.get_ylabel()
    # the Pareto front: a dashed black step line through the best mean at each cost
    front = [ln for ln in dens_ax.get_lines() if ln.get_label().startswith("Pareto")]
    assert len(front) == 1 and front[0].get_color() in ("black", "k", (0, 0, 0, 1))
    assert front[0].get_linestyle() != "-"
    best = {d: max(_final_acc(s, d, 1) for s in ("osp", "app")) * 100 for d in DENSITIES}
    best[1.0] = _final_acc("dense", 1.0, 1) * 100
    ys = front[0].get_ydata()
    assert max(ys) == pytest.approx(best[1.0], abs=0.05)
    assert min(ys) == pytest.approx(best[0.05], abs=0.05)
    assert list(ys) == sorted(ys)  # a front only rises with cost


def test_every_band_says_what_it_is(sweep):
    _, figs = sweep
    for stem in STEMS:
        text = _legend_text(figs[stem])
        assert "SD" in text and "n = 3" in text, (stem, text)
    assert "band" in _legend_text(figs["anytime_accuracy"])


def test_anytime_accuracy_zooms_on_the_last_third(sweep):
    _, figs = sweep
    full, zoom = figs["anytime_accuracy"].axes[:2]
    assert zoom.get_xlim()[0] >= 5 and zoom.get_xlim()[1] <= 8.6  # megabatches 6-8 of 8
    # the zoom's y range is a fraction of the full one: final differences become visible
    assert (zoom.get_ylim()[1] - zoom.get_ylim()[0]) < 0.25 * (full.get_ylim()[1]
                                                               - full.get_ylim()[0])
    groups = 1 + 2 * len(DENSITIES)
    assert len([c for c in zoom.containers if isinstance(c, ErrorbarContainer)]) == groups
    lines = [ln for ln in full.get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == groups
    assert len({ln.get_marker() for ln in lines}) == groups  # apart without colour too


def test_a_line_hidden_under_another_is_named_in_the_legend(sweep):
    _, figs = sweep
    # the sweep's generalisation gap is the same constant for every group: all lines coincide
    names = [t.get_text() for t in figs["generalisation_gap"].legends[0].get_texts()]
    assert names[0] == "dense"
    assert names[1:] and all(n.endswith("(≈ dense)") for n in names[1:])
    # in the density figure nothing coincides (each group has its own density)
    assert not any("≈" in t.get_text() for t in figs["density"].legends[0].get_texts())


def test_cer_is_points_with_intervals_not_bars(sweep):
    _, figs = sweep
    ax = figs["cer"].axes[0]
    assert not ax.patches  # no bars from zero
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 7 and all(c.has_xerr for c in bars)
    low, high = ax.get_xlim()
    cers = [c.lines[0].get_xdata()[0] for c in bars]
    assert low > 0 and (max(cers) - min(cers)) > 0.2 * (high - low)  # the axis shows them
    assert "SD" in _legend_text(figs["cer"])


def test_long_stream_has_readable_ticks_and_sparse_markers(tmp_path):
    write_sweep(tmp_path, n=60)
    figs = {stem: fig for stem, _, fig in figures(load(tmp_path), SUITE)}
    full = figs["anytime_accuracy"].axes[0]
    figs["anytime_accuracy"].canvas.draw()
    ticks = [t for t in full.get_xticks() if full.get_xlim()[0] <= t <= full.get_xlim()[1]]
    assert len(ticks) <= 12 and all(float(t).is_integer() for t in ticks)
    lines = [ln for ln in full.get_lines() if not ln.get_label().startswith("_")]
    assert {ln.get_markevery()[1] for ln in lines} == {6}  # ~10 markers on 60 megabatches
    assert len({ln.get_markevery()[0] for ln in lines}) > 1  # staggered between lines


def test_cli_format_pdf_svg(tmp_path, capsys):
    # a small store (no sparse layers, so no heatmaps): the formats, not the figures, are tested
    for seed in (0, 1):
        write_run(tmp_path / "s", "dense", seed, 0.9 + 0.01 * seed)
        write_run(tmp_path / "s", "osp-snip[density=0.2]", seed, 0.85, strategy="osp",
                  params={"density": 0.2})
    out = tmp_path / "r"
    assert main(["report", str(tmp_path / "s"), "--out", str(out), "--format", "pdf,svg"]) == 0
    for stem in STEMS:
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000], stem
    assert not list(out.glob("*.png"))
    readme = (out / "README.md").read_text()
    assert "](cer.pdf)" in readme  # no png: the first format
    assert "--format pdf,svg" in readme  # the command recorded reproduces the report
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "x"),
                 "--format", "jpeg"]) == 2
    assert "unknown figure format 'jpeg'" in capsys.readouterr().err


def test_png_is_embedded_when_written(tmp_path):
    from matplotlib.figure import Figure

    from alma_bench.analysis.figures import _save

    fig = Figure()
    fig.subplots().plot([0, 1])
    assert _save(fig, tmp_path / "f", ("svg", "png")) == "f.png"
    assert (tmp_path / "f.svg").is_file() and (tmp_path / "f.png").is_file()


def test_learned_schedule_is_a_layer_by_decision_heatmap_of_the_seed_mean(tmp_path):
    """A one-megabatch learned run: its per-megabatch heatmap would be a single column, so the
    report draws the agent's decisions (layers x decision step), averaged over seeds."""
    suite = tmp_path / "sched"
    steps, chosen = (0, 10, 20), {0: (0.9, 0.5), 1: (0.7, 0.3)}  # seed -> conv1, conv2 at 0
    for seed in (0, 1):
        run = write_run(suite, "rp-rr-learned", seed, 0.5, strategy="rl-schedule")
        a, b = chosen[seed]
        decisions = [{"step": s, "targets": {"conv1": a - 0.1 * k, "conv2": b - 0.1 * k}}
                     for k, s in enumerate(steps)]
        row = {"megabatch": 1, "test_acc": 0.5, "density": 0.2, "rl_schedule": decisions,
               "layer_density": {"conv1": a - 0.2, "conv2": b - 0.2}}
        (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    res = load(tmp_path)
    assert len(res.schedule) == 2 * 3 * 2
    drawn = {stem: fig for stem, _, fig in figures(res, "sched")}
    fig = drawn["learned_schedule_rp-rr-learned"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "20"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["conv1", "conv2"]
    cells = [float(t.get_text()) for t in ax.texts]  # row-major: conv1's decisions first
    assert cells == pytest.approx([0.8, 0.7, 0.6, 0.4, 0.3, 0.2])
