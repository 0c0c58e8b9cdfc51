"""Runs end to end: determinism, skipping finished runs, resume after SIGKILL, plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, cli_process, sigkill_after, write_suite

from alma_bench.cli import main
from alma_bench.spec.config import load_suite
from alma_bench.store.files import read_rows

VOLATILE = {"wall_time"}


def rows_of(out: Path, suite="tiny"):
    runs = sorted((out / suite).iterdir())
    out = {}
    for r in runs:
        cfg = json.loads((r / "config.json").read_text())
        rows = read_rows(r / "metrics.jsonl")
        out[f"{cfg['label']}{cfg['seed']}"] = [
            {k: v for k, v in row.items() if k not in VOLATILE} for row in rows]
    return out


def test_same_seed_same_numbers_different_seed_different(tmp_path, tiny_suite):
    for out in ("a", "b"):
        assert main(["run", str(tiny_suite), "--seeds", "0,1", "--out", str(tmp_path / out),
                     "--quiet"]) == 0
    a, b = rows_of(tmp_path / "a"), rows_of(tmp_path / "b")
    assert a == b
    assert a["dense0"] != a["dense1"]
    assert [r["megabatch"] for r in a["dense0"]] == [1, 2, 3, 4]
    # union replay: 1, 2, 3, 4 megabatches of training data
    sizes = [r["train_size"] for r in a["dense0"]]
    assert sizes[3] == sum(sizes) - sizes[0] - sizes[1] - sizes[2]


def test_second_run_does_no_training(tmp_path, tiny_suite, capsys):
    out = str(tmp_path / "r")
    assert main(["run", str(tiny_suite), "--out", out, "--quiet"]) == 0
    cfg = next((tmp_path / "r" / "tiny").iterdir()) / "metrics.jsonl"
    before = cfg.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(tiny_suite), "--out", out, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "all 1 runs of suite 'tiny' were already done" in said
    assert cfg.stat().st_mtime_ns == before
    assert re.search(r"dense\s+1\s+\d+\.\d\d", said)  # the table


def test_run_id_is_config_hash(tiny_suite):
    a = load_suite(str(tiny_suite)).runs[0]
    b = load_suite(str(tiny_suite), sets=["protocol.epochs=3"]).runs[0]
    assert a.run_id == load_suite(str(tiny_suite)).runs[0].run_id
    assert a.run_id != b.run_id


def test_strategy_revision_enters_the_run_id(tiny_suite, monkeypatch):
    # a fix that changes a strategy's numbers bumps its revision: its old results are not reused
    from alma_bench.registry import STRATEGIES

    dense = STRATEGIES.get("dense").cls
    spec = load_suite(str(tiny_suite)).runs[0]
    before = spec.run_id
    assert "strategy_revision" not in spec.identity()  # revision 1: ids made before hold
    monkeypatch.setattr(dense, "revision", 2, raising=False)
    assert spec.identity()["strategy_revision"] == 2 and spec.run_id != before


def test_sigkill_during_megabatch_4_resumes_to_identical_numbers(tmp_path):
    suite = write_suite(tmp_path / "tiny.yaml", strategies=[{"name": "slow-dense"}],
                        stream={**__import__("conftest").TINY["stream"], "megabatches": 6})
    plugin = str(ROOT / "tests" / "plugins" / "slow.py")
    common = [str(suite), "--plugin", plugin, "--quiet"]
    ref = cli_process("run", *common, "--out", str(tmp_path / "ref"))
    proc = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    status, runs = sigkill_after(proc, tmp_path / "killed" / "tiny", 3)
    assert status and status["megabatches_done"] == 3, status  # killed inside megabatch 4
    assert json.loads(runs[0].read_text())["state"] == "running"
    resumed = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a, b = rows_of(tmp_path / "ref"), rows_of(tmp_path / "killed")
    assert len(a["slow-dense0"]) == 6 and a == b


def readme_plugin(tmp_path) -> Path:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- plugin-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "my_strategies.py"
    path.write_text(code)
    return path


def test_readme_plugin_loads_lists_and_runs(tmp_path, capsys):
    plugin = readme_plugin(tmp_path)
    assert main(["list", "strategies", "--plugin", str(plugin)]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^shrink-perturb\s+Shrink", listed, re.M)
    assert "shrink=0.4" in listed
    suite = write_suite(tmp_path / "s.yaml", strategies=[
        {"name": "dense"}, {"name": "shrink-perturb", "params": {"shrink": 0.5}}])
    assert main(["run", str(suite), "--plugin", str(plugin), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    rows = rows_of(tmp_path / "o")
    assert len(rows["shrink-perturb0"]) == 4
    assert rows["shrink-perturb0"][1]["test_acc"] != rows["dense0"][1]["test_acc"]


def test_tensorboard_logs_each_megabatch(tmp_path, tiny_suite):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    tb = tmp_path / "tb"
    assert main(["run", str(tiny_suite), "--out", str(tmp_path / "o"), "--quiet",
                 "--tensorboard", str(tb)]) == 0
    # one TensorBoard run per run: <dir>/<suite>/<label>/seed<N>, tags by metric name only
    assert {p.parent for p in tb.rglob("events.out.tfevents*")} == {tb / "tiny" / "dense" / "seed0"}
    acc = EventAccumulator(str(tb / "tiny" / "dense" / "seed0"))
    acc.Reload()
    scalars = acc.Scalars("test_acc")
    rows = next(iter(rows_of(tmp_path / "o").values()))
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars] == pytest.approx([r["test_acc"] for r in rows])
    tags = acc.Tags()["scalars"]
    assert any(t.startswith("layer_density/") for t in tags)
    assert len(acc.Scalars("epoch/val_acc")) == sum(r["epochs_trained"] for r in rows)
    start = metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["protocol.epochs"].number_value == 2
    assert start.hparams["strategy.name"].string_value == "dense"
    summary = json.loads(next((tmp_path / "o" / "tiny").glob("*/summary.json")).read_text())
    assert acc.Scalars("summary/cer")[0].value == pytest.approx(summary["cer"])
