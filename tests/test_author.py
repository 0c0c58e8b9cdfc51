"""Issue 26, a strategy author's afternoon: the README's pruning example measured as `app` is,
results across folders, edited code, plugin metrics, compare's formats, the Python API and
exported weights. Everything on the tiny synthetic stream (no data outside the repository)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, write_suite

import alma_bench
from alma_bench.analysis.report import make_report
from alma_bench.analysis.results import load
from alma_bench.cli import main
from alma_bench.run.models import build_model
from alma_bench.spec.config import load_suite

FINAL = 0.9**8  # the example prunes 10% of the remaining weights before each of 8 megabatches
STREAM = {"name": "synthetic", "n_train": 240, "n_test": 64, "classes": 3, "size": 8,
          "megabatches": 8, "replay": "all"}
PROTOCOL = {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "patience": None,
            "eval_batch_size": 256}


def readme_code(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """dense, `app` at density 0.9**8 and the README's pruning example, 8 megabatches."""
    tmp = tmp_path_factory.mktemp("author")
    plugin = tmp / "my_pruner.py"
    plugin.write_text(readme_code("pruning-example"))
    suite = write_suite(tmp / "tiny.yaml", stream=STREAM, protocol=PROTOCOL, strategies=[
        {"name": "dense"}, {"name": "app", "params": {"pruner": "magnitude", "density": FINAL}},
        {"name": "prune-ten"}])
    out = tmp / "o"
    assert main(["run", str(suite), "--plugin", str(plugin), "--out", str(out), "--quiet"]) == 0
    return tmp, plugin, suite, out


def test_pruning_example_density_equals_app_in_show_csv_and_figure(pruned, capsys):
    tmp, _, _, out = pruned
    capsys.readouterr()
    assert main(["show", str(out), "--format", "csv", "--metrics", "final_density"]) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out)).set_index("label")
    shown = table["final_density_mean"]
    assert shown["prune-ten"] == shown["app"] == pytest.approx(FINAL, abs=2 / 240)
    drawn = {}
    make_report(out, tmp / "report", on_figure=lambda stem, fig: drawn.setdefault(stem, fig))
    summary = pd.read_csv(tmp / "report" / "summary.csv").set_index("label")
    assert summary.loc["prune-ten", "final_density_mean"] == shown["app"]
    assert summary.loc["app", "final_density_mean"] == shown["app"]
    # the figure: the x of each strategy's point, drawn shifted per curve by one of the
    # dodge's offsets (figures._dodge: 3 curves -2%, 0, +2% of the axis span, in the order the
    # runs load, which follows their ids): both at the same density up to that shift
    ax = drawn["accuracy_vs_density"].axes[0]
    xs = {c.get_label(): c.lines[0].get_xdata()[0] for c in ax.containers
          if c.get_label() in ("app", "prune-ten")}
    span = 100 - shown["app"] * 100  # the points' x range: 0.43 of the weights to dense
    for x in xs.values():
        offset = (x - shown["app"] * 100) / span
        assert min(abs(offset - o) for o in (-0.02, 0.0, 0.02)) < 1e-6, xs
    assert xs["app"] != xs["prune-ten"]
    assert "every Conv2d" in ax.get_xlabel()
    rows = load(out).metrics
    assert set(rows.loc[rows["label"] != "dense", "density_over"]) == {"every Conv2d"}


def test_pruning_example_is_a_sparse_part_of_compositions(pruned, capsys):
    tmp, plugin, _, _ = pruned
    suite = write_suite(tmp / "both.yaml", stream=STREAM, protocol=PROTOCOL,
                        strategies=["app+prune-ten"])
    assert main(["run", str(suite), "--plugin", str(plugin), "--out", str(tmp / "b"),
                 "--quiet"]) == 2
    assert "at most one part may be a sparse strategy" in capsys.readouterr().err


def test_plugin_metric_in_show_compare_and_report(pruned, capsys):
    tmp, _, _, out = pruned
    capsys.readouterr()
    assert main(["show", str(out), "--metrics", "target_density"]) == 0
    assert "target_density" in capsys.readouterr().out
    assert main(["compare", str(out), "--metric", "target_density", "--format", "latex"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(r"\begin{tabular}") and "target\\_density" in text
    assert main(["compare", str(out), "--format", "csv"]) == 0
    assert "final_test_acc" in capsys.readouterr().out
    readme = (tmp / "report" / "README.md")
    if not readme.is_file():
        make_report(out, tmp / "report")
    assert "target_density" in readme.read_text()


def test_copies_and_links_of_one_run_count_once(pruned, tmp_path, capsys):
    _, _, _, out = pruned
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(out, a)
    shutil.copytree(out, b)
    parent = tmp_path / "links"
    parent.mkdir()
    (parent / "a").symlink_to(a)
    (parent / "b").symlink_to(b)
    assert len(load([a, b]).runs) == len(load(out).runs) == 3
    assert len(load(parent).runs) == 3  # found through the links, each run once
    capsys.readouterr()
    assert main(["show", str(a), str(b), "--format", "csv"]) == 0
    table = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(table["n_runs"]) == [1, 1, 1]
    assert main(["compare", str(a), str(b), "--format", "csv"]) == 0
    assert set(pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))["n_seeds"]) == {1}
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "r")]) == 0
    assert list(pd.read_csv(tmp_path / "r" / "summary.csv")["n_runs"]) == [1, 1, 1]


def test_edited_plugin_is_a_new_run_and_rerun_retrains(pruned, tmp_path, capsys):
    tmp, _, _, _ = pruned
    plugin = tmp_path / "my_pruner.py"
    # its own name: one process may not hold two plugin files that register one name (the
    # fixture's file, at another path, registered "prune-ten")
    plugin.write_text(readme_code("pruning-example").replace('"prune-ten"', '"prune-ten-b"'))
    suite = write_suite(tmp_path / "tiny.yaml", stream={**STREAM, "megabatches": 2},
                        protocol=PROTOCOL, strategies=["prune-ten-b"])
    out = tmp_path / "o"
    args = ["run", str(suite), "--plugin", str(plugin), "--out", str(out), "--quiet"]
    assert main(args) == 0
    first = load(out)
    (config,) = first.configs.values()  # the file's hash is in the run's id
    assert len(config["identity"]["strategy_code"]["sha256"]) == 64
    plugin.write_text(plugin.read_text().replace("abs()", "abs() * 1.0"))  # an edit
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    assert "would train" in capsys.readouterr().out
    assert main(args) == 0
    runs = load(out).runs
    assert len(runs) == 2 and runs["run_id"].nunique() == 2  # not silently reused
    config = json.loads((Path(runs["path"].iloc[0]) / "config.json").read_text())
    assert "entry_points" in config["provenance"]
    capsys.readouterr()
    assert main([*args, "--rerun", "prune-ten-b"]) == 0
    assert "trains again from megabatch 1" in capsys.readouterr().err
    assert main([*args, "--rerun", "nope"]) == 2


def test_deselected_grid_entry_blocks_nothing():
    grid = ["grid.strategies.app-snip.pruner=[snip,magnitude]"]
    with pytest.raises(Exception, match="same run"):
        load_suite("quickstart", "smoke", grid)
    suite = load_suite("quickstart", "smoke", grid, strategies=["dense", "app-snip", "osp-snip"])
    assert "app-snip[pruner=magnitude]" in suite.labels


def test_python_api_example_and_exported_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_code("python-api-example"), "README python-api-example", "exec"),
         namespace)
    runs = namespace["runs"]
    assert list(runs["label"]) == ["dense", "app-snip"] and runs["final_density"].iloc[1] < 1
    # the weights load strictly into a plain model, with the run's zeros
    weights = alma_bench.trained_weights(runs["path"].iloc[1])
    assert not any(k.endswith("weight_mask") for k in weights)
    plain = build_model({"name": "small-cnn"}, (1, 8, 8), num_classes=10)
    plain.load_state_dict(weights, strict=True)
    zeros = sum(int((m.weight == 0).sum()) for m in plain.modules() if hasattr(m, "weight")
                and m.weight is not None and m.weight.dim() == 4)
    assert zeros > 0
