"""Hostile input (issue 27): every malformed suite, plugin, image folder and results folder is
one line on stderr naming the key or file, with the documented exit code, and nothing is
written outside --out; damaged results folders are repaired; SIGTERM and SIGHUP are Ctrl-C."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, cli_process, write_suite

from alma_bench.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def edited(**over) -> dict:
    """The tiny suite with dotted keys set (``None``: the key deleted)."""
    doc = copy.deepcopy(TINY)
    for key, value in over.items():
        *parents, last = key.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return doc


_DELETE = object()
TAIL = "model: {name: small-cnn, width: 4}\nstrategies: [dense]\n"
STREAM = "stream: {name: synthetic, n_train: 240, n_test: 64, classes: 3, size: 8}\n"
BOMB = "".join(f"x{i + 1}: &x{i + 1} [*x{i}, *x{i}, *x{i}, *x{i}, *x{i}, *x{i}, *x{i}, *x{i}, "
               f"*x{i}]\n  " for i in range(8))

#: (id, suite document or YAML text, extra arguments, what the one line must name)
SUITES = [
    ("scales: 5", edited(scales=5), ["--scale", "smoke"], "suite key 'scales' must be a mapping"),
    ("scales: [smoke]", edited(scales=["smoke"]), ["--scale", "smoke"], "'scales' must be a"),
    ("scales: {smoke: 5}", edited(scales={"smoke": 5}), ["--scale", "smoke"],
     "'scales.smoke' must be a mapping"),
    ("references: 5", edited(references=5), [], "'references' must be a mapping, got 5"),
    ("references: [dense]", edited(references=["dense"]), [], "'references' must be a mapping"),
    ("strategies: [5]", edited(strategies=[5]), [], "'strategies[0]' must be a strategy name"),
    ("strategies: [[dense]]", edited(strategies=[["dense"]]), [], "'strategies[0]' must be"),
    ("--set strategies=[5]", edited(), ["--set", "strategies=[5]"], "'strategies[0]' must be"),
    ("--set strategies=5", edited(), ["--set", "strategies=5", "--set",
                                      "strategies.dense.x=1"], "'strategies' must be a"),
    ("label: 5", edited(strategies=[{"name": "dense", "label": 5}]), [],
     "'strategies[0].label' must be a non-empty string, got 5"),
    ("label: null", edited(strategies=[{"name": "dense", "label": None}]), [],
     "'strategies[0].label' must be a non-empty string, got None"),
    ("label: [a]", edited(strategies=[{"name": "dense", "label": ["a"]}]), [],
     "'strategies[0].label' must be a non-empty string, got ['a']"),
    ("label ANSI", edited(strategies=[{"name": "dense", "label": "\x1b[31mred\x1b[0m"}]), [],
     "'strategies[0].label' must be a string without control characters"),
    ("label NUL", edited(strategies=[{"name": "dense", "label": "a\x00b"}]), [],
     "without control characters"),
    ("label 5000 chars", edited(strategies=[{"name": "dense", "label": "x" * 5000}]), [],
     "'strategies[0].label' must be a string of at most 200 characters"),
    ("grid value ANSI", edited(strategies=[{"name": "osp", "grid": {"pruner": ["\x1b[2J"]}}]),
     [], "unknown pruner '\\x1b[2J'"),  # quoted escaped, never raw
    ("name: 123", edited(name=123), [], "suite key 'name' must be a folder name"),
    ("name: ../../escaped", edited(name="../../escaped"), [], "'../../escaped'"),
    ("name: /abs/path", edited(name="/tmp/alma-bench-escaped"), [], "suite key 'name'"),
    ("--set name=..", edited(), ["--set", "name=.."], "suite key 'name' must be a folder"),
    ("model: {name: {a: 1}}", edited(**{"model.name": {"a": 1}}), [],
     "suite key 'model.name' must be a string"),
    ("stream: {name: [digits]}", edited(**{"stream.name": ["digits"]}), [],
     "suite key 'stream.name' must be a string"),
    ("self alias", f"name: t\n{STREAM}model: {{name: small-cnn}}\nstrategies: &s [dense, *s]\n",
     [], "refers to itself"),
    ("alias bomb", f"name: t\n{STREAM}{TAIL}references:\n  x0: &x0 [1]\n  {BOMB}", [],
     "expands to more than"),
    ("lr: .nan", edited(**{"protocol.lr": math.nan}), [],
     "protocol parameter 'lr' must be a finite number"),
    ("lr: .inf", edited(**{"protocol.lr": math.inf}), [], "'lr' must be a finite number"),
    ("weight_decay: .nan", edited(**{"protocol.weight_decay": math.nan}), [],
     "'weight_decay' must be a finite number"),
    ("stream.seed: -3", edited(**{"stream.seed": -3}), [], "suite key 'stream.seed'"),
    ("stream.seed: abc", edited(**{"stream.seed": "abc"}), [], "suite key 'stream.seed'"),
    ("width: 0", edited(**{"model.width": 0}), [], "model 'small-cnn': width must be in"),
    ("seeds: []", edited(seeds=[]), [], "suite key 'seeds' must be a non-empty list"),
    ("seeds: [0, 0]", edited(seeds=[0, 0]), [], "distinct seeds (0 repeated)"),
    ("--seeds 1,1", edited(), ["--seeds", "1,1"], "--seeds must be a list of distinct"),
    ("density: 1e-300", edited(strategies=[{"name": "osp", "params": {"density": 1e-300}}]),
     [], "strategy 'osp': density must be in [1e-06, 1], got 1e-300"),
    ("app density 1", edited(strategies=[{"name": "app", "params": {"density": 1}}]), [],
     "strategy 'app': density must be <= base (0.8), got 1"),
    ("batch_size: 1e20", edited(**{"protocol.batch_size": 1e20}), [], "'batch_size' must be"),
    ("batch_size: 10**20", edited(**{"protocol.batch_size": 10**20}), [],
     "'batch_size' must be an integer of magnitude at most"),
    ("epochs: 10**20", edited(**{"protocol.epochs": 10**20}), [], "'epochs' must be an integer"),
    ("strategy params: 5", edited(strategies=[{"name": "osp", "params": 5}]), [],
     "'strategies[0].params' must be a mapping"),
    ("document: a list", "[1, 2]\n", [], "must be a YAML mapping"),
]


@pytest.mark.parametrize("doc, extra, named", [s[1:] for s in SUITES], ids=[s[0] for s in SUITES])
def test_bad_suite_is_one_line_exit_2(tmp_path, capsys, monkeypatch, doc, extra, named):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    suite = cwd / "suite.yaml"
    suite.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    before = tree(tmp_path)
    for args in (["--dry-run"], []):  # a real run fails the same way, before any work
        code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "out", "--quiet",
                               "--threads", "1", *extra, *args)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("alma-bench: error: "), err
        assert named in err, err
    assert tree(tmp_path) == before  # nothing written, in --out or outside it
    assert not Path("/tmp/alma-bench-escaped").exists()


def test_yaml_merge_keys_are_accepted(tmp_path, capsys):
    suite = tmp_path / "merge.yaml"
    suite.write_text(textwrap.dedent("""\
        name: merged
        stream: &base {name: synthetic, n_train: 240, n_test: 64, classes: 3, size: 8}
        model: {name: small-cnn, width: 4}
        strategies: [dense]
        scales:
          small:
            stream: {<<: *base, n_train: 120}
        """))
    code, out, err = run_cli(capsys, "run", suite, "--dry-run", "--scale", "small",
                             "--out", tmp_path / "out", "--threads", "1")
    assert code == 0, err
    assert '"n_train": 120' in out and '"classes": 3' in out
    suite.write_text(suite.read_text().replace("n_train: 120}", "n_train: 120, size: 8, "
                                               "size: 4}"))
    code, _, err = run_cli(capsys, "run", suite, "--dry-run", "--out", tmp_path / "out")
    assert code == 2 and "duplicate key 'size'" in err  # beside a merge key: still an error


def test_suite_name_from_an_odd_file_name_stays_under_out(tmp_path, capsys):
    suite = write_suite(tmp_path / "..odd name;.yaml", name=None)
    code, out, _ = run_cli(capsys, "run", suite, "--dry-run", "--out", tmp_path / "out",
                           "--threads", "1")
    assert code == 0
    assert f"results in {tmp_path / 'out' / 'odd-name-'}" in out


def test_a_large_grid_dry_run_is_fast(tmp_path, capsys):
    """A 10,000-point grid: the plan was a minute and 1.4 GB (a deep copy of the suite and a
    type-hint evaluation per point)."""
    suite = write_suite(tmp_path / "grid.yaml", grid={
        "protocol.lr": [round(0.001 * (i + 1), 4) for i in range(100)],
        "protocol.momentum": [round(0.005 * i, 4) for i in range(100)]})
    start = time.perf_counter()
    code, out, _ = run_cli(capsys, "run", suite, "--dry-run", "--out", tmp_path / "out")
    took = time.perf_counter() - start
    assert code == 0 and "10000 runs of suite 'tiny'" in out
    assert took < 120, took  # 10 s on 2 cores beside other work (was 61 s before issue 27)


# --- plugins ---------------------------------------------------------------------------------

PLUGINS = {
    "raises": ("raise RuntimeError('boom')\n", "failed to load: RuntimeError: boom"),
    "syntax": ("def broken(:\n", "failed to load: SyntaxError"),
    "missing import": ("import no_such_module_for_alma\n",
                       "failed to load: ModuleNotFoundError: No module named"),
    "registers dense": (textwrap.dedent("""\
        from dataclasses import dataclass
        from alma_bench import register_strategy

        @register_strategy("dense")
        @dataclass(frozen=True)
        class Mine:
            def plugins(self, ctx): return []
        """), "duplicate strategy name 'dense': already registered by alma_bench.strategies"),
    "registers a name twice": (textwrap.dedent("""\
        from dataclasses import dataclass
        from alma_bench import register_strategy

        @register_strategy("hostile-twice")
        @dataclass(frozen=True)
        class A:
            def plugins(self, ctx): return []

        @register_strategy("hostile-twice")
        @dataclass(frozen=True)
        class B:
            def plugins(self, ctx): return []
        """), "duplicate strategy name 'hostile-twice'"),
}


@pytest.mark.parametrize("source, named", PLUGINS.values(), ids=PLUGINS)
def test_broken_plugin_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, source, named):
    monkeypatch.chdir(tmp_path)
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    suite = write_suite(tmp_path / "tiny.yaml")
    before = tree(tmp_path)
    for args in (["list", "strategies"], ["run", suite, "--dry-run", "--out", tmp_path / "o"]):
        code, _, err = run_cli(capsys, *args, "--plugin", plugin)
        assert code == 2, err
        assert err.count("\n") == 1 and f"plugin file {plugin} failed to load" in err, err
        assert named in err, err
    assert tree(tmp_path) - before <= {"__pycache__"} | {
        p for p in tree(tmp_path) if p.startswith("__pycache__")}


def test_two_plugin_files_of_one_name_both_load(tmp_path, capsys):
    for folder, name in (("a", "hostile-from-a"), ("b", "hostile-from-b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(textwrap.dedent(f"""\
            from dataclasses import dataclass
            from alma_bench import register_strategy

            @register_strategy("{name}")
            @dataclass(frozen=True)
            class S:
                '''From folder {folder}.'''
                def plugins(self, ctx): return []
            """))
    code, out, _ = run_cli(capsys, "list", "strategies", "--plugin", tmp_path / "a/plugin.py",
                           "--plugin", tmp_path / "b/plugin.py")
    assert code == 0
    assert "hostile-from-a" in out and "hostile-from-b" in out


def test_broken_entry_point_breaks_only_what_uses_it(tmp_path):
    """An installed package whose entry point names a missing module: one warning line naming
    it; suites that do not use it run; naming its component says why it is missing."""
    dist = tmp_path / "site" / "broken_alma_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-alma-plugin\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[alma_bench.strategies]\n"
                                           "broken = no_such_module_for_alma\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    suite = write_suite(tmp_path / "tiny.yaml")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "alma_bench.cli", *map(str, args)],
                              env=env, capture_output=True, text=True, timeout=120)

    listed = cli("list", "strategies")
    assert listed.returncode == 0 and "dense" in listed.stdout, listed.stderr
    line = ("alma_bench.strategies entry point 'broken = no_such_module_for_alma' failed to "
            "load: ModuleNotFoundError")
    assert line in listed.stderr and listed.stderr.count(line) == 1
    dry = cli("run", suite, "--dry-run", "--out", tmp_path / "out", "--threads", "1")
    assert dry.returncode == 0, dry.stderr
    bad = write_suite(tmp_path / "bad.yaml", strategies=["mine"])
    used = cli("run", bad, "--dry-run", "--out", tmp_path / "out")
    assert used.returncode == 2 and used.stderr.count("\n") == 1
    assert "unknown strategy 'mine'" in used.stderr and line in used.stderr


# --- image folders ---------------------------------------------------------------------------


def _png(path: Path, value: int = 0, size: int = 8) -> None:
    import torch
    from torchvision.io import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(torch.full((3, size, size), value, dtype=torch.uint8)).numpy()
                     .tobytes())


def _image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                _png(root / split / c / f"{i}.png", value=40 * i + (c == "b") * 100)
    return root


def _zero_byte(root):
    (root / "train/a/zero.jpg").write_bytes(b"")
    return root / "train/a/zero.jpg"


def _truncated(root):
    data = (root / "train/b/0.png").read_bytes()
    (root / "test/b/cut.png").write_bytes(data[: len(data) // 2])
    return root / "test/b/cut.png"


def _empty_class(root):
    (root / "train/c").mkdir()
    return root / "train/c"


def _test_only_class(root):
    _png(root / "test/d/0.png")
    return "test has class folder(s) d that"


def _empty_train_class_scored(root):
    (root / "test/e").mkdir()
    _png(root / "test/e/0.png")
    (root / "train/e").mkdir()
    return root / "train/e"


def _empty_test(root):
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    return root / "test"


def _other_size(root):
    _png(root / "train/b/big.png", size=16)
    return root / "train/b/big.png"


IMAGE_CASES = {"0-byte jpeg": _zero_byte, "truncated png": _truncated,
               "empty class folder": _empty_class, "test class train lacks": _test_only_class,
               "test class empty in train": _empty_train_class_scored, "empty test/": _empty_test,
               "image of another size": _other_size}


@pytest.mark.parametrize("damage", IMAGE_CASES.values(), ids=IMAGE_CASES)
def test_bad_image_folder_is_one_line_naming_the_file(tmp_path, capsys, damage):
    root = _image_root(tmp_path)
    named = str(damage(root))
    suite = write_suite(tmp_path / "img.yaml", stream={
        "name": "imagefolder", "data_root": str(root), "megabatches": 2})
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "out", "--quiet")
    assert code == 2, err
    assert err.count("\n") == 1 and named.replace(str(root) + "/", "") in err, err
    assert named in err or named.startswith("test has"), err
    assert {p for p in tree(tmp_path) - before if not p.startswith("out")} == set()


def test_good_image_folder_trains(tmp_path, capsys):
    root = _image_root(tmp_path)
    suite = write_suite(tmp_path / "img.yaml", stream={
        "name": "imagefolder", "data_root": str(root), "megabatches": 2}, seeds=[0])
    code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "out", "--quiet",
                           "--threads", "1")
    assert code == 0, err


# --- results folders -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder with one finished run of the tiny suite (copied by each test)."""
    base = tmp_path_factory.mktemp("finished")
    suite = write_suite(base / "tiny.yaml")
    code = main(["run", str(suite), "--out", str(base / "out"), "--quiet", "--threads", "1"])
    assert code == 0
    return base


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(finished, tmp_path / "r")
    suite, out = tmp_path / "r" / "tiny.yaml", tmp_path / "r" / "out"
    return suite, out


def _run_dir(out: Path) -> Path:
    (run,) = (out / "tiny").iterdir()
    return run


@pytest.mark.parametrize("damage", ["deleted", "garbage", "another run's"])
def test_finished_run_with_damaged_config_is_repaired(finished, tmp_path, capsys, damage):
    suite, out = _copy(finished, tmp_path)
    run = _run_dir(out)
    rows = (run / "metrics.jsonl").read_text()
    good = json.loads((run / "config.json").read_text())
    if damage == "deleted":
        (run / "config.json").unlink()
    elif damage == "garbage":
        (run / "config.json").write_text("{not json")
    else:
        (run / "config.json").write_text(json.dumps({**good, "run_id": "0" * 12}))
    code, out_text, err = run_cli(capsys, "run", suite, "--out", out, "--quiet",
                                  "--threads", "1")
    assert code == 0, err
    assert "config.json is missing or damaged" in err  # one line saying what was repaired
    repaired = json.loads((run / "config.json").read_text())
    assert repaired["run_id"] == good["run_id"] == run.name
    assert (run / "metrics.jsonl").read_text() == rows  # no megabatch trained again
    code, shown, _ = run_cli(capsys, "show", out / "tiny")
    assert code == 0 and "dense" in shown


def test_show_names_a_run_with_a_damaged_config(finished, tmp_path, capsys):
    _, out = _copy(finished, tmp_path)
    (_run_dir(out) / "config.json").write_text("garbage")
    code, _, err = run_cli(capsys, "show", out / "tiny")
    assert code == 2 and err.count("\n") == 1 and "repairs a run" in err, err


def test_unrelated_config_json_is_not_a_row(finished, tmp_path, capsys):
    _, out = _copy(finished, tmp_path)
    (out / "tiny" / "notes").mkdir()
    (out / "tiny" / "notes" / "config.json").write_text(json.dumps({"lr": 0.1}))
    (out / "config.json").write_text("{}")
    from alma_bench.analysis.results import load

    res = load(out)
    assert len(res.runs) == 1 and res.runs["label"].tolist() == ["dense"]


def test_deleted_summary_is_recomputed_when_read(finished, tmp_path, capsys):
    _, out = _copy(finished, tmp_path)
    run = _run_dir(out)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    from alma_bench.analysis.results import load

    with pytest.warns(UserWarning, match="recomputed from metrics.jsonl"):
        res = load(out)
    assert res.runs["final_test_acc"].tolist() == [summary["final_test_acc"]]
    assert res.runs["cer"].tolist() == [summary["cer"]]


# --- signals and TensorBoard -----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_are_like_ctrl_c(tmp_path, sig):
    suite = write_suite(tmp_path / "tiny.yaml", strategies=["slow-dense"],
                        protocol={**TINY["protocol"], "epochs": 30})
    out = tmp_path / "out"
    proc = cli_process("run", str(suite), "--out", str(out), "--quiet", "--threads", "1",
                       "--workers", "1", "--plugin", str(ROOT / "tests/plugins/slow.py"))
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("tiny/*/status.json")):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert f"interrupted by {sig.name}" in err and "run again: alma-bench run" in err, err
    assert not list(out.rglob("run.lock"))
    assert not list(out.rglob("*.tmp*"))


def test_tensorboard_problem_never_fails_the_run(tmp_path, capsys):
    suite = write_suite(tmp_path / "tiny.yaml")
    (tmp_path / "tb").write_text("a file where the log folder should be")
    code, _, err = run_cli(capsys, "run", suite, "--out", tmp_path / "out", "--quiet",
                           "--threads", "1", "--tensorboard", tmp_path / "tb")
    assert code == 0, err
    assert "TensorBoard logging is off for this run" in err
    status = json.loads(next((tmp_path / "out").glob("tiny/*/status.json")).read_text())
    assert status["state"] == "done"


def test_renamed_label_shows_the_new_label(finished, tmp_path, capsys):
    suite, out = _copy(finished, tmp_path)
    write_suite(suite, strategies=[{"name": "dense", "label": "warm-start"}])
    code, shown, err = run_cli(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 0 and "already done" in shown, err
    assert "warm-start" in shown
    assert json.loads((_run_dir(out) / "config.json").read_text())["label"] == "warm-start"
