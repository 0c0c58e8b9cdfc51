"""TensorBoard sink: one log directory per run, metric-name tags, per-layer density, per-epoch
accuracies, hparams read back through TensorBoard's own loaders, and resume without
duplicates. No training: rows are written as the runner writes them."""

from __future__ import annotations

import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from alma_bench.run.tb import TensorBoardSink, flat_hparams

LAYERS = ("conv1.weight", "conv2.weight")


def _row(t: int, seed: int, epochs: int = 2) -> dict:
    """A metrics row as alma_bench/run/runner.py writes it (the fields the sink treats apart)."""
    acc = 0.5 + 0.1 * t + 0.01 * seed
    return {"megabatch": t, "step": 10 * t, "test_acc": acc, "val_acc": acc + 0.01,
            "density": 0.8 ** t, "best_epoch": epochs, "epochs_trained": epochs,
            "layer_density": {name: 0.8 ** (t + i) for i, name in enumerate(LAYERS)},
            "epoch_train_acc": [acc - 0.05 + 0.01 * e for e in range(epochs)],
            "epoch_val_acc": [acc - 0.02 + 0.01 * e for e in range(epochs)],
            "dense_layers": ["fc.weight"], "flag": True, "missing": float("nan")}


CONFIG = {"run_id": "abc", "suite": "s", "label": "osp-snip[density=0.1]", "seed": 0,
          "strategy": {"name": "osp", "params": {"density": 0.1, "pruner": "snip"}},
          "protocol": {"lr": 0.05, "milestones": [20, 40], "augment": False, "patience": None},
          "identity": {"seed": 0}, "reference": {"final_test_acc": 0.9}}


def _events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc


def test_flat_hparams_keeps_scalars_only():
    hp = flat_hparams(CONFIG)
    assert hp == {"run_id": "abc", "suite": "s", "label": "osp-snip[density=0.1]", "seed": 0,
                  "strategy.name": "osp", "strategy.params.density": 0.1,
                  "strategy.params.pruner": "snip", "protocol.lr": 0.05,
                  "protocol.augment": "false"}


def test_one_directory_per_run_with_metric_name_tags(tmp_path):
    for label in ("dense", "osp-snip[density=0.1]"):
        for seed in (0, 1):
            with TensorBoardSink(tmp_path, "s", label, seed, run_id=f"{label}{seed}") as sink:
                for t in (1, 2, 3):
                    sink.log_row(_row(t, seed))
                sink.log_hparams({**CONFIG, "label": label, "seed": seed},
                                 {"final_test_acc": 0.8, "cer": 1.2, "n_megabatches": 3})
    runs = sorted(p.parent.relative_to(tmp_path).as_posix()
                  for p in tmp_path.rglob("events.out.tfevents*"))
    assert runs == ["s/dense/seed0", "s/dense/seed1", "s/osp-snip[density=0.1]/seed0",
                    "s/osp-snip[density=0.1]/seed1"]
    acc = _events(tmp_path / "s" / "osp-snip[density=0.1]" / "seed1")
    tags = set(acc.Tags()["scalars"])
    # the same tag in every run: TensorBoard overlays strategies and seeds in one chart
    assert {"test_acc", "density", "layer_density/conv1.weight", "layer_density/conv2.weight",
            "epoch/train_acc", "epoch/val_acc", "summary/final_test_acc", "summary/cer"} <= tags
    assert not tags & {"megabatch", "dense_layers", "flag", "missing", "layer_density",
                       "epoch_train_acc"}
    test_acc = acc.Scalars("test_acc")
    assert [e.step for e in test_acc] == [1, 2, 3]
    assert [e.value for e in test_acc] == pytest.approx([_row(t, 1)["test_acc"]
                                                         for t in (1, 2, 3)])
    layer = acc.Scalars("layer_density/conv2.weight")
    assert [e.value for e in layer] == pytest.approx([0.8 ** (t + 1) for t in (1, 2, 3)])
    # epochs continue across megabatches: 2 per megabatch -> steps 1..6
    epochs = acc.Scalars("epoch/val_acc")
    assert [e.step for e in epochs] == [1, 2, 3, 4, 5, 6]
    expected = [v for t in (1, 2, 3) for v in _row(t, 1)["epoch_val_acc"]]
    assert [e.value for e in epochs] == pytest.approx(expected)
    assert [(e.step, e.value) for e in acc.Scalars("summary/cer")] == [(3, pytest.approx(1.2))]


def test_hparams_read_back(tmp_path):
    with TensorBoardSink(tmp_path, "s", "osp-snip[density=0.1]", 0, run_id="abc") as sink:
        sink.log_row(_row(1, 0))
        sink.log_hparams(CONFIG, {"final_test_acc": 0.8, "cer": 1.2})
    acc = _events(tmp_path / "s" / "osp-snip[density=0.1]" / "seed0")
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    # session start and end only: no per-run Experiment, so TensorBoard shows the union of
    # every run's hparams (alma_bench/run/tb.py)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
          for k, v in start.hparams.items()}
    assert hp["strategy.params.density"] == pytest.approx(0.1)
    assert hp["strategy.params.pruner"] == "snip" and hp["label"] == "osp-snip[density=0.1]"
    assert hp["protocol.augment"] == "false" and "protocol.milestones" not in hp
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS


def test_resume_relogs_rows_and_hides_the_killed_process_events(tmp_path):
    # First process: logs megabatches 1..3, then dies (its 3rd megabatch never reached the
    # checkpoint). Second process resumes from the checkpoint's 2 rows with other numbers.
    first = TensorBoardSink(tmp_path, "s", "dense", 0, run_id="r")
    for t in (1, 2, 3):
        first.log_row(_row(t, 0))
    first.close()
    # A resumed run is a later process: its event file's name holds a later second. In one
    # second of one process the names differ only by a session-wide counter, which sorts as
    # text ("10" before "9"), so without the wait this test depends on the writers before it.
    time.sleep(1.1)
    rows = [_row(t, 0) for t in (1, 2)]
    with TensorBoardSink(tmp_path, "s", "dense", 0, run_id="r", rows=rows) as sink:
        for t in (3, 4):
            sink.log_row({**_row(t, 0), "test_acc": 0.25})
    acc = _events(tmp_path / "s" / "dense" / "seed0")
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("test_acc")] == [
        (1, 0.6), (2, 0.7), (3, 0.25), (4, 0.25)]
    assert [e.step for e in acc.Scalars("epoch/train_acc")] == list(range(1, 9))


def test_another_config_with_the_same_label_gets_its_own_directory(tmp_path):
    for run_id in ("one", "two", "one"):
        with TensorBoardSink(tmp_path, "s", "dense", 0, run_id=run_id) as sink:
            sink.log_row(_row(1, 0))
    assert sorted(p.name for p in (tmp_path / "s" / "dense").iterdir()) == ["seed0",
                                                                          "seed0-two"]
