"""Avalanche's continual-learning strategies as suite entries: each runs and acts, its state
survives a resume, parameters are validated, compositions keep their order, Avalanche's
loggers change no number, and the alma-cl suite runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli_process, sigkill_after, write_suite

from alma_bench.cli import main
from alma_bench.registry import STRATEGIES
from alma_bench.run.plugin_base import SupervisedPlugin
from alma_bench.spec.config import load_suite
from alma_bench.store.files import read_rows
from alma_bench.store.rundir import RunDir

ADAPTERS = sorted(n for n in STRATEGIES.names() if n.startswith("avalanche:"))
# new data only: what a continual-learning method keeps is all the learner has of the past
STREAM = {**TINY["stream"], "replay": "none", "megabatches": 3}
# the row metric that shows each one acting, and from which megabatch (1-based) on
ACTS = {"avalanche:replay": ("replay_buffer", 1), "avalanche:er_ace": ("er_ace_buffer", 1),
        "avalanche:gem": ("gem_memory", 1), "avalanche:ewc": ("ewc_penalty", 2),
        "avalanche:lwf": ("lwf_penalty", 2), "avalanche:si": ("si_penalty", 2),
        "avalanche:mas": ("mas_penalty", 2)}
PARAMS = {"avalanche:ewc": {"ewc_lambda": 100.0}, "avalanche:replay": {"mem_size": 60},
          "avalanche:er_ace": {"mem_size": 60}, "avalanche:gem": {"patterns_per_experience": 32}}


def _suite(tmp_path, strategies, **stream):
    return write_suite(tmp_path / "tiny.yaml", strategies=strategies, stream={**STREAM, **stream})


def _rows(out: Path) -> dict[str, list[dict]]:
    found = {}
    for d in (out / "tiny").iterdir():
        label = json.loads((d / "config.json").read_text())["label"]
        found[label] = [{k: v for k, v in r.items() if k != "wall_time"}
                        for r in read_rows(d / "metrics.jsonl")]
    return found


def _run(suite, out, *extra) -> int:
    return main(["run", str(suite), "--out", str(out), "--quiet", "--workers", "1", *extra])


def test_the_registry_has_avalanches_strategies_and_lists_them(capsys):
    assert ADAPTERS == ["avalanche:er_ace", "avalanche:ewc", "avalanche:gem", "avalanche:lwf",
                        "avalanche:mas", "avalanche:replay", "avalanche:si"]
    assert set(ACTS) == set(ADAPTERS)
    assert main(["list", "strategies"]) == 0
    listed = capsys.readouterr().out
    for name in ADAPTERS:
        assert f"\n{name} " in listed
    assert "mem_size=200, batch_size_mem=None" in listed


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_adapter_acts_and_resumes_from_disk_to_identical_rows(tmp_path, monkeypatch, name):
    entry = {"name": name, "params": PARAMS.get(name, {})}
    suite = _suite(tmp_path, [entry])
    assert _run(suite, tmp_path / "ref") == 0
    ref = _rows(tmp_path / "ref")[name]
    metric, first = ACTS[name]
    assert [r[metric] for r in ref[:first - 1]] in ([], [0.0])
    assert all(r[metric] != 0 for r in ref[first - 1:]), [r[metric] for r in ref]
    if name == "avalanche:replay":  # every step also draws a batch from the buffer
        grown = ref[1]["samples_seen"] - ref[0]["samples_seen"]
        assert grown > TINY["protocol"]["epochs"] * ref[1]["train_size"]

    # interrupted right after megabatch 2's checkpoint; the rerun builds a new template and
    # new plugins, and takes their state from the checkpoint on disk
    commit, done = RunDir.commit, []

    def commit_then_stop(self, *args, **kw):
        commit(self, *args, **kw)
        done.append(1)
        if len(done) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "commit", commit_then_stop)
    assert _run(suite, tmp_path / "cut") == 130
    monkeypatch.setattr(RunDir, "commit", commit)
    assert len(_rows(tmp_path / "cut")[name]) == 2
    assert _run(suite, tmp_path / "cut") == 0
    assert _rows(tmp_path / "cut")[name] == ref


# the in-process interruption above is the default test; this one kills a process for real
# (three processes that import torch and Avalanche: slow on a busy machine)
@pytest.mark.slow
def test_replay_and_ewc_killed_mid_stream_resume_to_identical_rows(tmp_path):
    # one run holding both (a composition), killed with SIGKILL inside megabatch 4
    suite = write_suite(tmp_path / "tiny.yaml", stream={**STREAM, "megabatches": 5},
                        strategies=[{"name": ["avalanche:replay", "avalanche:ewc", "slow-dense"],
                                     "params": {"avalanche:replay": {"mem_size": 60},
                                                "avalanche:ewc": {"ewc_lambda": 100.0}}}])
    common = [str(suite), "--plugin", str(ROOT / "tests" / "plugins" / "slow.py"), "--quiet",
              "--workers", "1"]
    ref = cli_process("run", *common, "--out", str(tmp_path / "ref"))
    proc = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    status, _ = sigkill_after(proc, tmp_path / "killed" / "tiny", 3)
    assert status and status["megabatches_done"] == 3, status
    resumed = cli_process("run", *common, "--out", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a, b = _rows(tmp_path / "ref"), _rows(tmp_path / "killed")
    (rows,) = a.values()
    assert a == b and len(rows) == 5
    assert rows[-1]["replay_buffer"] == 60 and rows[-1]["ewc_penalty"] > 0


def test_unknown_or_bad_avalanche_parameter_is_one_line(tmp_path, capsys):
    for params, message in [
        ({"mem_sise": 5}, "alma-bench: error: unknown parameter(s) mem_sise for strategy "
                          "'avalanche:replay'. Valid: batch_size_mem, mem_size, storage_policy"),
        ({"mem_size": 0}, "alma-bench: error: strategy 'avalanche:replay': mem_size must be "
                          ">= 1, got 0"),
    ]:
        suite = _suite(tmp_path, [{"name": "avalanche:replay", "params": params}])
        assert _run(suite, tmp_path / "o") == 2
        assert capsys.readouterr().err == message + "\n"
    suite = _suite(tmp_path, [{"name": "avalanche:ewc", "params": {"mode": "online"}}])
    assert _run(suite, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decay_factor is required by mode online" in err


class _Order(SupervisedPlugin):
    """Records, at every before_backward, its tag and the loss it sees."""

    seen: list = []

    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def before_backward(self, strategy, **kw):
        _Order.seen.append((self.tag, strategy.experience.current_experience,
                            float(strategy.loss)))


def _register_order():
    for tag in ("a", "b"):
        if f"order-{tag}" not in STRATEGIES:
            @STRATEGIES.register(f"order-{tag}")
            @dataclass(frozen=True)
            class Order:
                """Records its hooks (tests only)."""

                def plugins(self, ctx, tag=tag):
                    return [_Order(tag)]


def test_composition_runs_hooks_in_the_listed_order(tmp_path):
    _register_order()
    _Order.seen = []
    suite = _suite(tmp_path, [{"name": ["order-a", "avalanche:ewc", "order-b"],
                               "params": {"avalanche:ewc": {"ewc_lambda": 100.0}}}])
    assert _run(suite, tmp_path / "o") == 0
    tags = [t for t, _, _ in _Order.seen]
    assert tags == ["a", "b"] * (len(tags) // 2)
    pairs = [(t, a, b) for (_, t, a), (_, _, b) in zip(_Order.seen[::2], _Order.seen[1::2])]
    # EWC's hook ran between them: from megabatch 2 on, b sees the loss with its penalty (0 at
    # a megabatch's first step only, where the weights are still EWC's anchor)
    assert all(b == a for t, a, b in pairs if t == 0)
    later = [b - a for t, a, b in pairs if t > 0]
    assert min(later) >= 0 and sum(d > 0 for d in later) >= len(later) - 2


def test_composition_label_params_identity_and_overrides(tmp_path):
    entry = {"name": ["app", "avalanche:ewc"],
             "params": {"app": {"pruner": "magnitude"}, "avalanche:ewc": {"ewc_lambda": 5.0}}}
    suite = _suite(tmp_path, [entry, {"name": "app+avalanche:lwf"}])
    runs = {r.label: r for r in load_suite(str(suite)).runs}
    assert set(runs) == {"app+avalanche:ewc", "app+avalanche:lwf"}
    r = runs["app+avalanche:ewc"]
    assert r.strategy["name"] == "app+avalanche:ewc"
    assert r.strategy["params"]["app"]["pruner"] == "magnitude"
    assert r.strategy["params"]["avalanche:ewc"] == {"ewc_lambda": 5.0, "mode": "separate",
                                                     "decay_factor": None,
                                                     "keep_importance_data": False}
    assert r.identity()["strategy_revision"] == {"app": 2}  # every part's revision
    changed = load_suite(str(suite), sets=[
        "strategies.app+avalanche:ewc.avalanche:ewc.ewc_lambda=6"]).runs[0]
    assert changed.strategy["params"]["avalanche:ewc"]["ewc_lambda"] == 6.0
    assert changed.run_id != r.run_id
    grid = load_suite(str(suite), sets=["grid.strategies.app+avalanche:ewc.app.density=[0.5,0.3]"])
    assert [g.label for g in grid.runs][:2] == ["app+avalanche:ewc[app.density=0.5]",
                                                "app+avalanche:ewc[app.density=0.3]"]
    assert grid.runs[1].strategy["params"]["app"]["density"] == 0.3


def test_adapter_revision_enters_the_run_id(tmp_path, monkeypatch):
    suite = _suite(tmp_path, [{"name": "avalanche:ewc"}])
    spec = load_suite(str(suite)).runs[0]
    before = spec.run_id
    assert "strategy_revision" not in spec.identity()
    monkeypatch.setattr(STRATEGIES.get("avalanche:ewc").cls, "revision", 2)
    assert spec.identity()["strategy_revision"] == 2 and spec.run_id != before


@pytest.mark.parametrize("entry, message", [
    ({"name": ["app", "osp"]}, "'app' and 'osp' both own the masks; at most one part may be a "
                               "sparse strategy"),
    ({"name": ["app", "avalanche:ewc"], "params": {"ewc": {}}},
     "unknown part(s) ewc. Valid: app, avalanche:ewc"),
    ({"name": ["dense", "dense"]}, "lists a part twice"),
    ({"name": ["dense", "avalanche:ewk"]}, "unknown strategy 'avalanche:ewk'"),
])
def test_bad_compositions_are_one_line(tmp_path, capsys, entry, message):
    assert _run(_suite(tmp_path, [entry]), tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_avalanche_loggers_log_and_change_no_number(tmp_path):
    suite = _suite(tmp_path, [{"name": "dense"},
                              {"name": "avalanche:lwf"}])
    logs = tmp_path / "logs"
    assert _run(suite, tmp_path / "off") == 0
    assert _run(suite, tmp_path / "on", "--avalanche-loggers", str(logs)) == 0
    assert _rows(tmp_path / "off") == _rows(tmp_path / "on")
    for label in ("dense", "avalanche:lwf"):
        run = logs / "tiny" / label / "seed0"
        assert "Top1_Acc_Stream/eval_phase/test_stream" in (run / "log.txt").read_text()
        evals = (run / "csv" / "eval_results.csv").read_text().splitlines()
        assert len(evals) == 1 + STREAM["megabatches"]  # a header, then one row per megabatch
        assert list((run / "tb").glob("events.out.tfevents.*"))
    # not part of the run's identity: the same run ids either way
    assert {d.name for d in (tmp_path / "off" / "tiny").iterdir()} == \
        {d.name for d in (tmp_path / "on" / "tiny").iterdir()}


# a process of its own: pytest records warnings itself. The pool variant spawns two workers
# that import torch and Avalanche: slow on a busy machine
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_quiet_run_shows_no_third_party_warning(tmp_path, workers):
    # Avalanche's replay warns (a DeprecationWarning, past the default filters) every megabatch
    suite = _suite(tmp_path, [{"name": "avalanche:replay", "params": {"mem_size": 60}},
                              {"name": "avalanche:er_ace", "params": {"mem_size": 60}}])
    done = subprocess.run([sys.executable, "-m", "alma_bench.cli", "run", str(suite), "--out",
                           str(tmp_path / "o"), "--workers", str(workers), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_alma_cl_smoke_runs_every_strategy(tmp_path):
    out = tmp_path / "o"
    assert main(["run", "alma-cl", "--scale", "smoke", "--out", str(out), "--quiet",
                 "--workers", "1"]) == 0
    runs = {}
    for d in (out / "alma-cl-smoke").iterdir():
        cfg = json.loads((d / "config.json").read_text())
        runs[cfg["label"]] = read_rows(d / "metrics.jsonl")
    assert set(runs) == {"dense", "scratch", "avalanche:replay", "avalanche:ewc",
                         "avalanche:lwf", "app"}
    assert all(len(rows) == 10 for rows in runs.values())
    assert runs["avalanche:replay"][0]["replay_buffer"] > 0
    assert runs["avalanche:ewc"][1]["ewc_penalty"] > 0
    assert runs["app"][-1]["density"] < 1.0


def test_readme_suite_examples_load(tmp_path):
    text = (ROOT / "README.md").read_text()
    own = re.search(r"### Your own suite.*?```yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "own.yaml").write_text(own)
    labels = load_suite(str(tmp_path / "own.yaml")).labels
    assert "avalanche:replay" in labels and "app+avalanche:ewc" in labels
    composed = re.search(r"### Composed strategies.*?```yaml\n(.*?)```", text, re.S).group(1)
    write_suite(tmp_path / "c.yaml", strategies=[])
    (tmp_path / "c.yaml").write_text((tmp_path / "c.yaml").read_text().replace(
        "strategies: []\n", composed))
    assert load_suite(str(tmp_path / "c.yaml")).labels == [
        "app+avalanche:ewc", "app-ewc-grid[app.density=0.2]", "app-ewc-grid[app.density=0.5]"]
