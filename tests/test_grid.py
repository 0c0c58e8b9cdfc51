"""Grids in suites: one run per combination, each with its own id and a label naming it."""

from __future__ import annotations

import pytest
from conftest import TINY, write_suite

from alma_bench.cli import main
from alma_bench.errors import UserError
from alma_bench.spec.config import load_suite


def _suite(tmp_path, **over):
    return str(write_suite(tmp_path / "s.yaml", **over))


def test_strategy_and_suite_grids_expand_cartesian(tmp_path):
    path = _suite(tmp_path, seeds=[0, 1], strategies=[
        {"name": "dense"},
        {"name": "osp", "label": "osp-snip", "grid": {"density": [0.05, 0.1, 0.2]}}],
        grid={"protocol.lr": [0.1, 0.01], "stream.replay": ["all", "none"]},
        protocol={**TINY["protocol"], "lr_schedule": "multistep", "milestones": [1, 2]})
    suite = load_suite(path)
    assert len(suite.labels) == 4 * (1 + 3) and len(suite.runs) == 2 * len(suite.labels)
    assert len({r.run_id for r in suite.runs}) == len(suite.runs)
    assert suite.labels[:4] == [
        "dense[protocol.lr=0.1,stream.replay=all]",
        "osp-snip[density=0.05,protocol.lr=0.1,stream.replay=all]",
        "osp-snip[density=0.1,protocol.lr=0.1,stream.replay=all]",
        "osp-snip[density=0.2,protocol.lr=0.1,stream.replay=all]"]
    run = next(r for r in suite.runs
               if r.label == "osp-snip[density=0.1,protocol.lr=0.01,stream.replay=none]")
    assert run.strategy["params"]["density"] == 0.1 and run.protocol["lr"] == 0.01
    assert run.stream["replay"] == "none"
    assert all(r.protocol["milestones"] == (1, 2) for r in suite.runs)  # a list is a value


def test_no_grid_changes_nothing(tmp_path):
    path = _suite(tmp_path, strategies=[{"name": "dense"}, {"name": "scratch"}])
    suite = load_suite(path)
    assert suite.labels == ["dense", "scratch"]
    assert load_suite(path, sets=["grid.protocol.lr=[0.05]"]).runs[0].label == \
        "dense[protocol.lr=0.05]"


def test_cli_grid_option(tmp_path, capsys):
    path = _suite(tmp_path, strategies=[{"name": "osp", "label": "osp-snip"}])
    code = main(["run", path, "--dry-run", "--grid", "protocol.lr=[0.1, 0.01]",
                 "--grid", "strategies.osp-snip.density=[0.1,0.2]", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "4 runs of suite 'tiny'" in out
    assert "osp-snip[density=0.2,protocol.lr=0.01]" in out


def test_strategies_option_selects_an_entry_or_one_expansion(tmp_path):
    path = _suite(tmp_path, strategies=[{"name": "dense"},
                                        {"name": "osp", "grid": {"density": [0.1, 0.2]}}],
                  grid={"protocol.lr": [0.1, 0.01]})
    assert len(load_suite(path, strategies=["osp"]).labels) == 4
    # cmd_run splits --strategies on commas, also those inside a label's brackets
    one = "osp[density=0.1,protocol.lr=0.01]"
    assert load_suite(path, strategies=one.split(",") + ["dense"]).labels == [
        "dense[protocol.lr=0.1]", "dense[protocol.lr=0.01]", one]


BAD = [
    ({"grid": {"protocol.lrr": [1]}},
     r"suite grid: unknown grid key 'protocol\.lrr'\. Did you mean 'protocol\.lr'\? Valid: "
     r".*protocol\.epochs"),
    ({"grid": {"optimizer": ["sgd"]}}, r"suite grid: unknown grid key 'optimizer'.*Valid: "),
    ({"strategies": [{"name": "osp", "grid": {"densty": [0.1]}}]},
     r"strategy 'osp': unknown grid key 'densty'\. Did you mean 'density'\? Valid: .*pruner"),
    ({"grid": {"protocol.lr": 0.1}}, r"grid key 'protocol\.lr' needs a non-empty list"),
    ({"grid": [1, 2]}, r"suite key 'grid' must be a mapping"),
    ({"grid": {"strategies.nope.density": [0.1]}}, r"unknown strategy label 'nope'"),
    ({"strategies": [{"name": "osp", "grid": {"density": [0.1, 0.2]}},
                     {"name": "osp", "label": "osp[density=0.1]", "params": {"density": 0.3}}]},
     r"duplicate strategy label\(s\) osp\[density=0\.1\]"),
    ({"strategies": [{"name": "dense"}], "grid": {"protocol.lr": [0.1, 0.1]}},
     r"duplicate strategy label\(s\) dense\[protocol\.lr=0\.1\]"),
    ({"strategies": [{"name": "osp", "grid": {"density": [0.1, 2.0]}}]},
     r"strategy 'osp': density must be in \[1e-06, 1\], got 2\.0"),
]


@pytest.mark.parametrize("over, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_grids_are_one_line_errors(tmp_path, over, message):
    with pytest.raises(UserError, match=message) as e:
        load_suite(_suite(tmp_path, **over))
    assert "\n" not in str(e.value)
