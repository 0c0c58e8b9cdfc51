"""Load a result store into pandas.

The runner writes one directory per run (``config.json``, ``metrics.jsonl``, ``summary.json``,
``status.json``) under ``RESULTS_DIR/<suite>/<run-id>/``. From a notebook::

    from alma_bench.results import load, summary_table
    res = load("results/")            # a parent of suites, one suite, or one run directory
    res.runs                          # one row per run
    res.metrics                       # one row per (run, megabatch)
    res.layer_density                 # long form: one row per (run, megabatch, layer)
    summary_table(res.runs)           # mean and std over seeds per (suite, label)

Anything a run did not record (an unfinished run, a strategy without layer densities) is NaN,
never an error.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

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
    "run_id", "suite", "scale", "label", "strategy", "seed", "state",
    "megabatches_done", "n_megabatches", "path",
)
JOIN_COLUMNS = ("suite", "run_id", "label", "seed")
LAYER_COLUMNS = ("suite", "run_id", "label", "seed", "megabatch", "layer", "density")


@dataclass
class Results:
    """A loaded result store.

    ``runs``: one row per run (RUN_COLUMNS, every summary.json field, ``ref_<metric>`` from the
    config's paper reference). ``metrics``: one row per (run, megabatch) with JOIN_COLUMNS joined;
    ``layer_density`` stays a dict column there. ``layer_density``: long form (LAYER_COLUMNS).
    ``configs``: the full config.json of each run, keyed by run_id.
    """

    runs: pd.DataFrame
    metrics: pd.DataFrame
    layer_density: pd.DataFrame
    configs: dict[str, dict] = field(default_factory=dict)


def load(path: str | Path) -> Results:
    """Load every run under ``path`` (a run directory is any directory holding config.json)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"results path '{root}' does not exist")
    run_dirs = _find_runs(root)
    if not run_dirs:
        raise UserError(f"no runs under '{root}' (no directory holds a config.json)")
    runs, metric_rows, layer_rows, configs = [], [], [], {}
    for run_dir in run_dirs:
        config = _read_json(run_dir / "config.json")
        if config is None:
            continue
        run, rows = _load_run(run_dir, config)
        runs.append(run)
        configs[run["run_id"]] = config
        join = {k: run[k] for k in JOIN_COLUMNS}
        for row in rows:
            layers = row.get("layer_density")
            layers = layers if isinstance(layers, dict) else {}
            metric_rows.append({**join, **row, "layer_density": layers})
            layer_rows += [{**join, "megabatch": row.get("megabatch"), "layer": name,
                            "density": value} for name, value in layers.items()]
    if not runs:
        raise UserError(f"no readable runs under '{root}'")
    runs_df = _numeric(_with_columns(pd.DataFrame(runs), RUN_COLUMNS + SUMMARY_FIELDS))
    metrics = _numeric(_with_columns(pd.DataFrame(metric_rows), JOIN_COLUMNS + METRIC_FIELDS
                                     + ("layer_density",)))
    # A resumed run may re-append the row of a megabatch it redid: the last one is the truth.
    metrics = metrics.drop_duplicates(["suite", "run_id", "megabatch"], keep="last")
    layers = _numeric(_with_columns(pd.DataFrame(layer_rows), LAYER_COLUMNS))
    layers = layers.drop_duplicates(["suite", "run_id", "megabatch", "layer"], keep="last")
    order = ["suite", "label", "seed"]
    return Results(
        runs=runs_df.sort_values(order, kind="stable").reset_index(drop=True),
        metrics=metrics.sort_values(order + ["megabatch"], kind="stable").reset_index(drop=True),
        layer_density=layers.sort_values(order + ["megabatch"], kind="stable")
        .reset_index(drop=True),
        configs=configs,
    )


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (suite, label): mean and sample std (ddof=1) over seeds of TABLE_METRICS.

    Columns: suite, label, strategy, n_seeds (runs with a final test accuracy, i.e. finished),
    n_runs (all runs found), ``<metric>_mean``, ``<metric>_std``, and ``ref_<metric>`` (the
    paper's number) where any run carries a reference. NaN where a metric is missing.
    """
    runs = _with_columns(runs, ("suite", "label", "strategy", "run_id") + TABLE_METRICS)
    groups = runs.groupby(["suite", "label"], sort=True, dropna=False)
    out = groups.agg(strategy=("strategy", "first"), n_seeds=("final_test_acc", "count"),
                     n_runs=("run_id", "size"))
    for metric in TABLE_METRICS:
        values = pd.to_numeric(runs[metric], errors="coerce").groupby(
            [runs["suite"], runs["label"]], dropna=False)
        out[f"{metric}_mean"] = values.mean()
        out[f"{metric}_std"] = values.std(ddof=1)
    for ref in sorted(c for c in runs.columns if str(c).startswith("ref_")):
        out[ref] = groups[ref].first()
    return out.reset_index()


def _find_runs(root: Path) -> list[Path]:
    found = sorted(p.parent for p in root.rglob("config.json"))
    runs: list[Path] = []
    for d in found:
        # A config.json inside a run directory (say a checkpoint's) is not another run.
        if not any(r in d.parents for r in runs):
            runs.append(d)
    return runs


def _load_run(run_dir: Path, config: dict) -> tuple[dict[str, Any], list[dict]]:
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json") or {}
    status = _read_json(run_dir / "status.json") or {}
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


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
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
