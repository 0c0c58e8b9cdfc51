"""The report of a real smoke run: 2 strategies x 2 seeds through the whole harness."""

from __future__ import annotations

import json
import statistics

import pandas as pd
from conftest import write_suite
from PIL import Image

from alma_bench.cli import main

FIGURES = ["anytime_accuracy.png", "cer.png", "generalisation_gap.png", "density.png",
           "accuracy_vs_density.png"]


def test_report_of_a_real_run(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", strategies=[
        {"name": "dense"}, {"name": "app", "params": {"pruner": "magnitude"}}], seeds=[0, 1])
    out = tmp_path / "results"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    assert main(["report", str(out / "tiny"), "--out", str(tmp_path / "rep")]) == 0
    rep = tmp_path / "rep"
    for name in [*FIGURES, "layer_density_app.png", "summary.csv", "README.md"]:
        assert (rep / name).stat().st_size > 0, name
    for name in [*FIGURES, "layer_density_app.png"]:
        with Image.open(rep / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(set(im.convert("L").getdata())) > 5  # not a blank canvas
    table = pd.read_csv(rep / "summary.csv").set_index("label")
    for label in ("dense", "app"):
        sums = []
        for run in (out / "tiny").iterdir():
            cfg = json.loads((run / "config.json").read_text())
            if cfg["label"] == label:
                sums.append(json.loads((run / "summary.json").read_text()))
        assert len(sums) == 2
        for key in ("final_test_acc", "cer", "cer_count", "final_density"):
            values = [s[key] for s in sums]
            assert abs(table.loc[label, f"{key}_mean"] - statistics.mean(values)) < 1e-9
            assert abs(table.loc[label, f"{key}_std"] - statistics.stdev(values)) < 1e-9
    readme = (rep / "README.md").read_text()
    assert "alma-bench report" in readme and "![" in readme
