"""Paired comparisons against a baseline: differences over shared seeds, 95% t-intervals."""

from __future__ import annotations

import math
import os
import re

import pandas as pd
import pytest
from fake_results import write_run

from alma_bench.analysis.compare import paired, wide
from alma_bench.analysis.report import make_report
from alma_bench.analysis.results import load
from alma_bench.cli import main

T_975_2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (tables, scipy)
BASE = (0.90, 0.91, 0.92)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """dense (3 seeds); app-snip beats it by 1, 2, 3 pp on seeds 0, 1, 2; scratch shares one
    seed with dense; osp shares none."""
    root = tmp_path_factory.mktemp("results")
    suite = root / "s"
    for seed, acc in enumerate(BASE):
        write_run(suite, "dense", seed, acc, cer=1.0)
        write_run(suite, "app-snip", seed, acc + (seed + 1) / 100, cer=1.0 - (seed + 1) / 10,
                  strategy="app", params={"pruner": "snip"})
    write_run(suite, "scratch", 0, 0.95, strategy="scratch")
    write_run(suite, "osp", 7, 0.5, strategy="osp")
    return root


def test_paired_difference_and_t_interval_by_hand(store):
    table = paired(load(store).runs).set_index(["group_label", "metric"])
    app = table.loc[("app-snip", "final_test_acc")]
    # differences 1, 2, 3 pp: mean 2, sd 1, half-width t_{0.975,2} * 1 / sqrt(3)
    half = T_975_2 * 1 / math.sqrt(3)
    assert app["baseline"] == "dense" and app["n_pairs"] == 3
    assert app["diff"] * 100 == pytest.approx(2.0)
    assert app["ci_low"] * 100 == pytest.approx(2 - half)
    assert app["ci_high"] * 100 == pytest.approx(2 + half)
    cer = table.loc[("app-snip", "cer")]  # differences -0.1, -0.2, -0.3
    assert cer["diff"] == pytest.approx(-0.2)
    assert cer["ci_high"] == pytest.approx(-0.2 + T_975_2 * 0.1 / math.sqrt(3))
    assert app["mean"] == pytest.approx(0.93) and app["std"] == pytest.approx(0.02)
    one = table.loc[("scratch", "final_test_acc")]
    assert one["n_pairs"] == 1 and one["diff"] == pytest.approx(0.05)
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    none = table.loc[("osp", "final_test_acc")]
    assert none["n_pairs"] == 0 and math.isnan(none["diff"])
    base = table.loc[("dense", "final_test_acc")]
    assert base["baseline"] == "dense" and math.isnan(base["diff"])


def test_compare_command_prints_table_and_sentences(store, capsys):
    assert main(["compare", str(store)]) == 0
    out = capsys.readouterr().out
    assert "95% t-interval" in out
    assert re.search(r"^app-snip\s+3\s+93\.00 ± 2\.00\s+\+2\.00\s+\[-0\.48, 4\.48\]\s+3$", out,
                     re.M), out
    assert "app-snip vs dense: final_test_acc +2.00 pp, 95% t-CI [-0.48, 4.48], n = 3" in out
    assert "app-snip vs dense: cer -0.200, 95% t-CI [-0.448, 0.048], n = 3" in out
    assert ("scratch vs dense: final_test_acc +5.00 pp, 95% t-CI NaN (one pair: an interval "
            "needs at least 2 shared seeds), n = 1") in out
    assert "osp vs dense: final_test_acc: no seed in common with the baseline, n = 0" in out


def test_baseline_and_metric_options(store, capsys):
    assert main(["compare", str(store), "--baseline", "app-snip", "--metric", "cer"]) == 0
    out = capsys.readouterr().out
    assert "dense vs app-snip: cer +0.200" in out and "final_test_acc" not in out
    assert main(["compare", str(store), "--baseline", "dens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "baseline 'dens' is not a group of suite 's'" in err


def test_default_baseline_without_dense_is_the_first_group(tmp_path):
    for seed in (0, 1):
        run = write_run(tmp_path / "s", "b", seed, 0.8, params={"x": 1})
        os.utime(run / "config.json", (1e9, 1e9))  # b's runs started first
        write_run(tmp_path / "s", "a", seed, 0.9 + seed / 100, params={"x": 2})
    table = paired(load(tmp_path).runs, metrics=("final_test_acc",)).set_index("group_label")
    assert set(table["baseline"]) == {"b"}
    assert table.loc["a", "diff"] == pytest.approx(0.105)


def test_each_group_meets_the_baseline_of_its_own_config(tmp_path):
    """Under a grid of learning rates, app at lr x is compared with dense at lr x."""
    for lr in (0.1, 0.01):
        for seed in (0, 1):
            write_run(tmp_path / "s", f"dense[protocol.lr={lr}]", seed, 0.8 + lr,
                      protocol={"lr": lr})
            write_run(tmp_path / "s", f"app[protocol.lr={lr}]", seed, 0.85 + lr,
                      protocol={"lr": lr}, strategy="app")
    table = paired(load(tmp_path).runs, metrics=("final_test_acc",)).set_index("group_label")
    assert table.loc["app[protocol.lr=0.1]", "baseline"] == "dense[protocol.lr=0.1]"
    assert table.loc["app[protocol.lr=0.01]", "baseline"] == "dense[protocol.lr=0.01]"
    assert table["diff"].dropna().tolist() == pytest.approx([0.05, 0.05])


def test_report_table_has_the_comparison(store):
    out = make_report(store)
    csv = pd.read_csv(out / "summary.csv").set_index("group_label")
    expected = wide(paired(load(store).runs)).set_index("group")
    for col in ("final_test_acc_diff", "final_test_acc_ci_low", "cer_ci_high", "cer_n_pairs"):
        assert csv[col].tolist() == pytest.approx(
            expected.loc[csv["group"], col].tolist(), nan_ok=True)
    assert csv.loc["app-snip", "final_test_acc_n_pairs"] == 3
    readme = (out / "README.md").read_text()
    assert "Δ final test acc (pp) vs baseline, 95% t-CI" in readme
    assert "| +2.0 [-0.5, 4.5] |" in readme and "+5.0, CI NaN (1 pair)" in readme
