"""Listing strategies imports no Avalanche; the Avalanche-free plugin base keeps its hooks;
``--version``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alma_bench import __version__
from alma_bench.cli import main
from alma_bench.plugin_base import HOOKS


def test_list_strategies_does_not_import_avalanche():
    code = ("import sys\nfrom alma_bench.cli import main\nmain(['list', 'strategies'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "dense" in out and "scratch" in out  # strategies were listed
    assert out.strip().splitlines()[-1] == "[]"


def test_plugin_base_has_avalanches_hooks():
    from avalanche.core import SupervisedPlugin

    theirs = {n for n in dir(SupervisedPlugin) if n.startswith(("before", "after"))}
    assert set(HOOKS) == theirs


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"alma-bench {__version__}\n"
