"""Report, result loader and TensorBoard sink on a fake result store that follows the schema."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from alma_bench.analysis.report import make_report
from alma_bench.analysis.results import load, summary_table
from alma_bench.errors import UserError

N_MEGABATCHES = 4
LAYERS = ("conv1.weight", "conv2.weight", "fc.weight")


def _row(t: int, strategy: str, seed: int, with_layers: bool) -> dict:
    """One metrics row; numbers vary with strategy, seed and megabatch so means/stds are real."""
    test_acc = 0.4 + 0.1 * t + 0.01 * seed - (0.03 if strategy == "app" else 0.0)
    train_acc = min(1.0, test_acc + 0.05 + 0.02 * t)
    density = 1.0 if strategy == "dense" else 0.8 ** t
    row = {
        "megabatch": t, "step": 50 * t, "samples_seen": 1000 * t, "test_acc": test_acc,
        "val_acc": test_acc + 0.01, "train_acc": train_acc,
        "test_errors": round(1000 * (1 - test_acc)), "gen_gap": train_acc - test_acc,
        "density": density, "nonzero_params": int(1e5 * density), "flops_dense": 2e7,
        "flops_effective": 2e7 * density, "train_flops": 6e7 * density * 1000 * t,
        "wall_time": 3.0 + seed + t, "epoch_gap": [0.01, 0.02],
    }
    if with_layers:
        row["layer_density"] = {name: density ** (i + 1) for i, name in enumerate(LAYERS)}
    return row


def _write_run(suite_dir: Path, strategy: str, label: str, seed: int, reference=None,
               with_layers: bool = False) -> dict:
    run_dir = suite_dir / f"{label}-{seed}-abc123"
    run_dir.mkdir(parents=True)
    config = {
        "run_id": run_dir.name, "suite": suite_dir.name, "scale": "tiny", "label": label,
        "seed": seed, "strategy": {"name": strategy, "params": {"density": 0.5}},
        "stream": {"name": "digits", "n_megabatches": N_MEGABATCHES},
        "model": {"name": "mlp", "hidden": 64}, "protocol": {"epochs": 2, "lr": 0.1},
        "reference": reference, "version": "0.1.0",
    }
    rows = [_row(t, strategy, seed, with_layers) for t in range(1, N_MEGABATCHES + 1)]
    summary = {
        "final_test_acc": rows[-1]["test_acc"],
        "cer": sum(1 - r["test_acc"] for r in rows),
        "cer_count": sum(r["test_errors"] for r in rows),
        "mean_gen_gap": statistics.mean(r["gen_gap"] for r in rows),
        "final_gen_gap": rows[-1]["gen_gap"], "final_density": rows[-1]["density"],
        "nonzero_params": rows[-1]["nonzero_params"],
        "flops_effective": rows[-1]["flops_effective"],
        "wall_time": sum(r["wall_time"] for r in rows),
    }
    status = {"state": "done", "megabatches_done": N_MEGABATCHES, "n_megabatches": N_MEGABATCHES}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "status.json").write_text(json.dumps(status))
    return summary


def _write_suite(suite_dir: Path) -> dict[str, list[dict]]:
    """2 strategies x 2 seeds; app-snip has layer densities and (seed 0) a paper reference."""
    summaries: dict[str, list[dict]] = {"app-snip": [], "dense": []}
    for seed in (0, 1):
        reference = {"final_test_acc": 0.62, "cer": 1.5} if seed == 0 else None
        summaries["app-snip"].append(
            _write_run(suite_dir, "app", "app-snip", seed, reference, with_layers=True))
        summaries["dense"].append(_write_run(suite_dir, "dense", "dense", seed))
    return summaries


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    summaries = _write_suite(root / "digits-tiny")
    out = make_report(root, command="alma-bench report results/")
    return root, out, summaries


def test_report_writes_every_file(store):
    _, out, _ = store
    pngs = ["anytime_accuracy.png", "cer.png", "generalisation_gap.png", "density.png",
            "accuracy_vs_density.png", "layer_density_app-snip.png"]
    for name in pngs + ["summary.csv", "README.md"]:
        assert (out / name).is_file(), name
    for name in pngs:
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100, name
    # The strategy without layer densities gets no heatmap, and nothing crashed.
    assert not (out / "layer_density_dense.png").exists()
    readme = (out / "README.md").read_text()
    assert "alma-bench report results/" in readme
    assert "](anytime_accuracy.png)" in readme and "](layer_density_app-snip.png)" in readme
    assert "| paper final test acc |" in readme and "62.0" in readme  # reference beside ours
    assert '"model"' in readme and "cores" in readme


def test_summary_csv_matches_summary_files(store):
    _, out, summaries = store
    table = pd.read_csv(out / "summary.csv").set_index("label")
    for label, runs in summaries.items():
        assert table.loc[label, "n_seeds"] == len(runs)
        for metric in ("final_test_acc", "cer", "cer_count", "final_gen_gap", "final_density",
                       "flops_effective", "wall_time"):
            values = [r[metric] for r in runs]
            assert table.loc[label, f"{metric}_mean"] == pytest.approx(statistics.mean(values))
            assert table.loc[label, f"{metric}_std"] == pytest.approx(statistics.stdev(values))
    assert table.loc["app-snip", "ref_final_test_acc"] == pytest.approx(0.62)
    assert math.isnan(table.loc["dense", "ref_final_test_acc"])


def test_load_frames(store):
    root, _, _ = store
    res = load(root / "digits-tiny")  # a single suite directory works as well as its parent
    assert len(res.runs) == 4 and set(res.runs["state"]) == {"done"}
    assert len(res.metrics) == 4 * N_MEGABATCHES
    assert {"run_id", "suite", "label", "seed", "layer_density"} <= set(res.metrics.columns)
    assert isinstance(res.metrics["layer_density"].iloc[0], dict)
    assert len(res.layer_density) == 2 * N_MEGABATCHES * len(LAYERS)
    assert set(res.layer_density["label"]) == {"app-snip"}


def test_missing_metrics_are_nan_not_errors(tmp_path):
    suite = tmp_path / "s"
    _write_run(suite, "dense", "dense", 0)
    run = suite / "dense-0-abc123"
    (run / "summary.json").unlink()  # an unfinished run
    (run / "status.json").write_text(json.dumps({"state": "running", "megabatches_done": 4,
                                                 "n_megabatches": 8}))
    res = load(tmp_path)
    assert res.runs.loc[0, "state"] == "running" and math.isnan(res.runs.loc[0, "cer"])
    assert list(res.layer_density.columns)[:3] == ["suite", "run_id", "label"]
    assert res.layer_density.empty
    assert summary_table(res.runs).loc[0, "n_seeds"] == 0
    out = make_report(tmp_path)
    assert (out / "cer.png").is_file() and (out / "README.md").is_file()


def test_several_suites_get_prefixed_figures(tmp_path):
    for name in ("a", "b"):
        _write_run(tmp_path / name, "dense", "dense", 0)
    out = make_report(tmp_path, out_dir=tmp_path / "rep")
    assert (out / "a_anytime_accuracy.png").is_file() and (out / "b_cer.png").is_file()
    assert set(pd.read_csv(out / "summary.csv")["suite"]) == {"a", "b"}


def test_load_missing_or_empty_path_raises(tmp_path):
    with pytest.raises(UserError):
        load(tmp_path / "nope")
    with pytest.raises(UserError):
        load(tmp_path)


def test_tensorboard_sink_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alma_bench.run.tb import TensorBoardSink

    sink = TensorBoardSink(tmp_path, "digits", "app-snip", 3)
    rows = [_row(t, "app", 3, with_layers=True) for t in (1, 2)]
    for row in rows:
        sink.log_row(row)
    sink.close()
    # one directory per run, tags by metric name (alma_bench/run/tb.py; more in tests/test_tb.py)
    acc = EventAccumulator(str(tmp_path / "digits" / "app-snip" / "seed3"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "test_acc" in tags and "layer_density/conv1.weight" in tags
    assert "epoch_gap" not in tags  # a list field, not a scalar
    events = acc.Scalars("test_acc")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["test_acc"] for r in rows])


def test_findings_written_by_hand_survive_a_regenerated_report(store, tmp_path):
    root, _, _ = store
    out = tmp_path / "rep"
    make_report(root, out)
    first = (out / "README.md").read_text()
    assert "## Findings" not in first
    (out / "FINDINGS.md").write_text("APP beats OSP by 1.7 pp here.\n")
    make_report(root, out)
    make_report(root, out)  # twice: the findings appear once, not once per regeneration
    readme = (out / "README.md").read_text()
    assert readme.count("APP beats OSP by 1.7 pp here.") == 1
    assert readme.index("## Findings") < readme.index("## Suite")
    assert (out / "FINDINGS.md").read_text() == "APP beats OSP by 1.7 pp here.\n"
