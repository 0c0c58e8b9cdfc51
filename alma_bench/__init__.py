"""alma-bench: a benchmark suite for anytime learning at macroscale (ALMA).

The package is organised by stage (docs/architecture.md): ``spec`` (what to run), ``store``
(how a run's files are kept), ``run`` (one run), ``execute`` (where runs execute),
``analysis`` (reading results), ``perf`` (measuring speed).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from alma_bench.registry import MODELS, PRUNERS, SCHEDULES, STRATEGIES, STREAMS

__version__ = "0.1.0"

register_strategy = STRATEGIES.register
register_stream = STREAMS.register
register_model = MODELS.register

__all__ = ["MODELS", "PRUNERS", "SCHEDULES", "STRATEGIES", "STREAMS", "__version__",
           "make_benchmark", "register_model", "register_stream", "register_strategy",
           "run_suite", "trained_weights"]

#: Modules that moved when the package was organised by stage (issue 25): old path -> new.
#: A plugin or notebook written against an old path (``from alma_bench.models import
#: build_model``, ``alma_bench.results.load``, ``from alma_bench.config import derive``) gets
#: the very same module; nothing is imported until such a path is.
MOVED = {f"alma_bench.{old}": f"alma_bench.{new}" for old, new in {
    "config": "spec.config", "grid": "spec.grid", "compose": "spec.compose",
    "plan": "execute.plan", "executors": "execute.executors", "cost": "execute.cost",
    "runner": "run.runner", "training": "run.training", "stream": "run.stream",
    "data": "run.data", "models": "run.models", "metrics": "run.metrics",
    "finite": "run.finite", "tally": "run.tally", "provenance": "run.provenance",
    "memory": "run.memory", "timing": "run.timing", "benchmark": "run.benchmark",
    "cl_plugins": "run.cl_plugins", "avalanche_logs": "run.avalanche_logs",
    "plugin_base": "run.plugin_base", "tb": "run.tb", "locks": "store.locks",
    "results": "analysis.results", "groups": "analysis.groups", "tables": "analysis.tables",
    "compare": "analysis.compare", "report": "analysis.report", "perf_bare": "perf.bare",
    "perf_run": "perf.runs",
}.items()}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path (``MOVED``) as the module at its new path."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str):
    # imported on first use: building a benchmark imports Avalanche (seconds), and
    # ``import alma_bench`` must stay cheap for listing and validating suites
    if name == "make_benchmark":
        from alma_bench.run.benchmark import make_benchmark

        return make_benchmark
    if name in ("run_suite", "trained_weights"):  # the Python API (docs/python-api.md)
        from alma_bench.execute import api

        return getattr(api, name)
    raise AttributeError(f"module 'alma_bench' has no attribute {name!r}")
