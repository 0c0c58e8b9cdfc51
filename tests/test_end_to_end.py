"""Issue 16: the end-to-end measurement writes every key; the row's validation accuracy is
reused from the kept epoch only while the model is the one that epoch validated; the
generalisation gap's train accuracy on a seeded sample. No timing is asserted."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import TINY, write_suite

from alma_bench.perf import runs as perf_run
from alma_bench.registry import STRATEGIES
from alma_bench.run.runner import execute
from alma_bench.run.timing import PARTS, Breakdown
from alma_bench.spec.config import load_suite
from alma_bench.store.files import load_checkpoint, read_rows
from alma_bench.store.rundir import RunDir


def _spec(tmp_path, strategy=None, **protocol):
    path = write_suite(tmp_path / "s.yaml", strategies=[strategy or {"name": "dense"}],
                       protocol={**TINY["protocol"], "epochs": 3, "patience": 1, **protocol})
    return load_suite(str(path)).runs[0]


def test_end_to_end_writes_every_key(tmp_path, monkeypatch):
    # a fresh interpreter importing torch and Avalanche takes ~17 s: not this test's subject
    monkeypatch.setattr(perf_run, "startup_s", lambda module=None: 1.0)
    suite = write_suite(tmp_path / "s.yaml")
    r = perf_run.measure_run(f"{suite}:dense", threads=1, max_pairs=3)
    for key in perf_run.KEYS:
        assert key in r, key
    # a short run is measured in pairs (run, floor); the reported pair is the median one
    assert r["pairs"] == len(r["ratios"]) == 3
    assert r["ratio"] == sorted(r["ratios"])[1]
    q = r["ratio_quartiles"]
    assert len(q) == 3 and q[0] <= q[1] <= q[2]
    assert set(r["breakdown"]) == set(PARTS)
    assert r["ratio"] == pytest.approx(r["wall_s"] / r["floor_s"])
    assert r["floor_s"] == pytest.approx(r["floor"]["train_s"] + r["floor"]["eval_s"])
    # the floor trains the samples the run trained and evaluates the images the protocol does
    n = TINY["stream"]["megabatches"]
    assert r["floor"]["steps"] > 0 and r["floor"]["eval_images"] > 0
    assert r["counts"]["test_images"] == n * TINY["stream"]["n_test"]
    # dense changes nothing after selection: every row reuses its kept epoch's validation
    assert r["counts"]["val_passes_reused"] == n and r["counts"]["final_val_images"] == 0
    assert min(r["breakdown"].values()) >= 0 and r["breakdown"]["training"] > 0
    rows = perf_run.format_rows(r)
    assert any("whole run / floor" in a for a, _ in rows)


def test_a_floor_measured_first_covers_the_same_work_as_one_measured_after(tmp_path):
    spec = _spec(tmp_path)
    protocol = spec.protocol_obj()
    after = perf_run._pair(spec, protocol, "cpu")
    first = perf_run._pair(spec, protocol, "cpu", floor_first=True, epochs=after["epochs"])
    assert first["epochs"] == after["epochs"]
    for key in ("steps", "samples", "eval_images"):
        assert first["floor"][key] == after["floor"][key] > 0, key


def _final_val_acc(tmp_path, spec) -> tuple[float, float]:
    """(the last row's val_acc, the checkpointed model's accuracy on that validation set)."""
    from alma_bench.run.models import build_model
    from alma_bench.run.runner import load_data
    from alma_bench.run.stream import build_stream
    from alma_bench.run.training import RunContext

    rd = RunDir(tmp_path / "o", spec.results_name, spec.run_id)
    row = read_rows(rd.metrics)[-1]
    data = load_data(spec.stream)
    stream = build_stream(data, spec.split(), spec.seeds().stream)
    model = build_model(spec.model, stream.input_shape, stream.num_classes)
    model.load_state_dict(load_checkpoint(rd.checkpoint)["model"])
    from alma_bench.run.data import Normalizer

    ctx = RunContext(spec, stream, model, spec.protocol_obj(), spec.seeds(),
                     torch.device("cpu"), Normalizer(data.mean, data.std, torch.device("cpu")))
    return row["val_acc"], ctx.accuracy(*stream.val_set(stream.n_megabatches - 1))[0]


def test_reused_validation_is_the_reported_models(tmp_path):
    spec = _spec(tmp_path)
    timer = Breakdown()
    execute(spec, tmp_path / "o", "cpu", timer=timer)
    assert timer.counts["val_passes_reused"] == TINY["stream"]["megabatches"]
    reported, recomputed = _final_val_acc(tmp_path, spec)
    assert reported == recomputed


class _Nudge(SupervisedPlugin):
    """Changes the weights after selection (as a strategy may): the kept epoch's validation no
    longer describes the model, so the row must measure it again."""

    def after_training_exp(self, strategy, **kw):
        with torch.no_grad():
            for p in strategy.model.parameters():
                p.mul_(0.5)


if "nudge-test" not in STRATEGIES:
    @STRATEGIES.register("nudge-test")
    @dataclasses.dataclass(frozen=True)
    class NudgeStrategy:
        """Halves every weight after each megabatch's selection (tests only)."""

        def plugins(self, ctx):
            return [_Nudge()]


def test_weights_changed_after_selection_are_validated_again(tmp_path):
    spec = _spec(tmp_path, {"name": "nudge-test"})
    timer = Breakdown()
    execute(spec, tmp_path / "o", "cpu", timer=timer)
    assert timer.counts["val_passes_reused"] == 0
    assert timer.counts["final_val_images"] > 0
    reported, recomputed = _final_val_acc(tmp_path, spec)
    assert reported == recomputed


def test_train_accuracy_on_a_seeded_sample(tmp_path):
    whole = _spec(tmp_path)
    sample = dataclasses.replace(whole, protocol={**whole.protocol, "train_eval_sample": 50})
    # the default leaves the run id as it was before the field existed
    assert "train_eval_sample" not in whole.identity()["protocol"]
    assert sample.run_id != whole.run_id
    timer = Breakdown()
    execute(sample, tmp_path / "o", "cpu", timer=timer)
    sizes = [r["train_size"] for r in read_rows(RunDir(tmp_path / "o", sample.results_name,
                                                       sample.run_id).metrics)]
    assert timer.counts["train_images"] == sum(min(50, s) for s in sizes)
    from alma_bench.run.runner import load_data, train_eval_set
    from alma_bench.run.stream import build_stream

    stream = build_stream(load_data(sample.stream), sample.split(), sample.seeds().stream)
    a = train_eval_set(stream, sample.protocol_obj(), sample.seeds(), 2)
    b = train_eval_set(stream, sample.protocol_obj(), sample.seeds(), 2)
    assert len(a[1]) == 50 and torch.equal(a[0], b[0])  # the same sample on every call


def test_bad_train_eval_sample_is_one_line(tmp_path):
    from alma_bench.errors import UserError

    path = write_suite(tmp_path / "s.yaml",
                       protocol={**TINY["protocol"], "train_eval_sample": 0})
    with pytest.raises(UserError, match="train_eval_sample"):
        load_suite(str(path))
