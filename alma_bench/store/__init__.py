"""How a run's files are kept: crash-safe writes (files), a run's directory and its state
(rundir), and the lock of a run being trained (locks) (docs/architecture.md).

``from alma_bench.store import RunDir, read_json`` (the path before issue 25) still works: a
name is looked up in rundir, then files, on first use, so importing the package is free.
"""


def __getattr__(name: str):
    import importlib

    for module in ("alma_bench.store.rundir", "alma_bench.store.files"):
        mod = importlib.import_module(module)
        if not name.startswith("__") and hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module 'alma_bench.store' has no attribute {name!r}")
