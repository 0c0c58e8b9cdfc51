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
     r"strategy 'osp': density must be in \(0, 1\], got 1\.5"),
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
    (["--set", "stream=digits"], r"suite section 'stream' must be a mapping"),
    (["--set", "strategies.dense.x=1"], r"unknown parameter\(s\) x for strategy 'dense'"),
    (["--seeds", "-1"], r"seeds must be a list of non-negative integers"),
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
    from alma_bench.config import load_suite

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
