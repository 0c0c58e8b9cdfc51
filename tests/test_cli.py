"""The CLI: listings, dry runs, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import re

import pytest
from conftest import TINY, write_suite

from alma_bench.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_kinds(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and re.search(r"^quickstart\s+\S", out, re.M)
    code, out, _ = run_cli(capsys, "list", "strategies")
    assert re.search(r"^dense\s+Dense warm start", out, re.M)
    code, out, _ = run_cli(capsys, "list", "streams")
    assert re.search(r"^synthetic .*\n\s+n_train=512", out, re.M)


def test_dry_run_prints_runs_without_training(capsys, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", strategies=["dense", "scratch"], seeds=[0, 1])
    code, out, _ = run_cli(capsys, "run", str(suite), "--dry-run", "--out", str(tmp_path / "o"))
    assert code == 0 and "4 runs of suite 'tiny'" in out
    assert not (tmp_path / "o").exists()


def test_quickstart_suite_has_every_builtin_strategy(capsys):
    from alma_bench.registry import STRATEGIES

    code, out, _ = run_cli(capsys, "run", "quickstart", "--dry-run")
    names = set(re.findall(r"'name': '([\w-]+)'", out))
    # rl-schedule trains an agent first: it has its own suite (sparsity-schedules), and so do
    # Avalanche's continual-learning strategies (alma-cl)
    builtin = {n for n in STRATEGIES.names()
               if STRATEGIES.get(n).cls.__module__.startswith("alma_bench.strategies")
               and not n.startswith("avalanche:")}
    assert names == builtin - {"rl-schedule"}
    labels = re.findall(r"^\w+\s+(\S+)\s+seed=", out, re.M)
    assert len(labels) == 3 * len(set(labels))  # 3 seeds each
    assert f"{len(labels)} runs of suite 'quickstart'" in out


BAD = [
    (["run", "quickstrat"], r"unknown suite 'quickstrat'\. Did you mean 'quickstart'\? Valid: "),
    (["run", "quickstart", "--strategies", "dens"],
     r"unknown strategy in this suite 'dens'\. Did you mean 'dense'"),
    (["run", "quickstart", "--scale", "huge"], r"unknown scale 'huge'.*Valid: .*smoke"),
    (["run", "quickstart", "--set", "stream.name=cifar11"],
     r"unknown stream 'cifar11'\. Did you mean 'cifar10'"),
    (["run", "quickstart", "--set", "model.name=resnet"], r"unknown model 'resnet'"),
    (["run", "quickstart", "--set", "protocol.epochs=0"], r"protocol: epochs must be >= 1"),
    (["run", "quickstart", "--set", "protocol.lr=fast"], r"'lr' must be a number, got 'fast'"),
    (["run", "quickstart", "--set", "protocol.epoch=3"],
     r"unknown parameter\(s\) epoch for protocol\. Valid: .*epochs"),
    (["run", "quickstart", "--set", "strem.name=x"], r"unknown suite key 'strem'.*Did you mean"),
    (["run", "quickstart", "--set", "stream.megabatches=0"], r"megabatches must be >= 1"),
    (["run", "quickstart", "--set", "stream.bogus=1"],
     r"unknown stream key\(s\) bogus for stream 'digits'\. Valid: "),
    (["run", "quickstart", "--set", "strategies.osp-snip.density=1.5"],
     r"strategy 'osp': density must be in \[1e-06, 1\], got 1\.5"),
    (["run", "quickstart", "--set", "strategies.app-snip.pruner=snipp"],
     r"unknown pruner 'snipp'\. Valid: magnitude, random, snip"),
    (["run", "quickstart", "--seeds", "a,b"], r"--seeds must be comma-separated integers"),
    (["run", "quickstart", "--device", "tpu"], r"unknown device 'tpu'"),
    (["run", "quickstart", "--plugin", "nope.py"], r"plugin file not found: nope\.py"),
    (["list", "strategies", "--plugin", "nope.py"], r"plugin file not found"),
    (["show", "/nonexistent/results"], r"/nonexistent/results"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[1:3]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, *args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("alma-bench: error: ")
    assert re.search(message, err), err


def test_malformed_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstream: {name: digits\nmodel: [\n")
    code, _, err = run_cli(capsys, "run", str(bad))
    assert code == 2 and re.search(r"malformed suite YAML .*bad\.yaml at line \d+", err)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    code, _, err = run_cli(capsys, "run", str(notmap))
    assert code == 2 and "must be a YAML mapping" in err
    unknown_key = write_suite(tmp_path / "k.yaml", protocl={"epochs": 1})
    code, _, err = run_cli(capsys, "run", str(unknown_key))
    assert code == 2 and "unknown suite key(s) protocl" in err


def test_missing_data_root(capsys, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", stream={
        "name": "imagefolder", "data_root": str(tmp_path / "missing"), "megabatches": 2})
    code, _, err = run_cli(capsys, "run", str(suite), "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and f"data root does not exist: {tmp_path / 'missing'}" in err


def test_strategy_param_override_and_label_errors(capsys, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", strategies=[{"name": "dense"}, {"name": "dense"}])
    code, _, err = run_cli(capsys, "run", str(suite), "--dry-run")
    assert code == 2 and "duplicate strategy label(s) dense" in err
    suite = write_suite(tmp_path / "t.yaml", stream={**TINY["stream"]})
    code, _, err = run_cli(capsys, "run", str(suite), "--set", "strategies.nope.x=1")
    assert code == 2 and "unknown strategy label 'nope'" in err


def test_table_after_run_shows_only_this_config(capsys, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", stream={**TINY["stream"], "megabatches": 2})
    out = str(tmp_path / "o")
    for epochs in (1, 2):
        code, said, _ = run_cli(capsys, "run", str(suite), "--out", out, "--quiet",
                                "--set", f"protocol.epochs={epochs}")
        assert code == 0
        assert re.search(r"^dense\s+1\s", said, re.M), said  # one seed, not two mixed configs


MORE_BAD = [
    (["--set", "stream=digits"], r"suite key 'stream' must be a mapping, got 'digits'"),
    (["--set", "strategies.dense.x=1"], r"unknown parameter\(s\) x for strategy 'dense'"),
    (["--seeds", "-1"], r"--seeds must be a list of integers in \[0, 4294967295\], got \[-1\]"),
    (["--set", "protocol.eval_batch_size=0"], r"eval_batch_size must be >= 1"),
    (["--set", "protocol.weight_decay=-1"], r"weight_decay must be >= 0"),
    (["--set", "stream.megabatches=5000"], r"leave a megabatch with no training sample"),
]


@pytest.mark.parametrize("extra, message", MORE_BAD, ids=[m for _, m in MORE_BAD])
def test_more_bad_input(capsys, tmp_path, extra, message):
    suite = write_suite(tmp_path / "s.yaml", strategies=["dense"])
    code, _, err = run_cli(capsys, "run", str(suite), "--out", str(tmp_path / "o"), "--quiet",
                           *extra)
    assert code == 2 and re.search(message, err), err


def test_small_float_in_yaml_is_a_number(tmp_path):
    from alma_bench.spec.config import load_suite

    suite = write_suite(tmp_path / "s.yaml")
    assert load_suite(str(suite), sets=["protocol.lr=1e-4"]).runs[0].protocol["lr"] == 1e-4


def test_same_run_under_two_labels_is_an_error(capsys, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", strategies=[
        {"name": "app"}, {"name": "app", "label": "app-snip", "params": {"pruner": "snip"}}])
    code, _, err = run_cli(capsys, "run", str(suite), "--dry-run")
    assert code == 2 and "strategies 'app' and 'app-snip' are the same run" in err


def test_pool_shows_the_megabatch_of_each_running_run(tmp_path, tiny_suite, capsys):
    # no --quiet: the runs bar names each run in flight with its megabatch
    assert main(["run", str(tiny_suite), "--seeds", "0,1", "--workers", "2",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"dense s0 mb \d/", err) and re.search(r"dense s1 mb \d/", err), err[-500:]


@pytest.mark.parametrize("quiet", [False, True])
def test_megabatch_bar_starts_where_the_run_resumes(monkeypatch, tmp_path, capsys, quiet):
    # A resumed run's megabatch bar starts at its megabatch (tqdm's ``initial``) instead of
    # counting the megabatches of an earlier invocation as done in no time, which tqdm read as
    # a rate of thousands of megabatches per second; each run gets one bar (also when the bars
    # are disabled, which count nothing).
    import argparse
    from types import SimpleNamespace

    import tqdm

    from alma_bench.execute import commands, executors

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # what it was made with (a disabled bar keeps neither desc nor initial)
            self.made = (kwargs.get("desc", "").strip(), kwargs.get("initial", 0), kwargs["total"])
            bars.append(self)

    a, b = SimpleNamespace(label="a", seed=0), SimpleNamespace(label="b", seed=0)

    def serial(specs, job, on_done=None, on_megabatch=None, on_failed=None, say=None):
        for t in (4, 5, 6):  # run a: 3 of 6 megabatches were done before
            on_megabatch(t, 6, {"test_acc": 0.5, "wall_time": 2.0})
        on_done(a, {"final_test_acc": 0.5})
        for t in (1, 2):  # run b: from the start, then it fails
            on_megabatch(t, 6, {"test_acc": 0.4})
        on_failed(b, executors.Outcome("failed"))
        return []

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    monkeypatch.setattr(executors, "run_serial", serial)
    args = argparse.Namespace(plugin=None, device="cpu", channels_last=False, tensorboard=None,
                              retry_failed=False, wait=True, ray_gpus=None,
                              avalanche_loggers=None, quiet=quiet, executor="local",
                              workers=1, threads=1)
    commands._execute([a, b], args, tmp_path)
    mb = [bar for bar in bars if bar.made[0] == "megabatches"]
    assert [bar.made[1:] for bar in mb] == [(4, 6), (1, 6)]
    if not quiet:
        assert [bar.n for bar in mb] == [6, 2]
        assert "last 2.0s" in capsys.readouterr().err  # the megabatch's own time
