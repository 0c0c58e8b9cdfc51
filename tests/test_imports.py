"""What each command imports: listing strategies no Avalanche, ``list``, ``show`` and
``compare`` no torch, a run nothing its strategy does not need (start-up: issue 16); the
Avalanche-free plugin base keeps its hooks; ``--version``. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fake_results import write_run

from alma_bench import __version__
from alma_bench.cli import main
from alma_bench.run.plugin_base import HOOKS


def test_list_strategies_does_not_import_avalanche():
    code = ("import sys\nfrom alma_bench.cli import main\nmain(['list', 'strategies'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "dense" in out and "scratch" in out  # strategies were listed
    assert out.strip().splitlines()[-1] == "[]"



def _modules_after(code: str, wanted) -> list[str]:
    """Which of ``wanted`` (top-level names or dotted modules) a fresh interpreter has loaded
    after running ``code``."""
    code += f"\nprint(sorted(m for m in {sorted(wanted)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True,
                         text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def test_commands_that_train_nothing_import_no_torch(tmp_path):
    suite = tmp_path / "s"
    for seed in (0, 1):
        write_run(suite, "dense", seed, 0.9 + seed / 100)
        write_run(suite, "scratch", seed, 0.8 + seed / 100, strategy="scratch")
    code = ("import contextlib, io\nfrom alma_bench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    for args in (['list'], ['show', {str(suite)!r}], ['compare', {str(suite)!r}]):\n"
            "        assert main(args) == 0, args\n")
    # scipy.stats: compare takes its t quantile from scipy.special, which loads faster
    heavy = ("torch", "avalanche", "torchvision", "scipy.stats", "matplotlib", "seaborn")
    assert _modules_after(code, heavy) == []


def test_a_dense_run_imports_no_extra(tmp_path):
    # What a worker imports for a plain dense run on the digits stream, up to the training
    # loop (alma_bench.run.training adds Avalanche, whose own imports are not alma-bench's to
    # choose: it needs benchmark, config, data, sparsity.masks and stream, imported here).
    code = ("import alma_bench.execute.executors, alma_bench.run.runner, alma_bench.run.benchmark\n"
            "import alma_bench.sparsity.masks, alma_bench.streams\n"
            "from alma_bench import compose\nfrom alma_bench.registry import MODELS, STREAMS\n"
            "compose.create('dense', {})\nSTREAMS.create('digits')\n"
            "MODELS.create('small-cnn', width=16)\n")
    extras = ("avalanche", "torchvision", "pandas", "seaborn", "matplotlib", "scipy.stats",
              "sklearn", "tensorboard", "gymnasium", "stable_baselines3", "sb3_contrib", "ray",
              "alma_bench.run.cl_plugins", "alma_bench.run.tb", "alma_bench.analysis.report",
              "alma_bench.analysis.results", "alma_bench.analysis.figures", "alma_bench.rl.env",
              "alma_bench.rl.agent")
    assert _modules_after(code, extras) == []


def test_report_reads_torchs_version_without_torch():
    import torch

    from alma_bench.analysis.report import _torch_version

    assert _torch_version() == torch.__version__


def test_plugin_base_has_avalanches_hooks():
    from avalanche.core import SupervisedPlugin

    theirs = {n for n in dir(SupervisedPlugin) if n.startswith(("before", "after"))}
    assert set(HOOKS) == theirs


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"alma-bench {__version__}\n"


def test_old_module_paths_import_as_the_moved_modules():
    # issue 25 moved every module into its stage's package; a plugin or notebook written
    # against an old path gets the very same module (alma_bench.MOVED)
    import importlib

    import alma_bench

    for old, new in alma_bench.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from alma_bench.models import build_model
    from alma_bench.run.models import build_model as moved
    from alma_bench.store import RunDir, read_json
    from alma_bench.store.files import read_json as files_read_json
    from alma_bench.store.rundir import RunDir as rundir_RunDir

    assert build_model is moved and RunDir is rundir_RunDir and read_json is files_read_json
    assert alma_bench.results.load is importlib.import_module("alma_bench.analysis.results").load
