"""The Python API: what ``alma-bench run`` does, from a notebook or a script.

    import alma_bench
    runs = alma_bench.run_suite("quickstart", scale="smoke", seeds=[0],
                                strategies=["dense", "app-snip"], out="results")
    runs[["label", "seed", "final_test_acc", "final_density"]]
    weights = alma_bench.trained_weights(runs.loc[0, "path"])   # a plain model's state_dict

``run_suite`` takes what the command line takes (a shipped suite's name or a YAML path,
``--set``/``--grid`` edits, labels, seeds, plugin files, threads, workers, device,
``rerun``), trains what is not done yet, exactly as ``alma-bench run`` would (the same run
ids, folders and reuse), and returns the invocation's runs as ``results.load(...).runs``
rows: a pandas frame, one row per run. A run that fails raises ``RuntimeError`` naming it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alma_bench.errors import UserError


def run_suite(suite: str | Path, *, scale: str | None = None,
              sets: Mapping[str, Any] | Iterable[str] = (),
              grid: Mapping[str, list] | None = None, strategies: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, out: str | Path = "results",
              plugins: Iterable[str | Path] = (), threads: int | str = "auto",
              workers: int | None = None, device: str = "auto", rerun: str | None = None,
              quiet: bool = True, **options: Any):
    """Run a suite (a shipped name or a suite file) and return its runs as a pandas frame.

    ``sets``: ``{"protocol.epochs": 2}`` or ``["protocol.epochs=2"]`` (``--set``); ``grid``:
    ``{"strategies.app-snip.density": [0.1, 0.2]}`` (``--grid``); ``strategies``: labels to
    run; ``rerun``: ``"LABEL,LABEL"`` or ``"all"`` (``--rerun``). Other keyword arguments are
    the command's remaining options by their Python names (``retry_failed=True``,
    ``tensorboard="tb"``, ``channels_last=True``, ``executor="ray"``...). The frame holds the
    invocation's runs only, in table order, with every summary field and a ``path`` column."""
    from alma_bench.analysis.results import load
    from alma_bench.execute.commands import cmd_run
    from alma_bench.execute.options import add_cluster_options
    from alma_bench.execute.plan import plan
    from alma_bench.registry import load_plugin_file

    labels = strategies.split(",") if isinstance(strategies, str) else (
        list(strategies) if strategies else None)
    seeds = [int(x) for x in seeds.split(",")] if isinstance(seeds, str) else (
        None if seeds is None else list(seeds))
    plugins = [str(p) for p in plugins]
    for p in plugins:
        load_plugin_file(p)
    edits = ([f"{k}={json.dumps(v)}" for k, v in sets.items()] if isinstance(sets, Mapping)
             else list(sets))  # JSON is YAML: --set parses the value as YAML
    for key, values in (grid or {}).items():
        if not isinstance(values, list):
            raise UserError(f"grid {key}: a list of values, got {values!r}")
        edits.append(f"grid.{key}={json.dumps(values)}")  # as --grid KEY=[...]
    # the runs of this invocation, planned as the command plans them (same ids)
    resolved = plan(str(suite), scale, edits, labels, seeds, threads=threads)
    # the cluster options' defaults from their own parser group, so options= may set them
    cluster = argparse.ArgumentParser(add_help=False)
    add_cluster_options(cluster)
    args = argparse.Namespace(
        **vars(cluster.parse_args([])), suite=str(suite), scale=scale, sets=edits,
        seeds=_csv(seeds),
        strategies=_csv(labels), out=str(out), plugin=plugins or None, device=device,
        workers=workers, executor="local", ray_address=None, ray_gpus=None,
        retry_failed=False, wait=True, threads=threads, channels_last=False, tensorboard=None,
        avalanche_loggers=None, dry_run=False, quiet=quiet, rerun=rerun)
    for key, value in options.items():
        if not hasattr(args, key) or key in ("func", "command"):
            raise TypeError(f"run_suite() got an unexpected keyword argument '{key}'")
        setattr(args, key, value)
    code = cmd_run(args)
    if code != 0:
        raise RuntimeError(f"some runs of suite '{resolved.name}' did not finish (exit code "
                           f"{code}); their errors are above")
    ids = {s.run_id for s in resolved.runs}
    folder = Path(out) / resolved.runs[0].results_name
    runs = load(folder).runs
    return runs[runs["run_id"].isin(ids)].reset_index(drop=True)


def trained_weights(run_dir: str | Path) -> dict:
    """A finished (or interrupted) run's model after its last megabatch, as a plain model's
    ``state_dict``: masks folded into the weights and the ``weight_mask`` buffers dropped
    (:func:`alma_bench.sparsity.masks.plain_state_dict`), so it loads with ``strict=True``
    into ``build_model(config["model"], input_shape, num_classes)``."""
    from alma_bench.sparsity.masks import plain_state_dict
    from alma_bench.store.files import load_checkpoint

    path = Path(run_dir) / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    if not ckpt or "model" not in ckpt:
        raise UserError(f"no readable checkpoint in '{run_dir}' (a run saves one per megabatch)")
    return plain_state_dict(ckpt["model"])


def _csv(values) -> str | None:
    if values is None:
        return None
    if isinstance(values, str):
        return values
    return ",".join(str(v) for v in values)
