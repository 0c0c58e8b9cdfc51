"""Load a result store into pandas.

The runner writes one directory per run (``config.json``, ``metrics.jsonl``, ``summary.json``,
``status.json``) under ``RESULTS_DIR/<suite>/<run-id>/``. From a notebook::

    from alma_bench.analysis.results import load, summary_table
    res = load("results/")            # a parent of suites, one suite, or one run directory
    res = load(["a/", "b/"])          # several folders: a run found twice counts once
    res.runs                          # one row per run
    res.metrics                       # one row per (run, megabatch)
    res.layer_density                 # long form: one row per (run, megabatch, layer)
    res.schedule                      # a learned schedule's decisions (run, step, layer)
    summary_table(res.runs)           # mean and std over seeds per group

A *group* is the runs of one suite and label whose resolved configs are equal except for the
seed (alma_bench/analysis/groups.py): only those are averaged. Every frame carries ``group`` and
``group_label`` (the label, suffixed by the config keys that differ when a label has several
configs, e.g. ``dense [protocol.lr=0.001]``); ``runs`` also has one column per config key that
varies (``protocol.lr``, ``strategy.params.density``, ``config.threads``).

A run is found by its ``config.json`` wherever it is under the folders given, through
symbolic links too; the same run (one suite and run id) found in several places, a copy or a
link, is loaded once: its most complete copy (done, then the most megabatches).

A numeric value a strategy adds to its metrics rows (a plugin's ``metrics()``, e.g.
``conv_density``) is also a column of ``runs``: its value in the run's last row, so ``show
--metrics``, ``compare --metric`` and the report take it like any summary field
(``Results.row_metrics`` lists them).

Anything a run did not record (an unfinished run, a strategy without layer densities) is NaN,
never an error.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from alma_bench.analysis.groups import assign_groups, base_label, config_key, dump, varying_columns
from alma_bench.errors import UserError

#: Fields of summary.json; always present as columns of ``Results.runs`` (NaN when missing).
SUMMARY_FIELDS = (
    "final_test_acc", "cer", "cer_count", "mean_gen_gap", "final_gen_gap",
    "final_density", "nonzero_params", "flops_effective", "wall_time",
)
#: Fields of a metrics row; always present as columns of ``Results.metrics``.
METRIC_FIELDS = (
    "megabatch", "step", "samples_seen", "test_acc", "val_acc", "train_acc", "test_errors",
    "gen_gap", "density", "nonzero_params", "flops_dense", "flops_effective", "train_flops",
    "wall_time",
)
#: Metrics that ``summary_table`` aggregates over seeds.
TABLE_METRICS = (
    "final_test_acc", "cer", "cer_count", "final_gen_gap", "final_density",
    "flops_effective", "wall_time",
)
RUN_COLUMNS = (
    "run_id", "suite", "scale", "label", "group", "group_label", "strategy", "seed", "state",
    "megabatches_done", "n_megabatches", "path", "config",
)
JOIN_COLUMNS = ("suite", "run_id", "label", "group", "group_label", "seed")
#: Row fields the harness writes itself; any other numeric row field is a strategy's metric.
HARNESS_ROW_FIELDS = METRIC_FIELDS + (
    "train_size", "epoch_gap", "epochs_trained", "best_epoch", "epoch_train_acc",
    "epoch_val_acc", "layer_density", "density_over", "dense_layers",
)
LAYER_COLUMNS = JOIN_COLUMNS + ("megabatch", "layer", "density")
SCHEDULE_COLUMNS = JOIN_COLUMNS + ("megabatch", "decision", "step", "layer", "density")


@dataclass
class Results:
    """A loaded result store.

    ``runs``: one row per run (RUN_COLUMNS, every summary.json field, ``ref_<metric>`` from the
    config's paper reference, one column per varying config key; ``config`` is the run's
    config key as JSON), in the suite's order (shipped suites) or the order runs started.
    ``metrics``: one row per (run, megabatch) with JOIN_COLUMNS joined; ``layer_density``
    stays a dict column there. ``layer_density``: long form (LAYER_COLUMNS). ``schedule``: the
    per-layer target densities a learned schedule chose (``rl_schedule`` rows), one row per
    (run, decision, layer) (SCHEDULE_COLUMNS); empty without such runs.
    ``configs``: the full config.json of each run, keyed by run_id.
    """

    runs: pd.DataFrame
    metrics: pd.DataFrame
    layer_density: pd.DataFrame
    configs: dict[str, dict] = field(default_factory=dict)
    schedule: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=list(SCHEDULE_COLUMNS)))
    #: numeric fields strategies added to their rows, as columns of ``runs`` (last row's value)
    row_metrics: list[str] = field(default_factory=list)


def load(path: str | Path | Sequence[str | Path]) -> Results:
    """Load every run under ``path``, one folder or a list of folders (a run directory is any
    directory holding config.json; symbolic links are followed). A run found more than once
    (the same suite and run id) is loaded once, from its most complete copy."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise UserError("no results folder given")
    run_dirs: list[Path] = []
    for p in paths:
        root = Path(p).expanduser()
        if not root.exists():
            raise UserError(f"results path '{root}' does not exist")
        found = _find_runs(root)
        if not found:
            raise UserError(f"no runs under '{root}' (no directory holds a config.json)")
        run_dirs += found
    configs = {d: c for d in run_dirs if (c := _run_config(d)) is not None}
    if not configs:
        raise UserError(f"no readable runs under {', '.join(map(str, paths))} (`alma-bench "
                        "run` with their suite repairs a run whose config.json is damaged)")
    configs = _once(configs)
    # a dependency is identified by its own config key, not by its seed-specific run id
    dep_keys = {str(c.get("run_id") or d.name): dump(config_key(c)) for d, c in configs.items()}
    runs, metric_rows, layer_rows, decision_rows, by_id = [], [], [], [], {}
    row_metrics: dict[str, None] = {}
    for run_dir, config in configs.items():
        run, rows = _load_run(run_dir, config)
        for key, value in (rows[-1] if rows else {}).items():
            if (key not in HARNESS_ROW_FIELDS and key not in run
                    and isinstance(value, (int, float)) and not isinstance(value, bool)):
                row_metrics[key] = None
        if rows:
            run.update({k: rows[-1].get(k, math.nan) for k in row_metrics if k not in run})
        run["config"] = dump(config_key(config, dep_keys))
        run["_started"] = _mtime(run_dir / "config.json")
        runs.append(run)
        by_id[run["run_id"]] = config
        for row in rows:
            layers = row.get("layer_density")
            layers = layers if isinstance(layers, dict) else {}
            metric_rows.append({"_run": len(runs) - 1, **row, "layer_density": layers})
            layer_rows += [{"_run": len(runs) - 1, "megabatch": row.get("megabatch"),
                            "layer": name, "density": value} for name, value in layers.items()]
            decisions = row.get("rl_schedule")
            for k, d in enumerate(decisions if isinstance(decisions, list) else []):
                decision_rows += [{"_run": len(runs) - 1, "megabatch": row.get("megabatch"),
                                   "decision": k, "step": d.get("step"), "layer": name,
                                   "density": value}
                                  for name, value in (d.get("targets") or {}).items()]
    runs_df = _order(assign_groups(_numeric(_with_columns(pd.DataFrame(runs), RUN_COLUMNS
                                                          + SUMMARY_FIELDS))))
    position = {i: n for n, i in enumerate(runs_df.pop("_index"))}
    join = runs_df[list(JOIN_COLUMNS)]
    metrics = _joined(metric_rows, join, position, METRIC_FIELDS + ("layer_density",))
    # A resumed run may re-append the row of a megabatch it redid: the last one is the truth.
    metrics = metrics.drop_duplicates(["suite", "run_id", "megabatch"], keep="last")
    layers = _joined(layer_rows, join, position, LAYER_COLUMNS[len(JOIN_COLUMNS):])
    layers = layers.drop_duplicates(["suite", "run_id", "megabatch", "layer"], keep="last")
    schedule = _joined(decision_rows, join, position, SCHEDULE_COLUMNS[len(JOIN_COLUMNS):])
    schedule = schedule.drop_duplicates(["suite", "run_id", "megabatch", "decision", "layer"],
                                        keep="last")
    return Results(runs=runs_df.drop(columns="_started"), metrics=metrics,
                   layer_density=layers, configs=by_id, schedule=schedule,
                   row_metrics=list(row_metrics))


def _once(configs: dict[Path, dict]) -> dict[Path, dict]:
    """One directory per run (suite and run id): a run copied or linked into several folders
    is one run, read from its most complete copy (done, then the most megabatches)."""
    best: dict[tuple, Path] = {}
    for d, c in configs.items():
        key = (str(c.get("suite") or d.parent.name), str(c.get("scale")),
               str(c.get("run_id") or d.name))
        if key not in best or _completeness(d) > _completeness(best[key]):
            best[key] = d
    keep = set(best.values())
    return {d: c for d, c in configs.items() if d in keep}


def _completeness(run_dir: Path) -> tuple[bool, int]:
    status = _read_json(run_dir / "status.json") or {}
    done = status.get("state") == "done" or (run_dir / "summary.json").is_file()
    n = status.get("megabatches_done")
    return done, n if isinstance(n, int) else 0


def _joined(rows: list[dict], join: pd.DataFrame, position: dict[int, int],
            columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows tagged ``_run`` (index into the loaded runs) with the run's JOIN_COLUMNS, in run
    order, then megabatch order."""
    df = pd.DataFrame(rows) if rows else pd.DataFrame({"_run": []})
    pos = df["_run"].map(position)
    df = pd.concat([join.iloc[pos.to_numpy()].reset_index(drop=True),
                    df.drop(columns="_run").reset_index(drop=True)], axis=1)
    df = _numeric(_with_columns(df, JOIN_COLUMNS + columns))
    df["_pos"] = pos.to_numpy()
    return (df.sort_values(["_pos", "megabatch"], kind="stable").drop(columns="_pos")
            .reset_index(drop=True))


def _order(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs in table order: suite by name; then the suite's own strategy order when it is a
    shipped suite, else the order labels first started (config.json written at a run's
    start); a grid's expansions stay under their entry, in the order they started; seed."""
    runs = runs.reset_index(drop=True)
    base = runs["label"].map(base_label)
    started = pd.to_numeric(runs["_started"], errors="coerce")
    rank = [_suite_order(str(s)).get(b, math.inf) for s, b in zip(runs["suite"], base)]
    keys = pd.DataFrame({
        "suite": runs["suite"].astype(str), "rank": rank,
        "base_start": started.groupby([runs["suite"], base]).transform("min"), "base": base,
        "group_start": started.groupby([runs["suite"], runs["group"]]).transform("min"),
        "group_label": runs["group_label"].astype(str), "seed": runs["seed"]})
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return runs.loc[order].rename_axis("_index").reset_index()


@functools.cache
def _suite_order(suite: str) -> dict[str, int]:
    """Entry label -> position in the shipped suite of that name (empty if none)."""
    if not re.fullmatch(r"[\w.-]+", suite):
        return {}
    try:
        raw = yaml.safe_load((resources.files("alma_bench") / "suites" / f"{suite}.yaml")
                             .read_text())
        entries = raw.get("strategies") or []
        labels = [e if isinstance(e, str) else e.get("label", e.get("name")) for e in entries]
    except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError):
        return {}  # not a shipped suite, or one this loader cannot read: start order instead
    return {str(lb): i for i, lb in enumerate(labels)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return math.nan


def summary_table(runs: pd.DataFrame, metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Per group: mean and sample std (ddof=1) over seeds of ``metrics``.

    A group is one suite, label and config except the seed (groups are re-derived from the
    ``config`` column of ``runs``, so a filtered frame is labelled for what it holds); nothing
    is averaged across groups. Columns: suite, group, group_label, label, strategy, one per
    config key that varies between the groups, n_seeds (runs with a final test accuracy, i.e.
    finished), n_runs (all runs found), ``<metric>_mean``, ``<metric>_std``, and
    ``ref_<metric>`` (the paper's number) where any run carries a reference. Rows keep the
    order of ``runs``. NaN where a metric is missing.
    """
    runs = grouped(runs)
    keys = varying_columns(runs) if "config" in runs.columns else []
    runs = _with_columns(runs, ("suite", "label", "group", "group_label", "strategy", "run_id")
                         + tuple(metrics))
    by = [runs["suite"], runs["group"]]
    groups = runs.groupby(by, sort=False, dropna=False)
    out = groups.agg(group_label=("group_label", "first"), label=("label", "first"),
                     strategy=("strategy", "first"), n_seeds=("final_test_acc", "count"),
                     n_runs=("run_id", "size"))
    for n, key in enumerate(keys):  # after the names, before the numbers
        out.insert(3 + n, key, groups[key].first())
    for metric in metrics:
        values = pd.to_numeric(runs[metric], errors="coerce").groupby(by, sort=False,
                                                                      dropna=False)
        out[f"{metric}_mean"] = values.mean()
        out[f"{metric}_std"] = values.std(ddof=1)
    for ref in [c for c in runs.columns if str(c).startswith("ref_")]:
        out[ref] = groups[ref].first()
    return out.rename_axis(["suite", "group"]).reset_index()


def grouped(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with groups derived for exactly these rows; a frame without the ``config``
    column (built by hand) groups by label."""
    if "config" in runs.columns:
        return assign_groups(runs)
    return runs.assign(group=runs["label"], group_label=runs["label"])


def _find_runs(root: Path) -> list[Path]:
    """Folders that are runs: they hold a status.json, or a config.json written by a run
    (a RunSpec's fields), so an unrelated config.json elsewhere in the tree is no row.
    Symbolic links are followed (each real directory visited once, so a link cycle ends)."""
    found, seen = set(), set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if "config.json" in filenames or "status.json" in filenames:
            found.add(Path(dirpath))
    found = sorted(found)
    runs: list[Path] = []
    for d in found:
        # A config.json inside a run directory (say a checkpoint's) is not another run.
        if any(r in d.parents for r in runs):
            continue
        if (d / "status.json").is_file() or _is_run_config(_read_json(d / "config.json",
                                                                     quiet=True)):
            runs.append(d)
    return runs


def _is_run_config(config) -> bool:
    return isinstance(config, dict) and {"run_id", "strategy", "seed"} <= set(config)


def _run_config(run_dir: Path) -> dict | None:
    """The run's config.json, or None with one warning saying how to repair it."""
    config = _read_json(run_dir / "config.json", quiet=True)
    if _is_run_config(config):
        return config
    warnings.warn(f"skipping run {run_dir}: its config.json is missing or damaged "
                  "(`alma-bench run` with its suite repairs it)", stacklevel=3)
    return None


def _load_run(run_dir: Path, config: dict) -> tuple[dict[str, Any], list[dict]]:
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json", quiet=True) or {}
    status = _read_json(run_dir / "status.json") or {}
    if not summary and status.get("state") == "done":
        summary = _regenerate_summary(run_dir, rows, status)
    strategy = config.get("strategy")
    strategy = strategy.get("name") if isinstance(strategy, dict) else strategy
    run: dict[str, Any] = {
        "run_id": str(config.get("run_id") or run_dir.name),
        "suite": config.get("suite") or run_dir.parent.name,
        "scale": config.get("scale"),
        "label": config.get("label") or strategy,
        "strategy": strategy,
        "seed": config.get("seed"),
        # Without status.json the run is done exactly when it wrote its summary.
        "state": status.get("state") or ("done" if summary else "running"),
        "megabatches_done": status.get("megabatches_done", len(rows)),
        "n_megabatches": status.get("n_megabatches"),
        "path": str(run_dir),
    }
    run.update({k: summary.get(k, math.nan) for k in SUMMARY_FIELDS})
    run.update({k: v for k, v in summary.items() if k not in run})
    reference = config.get("reference")
    if isinstance(reference, dict):
        run.update({f"ref_{k}": v for k, v in reference.items()})
    return run, rows


def _regenerate_summary(run_dir: Path, rows: list[dict], status: dict) -> dict:
    """A finished run's summary from its rows when summary.json was deleted or damaged (the
    runner's own function: the same numbers); empty when the rows are not all there."""
    from alma_bench.store.summary import summarize

    if not rows or len(rows) != status.get("megabatches_done"):
        return {}
    try:
        summary = summarize(rows)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return {}
    warnings.warn(f"{run_dir / 'summary.json'} is missing or damaged: recomputed from "
                  "metrics.jsonl (`alma-bench run` rewrites it)", stacklevel=3)
    return summary


def _read_json(path: Path, quiet: bool = False) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if not quiet:
            warnings.warn(f"skipping unreadable {path}: {exc}", stacklevel=3)
        return None
    return data if isinstance(data, dict) else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            # A run killed mid-write leaves a truncated last line; the rest is still good.
            warnings.warn(f"skipping malformed line {n} of {path}", stacklevel=3)
    return [r for r in rows if isinstance(r, dict)]


def _with_columns(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The frame with ``columns`` first (added as NaN where missing), then any others."""
    df = df.copy()
    for c in columns:
        if c not in df.columns:
            df[c] = math.nan
    return df[list(columns) + [c for c in df.columns if c not in columns]]


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    numeric = set(SUMMARY_FIELDS + METRIC_FIELDS) | {"seed", "density", "megabatches_done",
                                                      "n_megabatches"}
    for c in df.columns:
        if c in numeric or str(c).startswith("ref_"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df
