"""Tables never pool different configs: only runs equal except for the seed are averaged."""

from __future__ import annotations

import io
import json
import os
import re
import statistics

import pandas as pd
import pytest
from fake_results import write_run

from alma_bench.analysis.report import make_report
from alma_bench.analysis.results import load, summary_table
from alma_bench.cli import main

LR = {"dense [protocol.lr=0.05]": (0.95, 0.97, 0.96),
      "dense [protocol.lr=0.001]": (0.90, 0.91, 0.80)}


def _two_lrs(suite_dir):
    """dense at lr 0.05 and at lr 0.001 in one folder, 3 seeds each; app-snip at lr 0.05."""
    for seed in range(3):
        write_run(suite_dir, "dense", seed, LR["dense [protocol.lr=0.05]"][seed])
        write_run(suite_dir, "dense", seed, LR["dense [protocol.lr=0.001]"][seed],
                  protocol={"lr": 0.001})
        write_run(suite_dir, "app-snip", seed, 0.93, strategy="app", params={"pruner": "snip"})


def _show(capsys, *args) -> str:
    assert main(["show", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    _two_lrs(root / "mix")
    return root, make_report(root)


def test_two_configs_are_two_rows_everywhere(mixed, capsys):
    root, report = mixed
    out = _show(capsys, str(root))
    for label, accs in LR.items():  # each row: its own 3 seeds, mean and std of those only
        mean, std = statistics.mean(accs) * 100, statistics.stdev(accs) * 100
        row = rf"^{re.escape(label)}\s+3\s+{mean:.2f} ± {std:.2f}\s"
        assert re.search(row, out, re.M), out
    assert not re.search(r"^dense\s+6\s", out, re.M)  # never one row of 6 "seeds"
    csv = pd.read_csv(report / "summary.csv").set_index("group_label")
    for label, accs in LR.items():
        assert csv.loc[label, "n_seeds"] == 3
        assert csv.loc[label, "final_test_acc_mean"] == pytest.approx(statistics.mean(accs))
    assert csv.loc["app-snip", "n_seeds"] == 3 and len(csv) == 3
    readme = (report / "README.md").read_text()
    assert "| dense [protocol.lr=0.05] | 3 | 96.0 ± 1.0 |" in readme
    assert "| dense [protocol.lr=0.001] | 3 | 87.0 ± 6.1 |" in readme
    # the shared config once, then each group's own keys (not the first run's config)
    assert '"stream": {"megabatches": 2' in readme and '"lr"' not in readme.split("| group")[0]
    assert "| dense [protocol.lr=0.001] | protocol.lr=0.001, strategy=dense |" in readme
    assert "| app-snip | protocol.lr=0.05, strategy=app, pruner=snip |" in readme


def test_load_frames_carry_grouping_columns(mixed):
    res = load(mixed[0])
    assert set(res.runs["group_label"]) == set(LR) | {"app-snip"}
    assert res.runs.groupby("group")["seed"].nunique().eq(3).all()
    assert {"protocol.lr", "strategy.name", "strategy.params.pruner"} <= set(res.runs.columns)
    assert "stream.name" not in res.runs.columns  # only the keys that vary
    for frame in (res.metrics, res.layer_density):
        assert {"group", "group_label"} <= set(frame.columns)
        assert frame.groupby("group_label")["run_id"].nunique().eq(3).all()


def test_show_csv_round_trips_with_grouping_columns(mixed, capsys):
    out = _show(capsys, str(mixed[0]), "--format", "csv", "--metrics", "final_test_acc", "cer")
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns[:5]) == ["suite", "group", "group_label", "label", "strategy"]
    assert {"protocol.lr", "n_seeds", "final_test_acc_mean", "cer_std"} <= set(table.columns)
    assert "wall_time_mean" not in table.columns
    row = table.set_index("group_label").loc["dense [protocol.lr=0.001]"]
    assert row["protocol.lr"] == 0.001 and row["label"] == "dense" and row["n_seeds"] == 3
    assert row["final_test_acc_mean"] == pytest.approx(statistics.mean(LR[row.name]))


def test_show_markdown_and_latex(mixed, capsys):
    md = _show(capsys, str(mixed[0]), "--format", "markdown", "--metrics", "final_test_acc")
    assert md.splitlines()[:2] == ["| strategy | seeds | final acc % |", "|---|---|---|"]
    assert "| dense [protocol.lr=0.05] | 3 | 96.00 ± 1.00 |" in md
    tex = _show(capsys, str(mixed[0]), "--format", "latex", "--metrics", "final_test_acc")
    assert r"\begin{tabular}{lrr}" in tex and r"final acc \%" in tex
    assert r"96.00 $\pm$ 1.00 \\" in tex


def test_bad_metric_is_one_line(mixed, capsys):
    assert main(["show", str(mixed[0]), "--metrics", "acc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown metric 'acc'" in err and "final_test_acc" in err


@pytest.mark.parametrize("change, label", [
    ({"protocol": {"epochs": 1}}, "dense [protocol.epochs=1]"),  # not two "seeds"
    ({"scale": "smoke"}, "dense [scale=smoke]"),  # smoke and full never mix
    ({"extra": {"strategy_revision": 2}}, "dense [strategy_revision=2]"),  # a bumped revision
])
def test_each_config_difference_splits_groups(tmp_path, change, label):
    write_run(tmp_path / "s", "dense", 0, 0.9)
    write_run(tmp_path / "s", "dense", 1, 0.8, **change)
    table = summary_table(load(tmp_path).runs)
    assert len(table) == 2 and table["n_seeds"].tolist() == [1, 1]
    assert label in set(table["group_label"])


def test_old_configs_without_identity_still_group(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "s", "dense", seed, 0.9, identity=False)
        write_run(tmp_path / "s", "dense", seed, 0.8, identity=False, protocol={"lr": 0.1})
    table = summary_table(load(tmp_path).runs)
    assert sorted(table["group_label"]) == ["dense [protocol.lr=0.05]", "dense [protocol.lr=0.1]"]
    assert table["n_seeds"].tolist() == [2, 2]


def test_dependency_run_ids_do_not_split_seeds(tmp_path):
    """A run that depends on another holds that run's (seed-specific) id: its seeds are
    still one group, identified through the dependency's own config."""
    for seed in (0, 1):
        dep = write_run(tmp_path / "s", "dpr", seed, 0.9, strategy="dpr")
        write_run(tmp_path / "s", "static", seed, 0.8, strategy="static",
                  params={"structure_from": "dpr"}, extra={"deps": {"structure_from": dep.name}})
    table = summary_table(load(tmp_path).runs).set_index("label")
    assert table.loc["static", "n_seeds"] == 2 and len(table) == 2


def test_table_after_a_filter_is_labelled_for_what_it_shows(mixed, capsys):
    import argparse

    from alma_bench.cli import cmd_show

    res = load(mixed[0])
    ids = set(res.runs.loc[res.runs["group_label"] == "dense [protocol.lr=0.001]", "run_id"])
    cmd_show(argparse.Namespace(results=str(mixed[0]), labels=["dense"], run_ids=ids))
    out = capsys.readouterr().out
    assert re.match(r"dense\s+3\s", out.splitlines()[1]), out  # one config in view: no suffix


def test_rows_keep_the_suite_order(tmp_path, capsys):
    # a shipped suite's name: its strategy order, whatever order the runs were written in
    for label in ("gmp", "app-snip", "dense"):
        write_run(tmp_path / "quickstart", label, 0, 0.9, params={"x": label})
    assert summary_table(load(tmp_path).runs)["label"].tolist() == ["dense", "app-snip", "gmp"]
    # any other suite: the order its runs started in
    for n, label in enumerate(("zeta", "alpha")):
        run = write_run(tmp_path / "mine", label, 0, 0.9, params={"x": label})
        os.utime(run / "config.json", (1e9 + n, 1e9 + n))  # started n seconds apart
    out = _show(capsys, str(tmp_path / "mine"))
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["zeta", "alpha"]


def test_config_json_identity_is_what_groups(tmp_path):
    """With ``identity`` present it is the key, not the top-level sections."""
    run = write_run(tmp_path / "s", "dense", 0, 0.9)
    write_run(tmp_path / "s", "dense", 1, 0.8)
    config = json.loads((run / "config.json").read_text())
    config["identity"]["threads"] = 2  # a different thread count: different numbers
    (run / "config.json").write_text(json.dumps(config))
    assert set(summary_table(load(tmp_path).runs)["group_label"]) == {
        "dense [threads=2]", "dense [threads=1]"}
