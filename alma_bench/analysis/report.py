"""Report of a result store: seaborn figures, ``summary.csv`` and a ``README.md`` embedding them.

One figure set per suite (file names prefixed with the suite name when the store holds more
than one suite). A strategy label has the same colour in every figure. A strategy missing a
metric still appears wherever it has data; its table cell is left empty.

Tables and figures are per group (groups.py): runs of one label with different configs are
never averaged, each is its own row and line, named by the keys that differ. The table also
gives each group's paired difference against the baseline (compare.py).

This module writes the README (its head, the machine it was made on, one section per suite);
the figures are figures.py's, the Markdown table readme_table.py's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from alma_bench.analysis import compare, learning
from alma_bench.analysis.figures import _save, by_group, label_look, slug, theme, write_figures
from alma_bench.analysis.groups import (
    display_key,
    shared_and_own,
    show,
)
from alma_bench.analysis.readme_table import markdown_table, md_cell, metrics_table
from alma_bench.analysis.results import TABLE_METRICS, Results, load, summary_table
from alma_bench.errors import UserError, unknown
from alma_bench.spec.grid import unflatten

#: File formats ``make_report`` can write figures in (``alma-bench report --format``).
FORMATS = ("png", "pdf", "svg")

FINDINGS = "FINDINGS.md"


def make_report(results_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                command: str | None = None, formats: str | Sequence[str] = "png",
                on_figure: Callable[[str, Figure], None] | None = None) -> Path:
    """Write figures, ``summary.csv`` and ``README.md`` for ``results_dir``; return the out dir.

    ``results_dir`` may be a list of folders (a run found in several counts once, as in
    :func:`~alma_bench.analysis.results.load`). ``out_dir`` defaults to ``<results_dir>/report``
    (of the first folder); ``command`` is recorded in the README as
    the command that made the report. ``formats``: the figures' file formats, ``"png,pdf"``
    or a list, from FORMATS; the README embeds the PNG when there is one, else the first.
    ``on_figure(file stem, Figure)`` sees each figure as it is written (tests, notebooks).
    A ``FINDINGS.md`` already in ``out_dir`` (what a person concluded from these numbers) is
    kept and put first in the README, so regenerating a report never loses it.
    """
    formats = parse_formats(formats)  # before any work: a bad format is a one-line error
    results = load(results_dir)
    folders = [results_dir] if isinstance(results_dir, (str, Path)) else list(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(folders[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    # a strategy's own row metrics (plugin metrics()) join the table's columns
    table = summary_table(results.runs, TABLE_METRICS + tuple(results.row_metrics))
    table = table.merge(compare.wide(compare.paired(results.runs)), on=["suite", "group"],
                        how="left")
    table.to_csv(out / "summary.csv", index=False)
    results = by_group(results)
    look = label_look(results.runs)
    suites = sorted(results.runs["suite"].dropna().astype(str).unique())
    sections = []
    with theme():
        for suite in suites:
            prefix = f"{slug(suite)}_" if len(suites) > 1 else ""
            figures = write_figures(results, suite, out, prefix, look, formats, on_figure)
            sections.append(_section(results, table, suite, figures))
        learned = "\n".join(filter(None, (
            learning.section(folder, lambda fig, stem: _save(fig, out / stem, formats))
            for folder in folders)))
        if learned:
            sections.append("## Learning curves\n\n" + learned)
    findings = out / FINDINGS
    head = _head(command, suites)
    if findings.is_file():
        head += (f"## Findings\n\n(Written by hand from these numbers; kept in "
                 f"[{FINDINGS}]({FINDINGS}).)\n\n{findings.read_text().strip()}\n\n")
    (out / "README.md").write_text(head + "\n".join(sections))
    return out


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,pdf"`` (or a list) as a tuple of FORMATS; anything else is a UserError."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip().lower().lstrip(".") for n in names if n.strip()]
    for name in names:
        if name not in FORMATS:
            raise unknown("figure format", name, FORMATS)
    if not names:
        raise UserError(f"no figure format given. Valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def _section(res: Results, table: pd.DataFrame, suite: str, figures: list[tuple]) -> str:
    runs = res.runs[res.runs["suite"] == suite].drop_duplicates("group")
    shared, own = shared_and_own({str(g): json.loads(c) for g, c
                                  in zip(runs["group_label"], runs["config"])})
    # One line per top-level key: compact, and still valid JSON to paste into a script.
    body = ",\n ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in unflatten(shared).items())
    lines = [f"## Suite `{suite}`", "", "Config shared by every group:", "", "```json",
             "{" + body + "}", "```", ""]
    if len(own) > 1:
        lines += ["Config of each group (the keys that differ):", "", "| group | config |",
                  "|---|---|"]
        for g, keys in own.items():
            text = ", ".join(f"{display_key(k)}={show(v)}" for k, v in keys.items())
            lines.append(f"| {md_cell(g)} | {md_cell(text)} |")
        lines.append("")
    lines += markdown_table(table[table["suite"] == suite]) + [""]
    own = metrics_table(table[table["suite"] == suite], res.row_metrics)
    if own:
        lines += ["The strategies' own metrics (their rows' values at the last megabatch, "
                  "mean ± std over seeds; also in `summary.csv`):", "", *own, ""]
    unfinished = res.runs[(res.runs["suite"] == suite) & (res.runs["state"] != "done")]
    if len(unfinished):
        note = f"{len(unfinished)} run(s) unfinished: their megabatches so far are in the curves"
        lines += [note + ", not in the table.", ""]
    lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in figures]
    return "\n".join(lines)


def _head(command: str | None, suites: list[str]) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join([
        "# alma-bench report", "", f"Suites: {', '.join(suites)}. Generated {now}.", "",
        "Command:", "", "```", command or "(not recorded)", "```", "",
        f"Machine (where this report was made): {_machine()}", "",
        ("Table: one row per group, the runs whose configs are equal except for the seed "
         "(a label run with several configs is split, named by the keys that differ); mean ± "
         "sample std over seeds; *seeds* counts finished runs. Δ = mean paired difference "
         "from the baseline over the seeds both ran (a seed fixes stream, split and init), "
         "with its 95% t-interval; *pairs* = shared seeds (the interval is NaN below 2). "
         "CER = Σₜ (1 − test accₜ); CER (errors) = misclassified test images "
         "summed over megabatches. Gen. gap = train − test accuracy. *paper* = the number the "
         "strategy's paper reports, when the suite gives one."), "", ""])


def _machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    gpu, version = _torch_gpu()
    return (f"{cpu}, {os.cpu_count()} cores; GPU: {gpu}; torch {version}; "
            f"Python {platform.python_version()}; {platform.system()} {platform.release()}")


# where a Linux GPU driver shows itself (NVIDIA, ROCm, WSL2): without any, CUDA is unavailable
_GPU_DEVICES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def _torch_gpu() -> tuple[str, str]:
    """The GPU torch would use and ``torch.__version__``. Importing torch takes seconds, a
    third of a report's time: on Linux without a GPU driver the GPU is none and the version is
    read from torch's files."""
    if "torch" not in sys.modules and sys.platform == "linux" \
            and not any(os.path.exists(p) for p in _GPU_DEVICES):
        version = _torch_version()
        if version is not None:
            return "none", version
    try:
        import torch
    except ImportError:
        return "none", "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return gpu, torch.__version__


def _torch_version() -> str | None:
    """``torch.__version__`` without importing torch: torch/version.py is a generated file of
    constants, loaded here alone. None when torch or that file is missing or unusual."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
        path = Path(spec.submodule_search_locations[0]) / "version.py"
        loaded = importlib.util.spec_from_file_location("_alma_bench_torch_version", path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        return str(module.__version__)
    except Exception:
        return None
