"""TensorBoard sink: one log directory per run, laid out for TensorBoard's own comparisons.

Layout: ``<log_dir>/<suite folder>/<label>/seed<N>/`` (the suite folder is the results
folder's name, e.g. ``app-cifar10-quick``). TensorBoard treats each directory of event files
as a *run* and overlays one tag of every run in one chart, so tags name the metric only
(``test_acc``, not ``<suite>/<label>/test_acc``): strategies and seeds compare in one chart,
and the run selector (or a regex on the run name) picks them.

What is logged:

* per megabatch, step = megabatch 1..N: every numeric field of the metrics row (``test_acc``,
  ``density``, ``gen_gap``, ``flops_effective``, strategy extras, ...) and each numeric value
  of a mapping field as ``<field>/<key>``, i.e. ``layer_density/<layer>``;
* per epoch, step = epoch counted over the whole stream (1, 2, ... across megabatches):
  ``epoch/train_acc`` (running accuracy on the training batches of the epoch) and
  ``epoch/val_acc``. The harness does not record the training loss per epoch (the training
  loop keeps only these accuracies, ``RunContext.epoch_log``), so these stand in for it;
* at the end of the run: the HParams dashboard's session (the resolved config flattened to
  dotted keys, scalar values only) and the summary metrics as ``summary/<metric>``.

A run that resumes re-logs the megabatches it resumes with and tells TensorBoard to drop what
the interrupted process wrote (``purge_step``), so the log always equals ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any

#: Row fields that are the step or bookkeeping, not measurements.
_SKIP = frozenset({"megabatch"})
#: Per-epoch list fields of a metrics row (alma_bench/run/runner.py) -> their tag.
EPOCH_FIELDS = {"epoch_train_acc": "epoch/train_acc", "epoch_val_acc": "epoch/val_acc"}
#: Marker naming the run that owns a log directory (TensorBoard ignores other files).
OWNER_FILE = "alma_run_id.txt"


def run_log_dir(root: str | Path, suite: str, label: str, seed: int, run_id: str) -> Path:
    """``<root>/<suite>/<label>/seed<seed>``, or ``.../seed<seed>-<run_id>`` when that folder
    already belongs to another run (the same label with a different config, e.g. a second
    ``--set``): two runs never write into one TensorBoard run."""
    base = Path(root) / _part(suite) / _part(label)
    path = base / f"seed{seed}"
    owner = path / OWNER_FILE
    if owner.is_file() and owner.read_text().strip() != run_id:
        path = base / f"seed{seed}-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_FILE).write_text(run_id + "\n")
    return path


def flat_hparams(config: dict) -> dict[str, Any]:
    """The config flattened to dotted keys, scalars only (what the HParams dashboard can
    show): lists, empty values and nested ``identity`` (a copy of the rest) are left out;
    booleans become ``"true"``/``"false"`` (the protobuf would store them as 1.0/0.0)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif isinstance(value, bool):
                out[name] = "true" if value else "false"
            elif isinstance(value, str | int | float) and not _nan(value):
                out[name] = value

    walk({k: v for k, v in config.items() if k not in ("identity", "reference")}, "")
    return out


class TensorBoardSink:
    """Writes one run's metrics rows, per-epoch accuracies and, at the end, its hparams."""

    def __init__(self, log_dir: str | Path, suite: str, label: str, seed: int,
                 run_id: str = "run", rows: list[dict] | None = None) -> None:
        # Imported here so that loading results or making reports never needs torch.
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = run_log_dir(log_dir, suite, label, seed, run_id)
        self._epoch = 0  # epochs logged so far: the per-epoch step
        self._last = 0  # last megabatch logged
        # purge_step=1: TensorBoard hides every event of this run at step >= 1 written before
        # this writer (a killed process's), then the resumed rows are logged again below.
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=1)
        for row in rows or []:
            self.log_row(row, flush=False)
        self._writer.flush()

    def log_row(self, row: dict, flush: bool = True) -> None:
        """Log one megabatch's row (step = its megabatch) and its epochs (global epoch step)."""
        step = int(row["megabatch"])
        self._last = step
        for key, value in row.items():
            if key in _SKIP or key in EPOCH_FIELDS:
                continue
            if isinstance(value, dict):  # layer_density: one chart per layer
                for sub, v in value.items():
                    self._scalar(f"{key}/{sub}", v, step)
            else:
                self._scalar(key, value, step)
        train, val = (row.get(k) or [] for k in EPOCH_FIELDS)
        for i in range(max(len(train), len(val))):
            for tag, values in zip(EPOCH_FIELDS.values(), (train, val), strict=True):
                if i < len(values):
                    self._scalar(tag, values[i], self._epoch + i + 1)
        self._epoch += max(len(train), len(val))
        if flush:  # one row per megabatch (minutes apart): a live TensorBoard sees it at once
            self._writer.flush()

    def log_hparams(self, config: dict, summary: dict) -> None:
        """The run's session for the HParams dashboard: hparams = ``flat_hparams(config)``;
        the summary metrics are logged as ``summary/<metric>`` at the last megabatch."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"summary/{k}": float(v) for k, v in summary.items() if _number(v)}
        _, start, end = hparams(flat_hparams(config), metrics)
        # Only the session start/end, not torch's ``Experiment`` summary: with one Experiment
        # per run TensorBoard shows the columns of an arbitrary one (a dense run has no
        # density parameter); without it the dashboard takes the union over all runs. And
        # written here, not through add_hparams, which would open a timestamped sub-run.
        writer = self._writer._get_file_writer()
        writer.add_summary(start, self._last)
        writer.add_summary(end, self._last)
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, global_step=self._last)
        self._writer.flush()

    def _scalar(self, tag: str, value: object, step: int) -> None:
        if _number(value):
            self._writer.add_scalar(tag, float(value), global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number(value: object) -> bool:
    # bool is an int subclass but a flag, not a measurement; NaN/inf would break the chart.
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _nan(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _part(text: str) -> str:
    """A label as one path component: separators replaced, everything else as written (grid
    labels like ``osp-snip[density=0.1]`` stay readable in TensorBoard's run list)."""
    # control characters (NUL cuts a path) and a name past the file system's 255 bytes would
    # make the folder impossible to create
    part = re.sub(r"[/\\\x00-\x1f\x7f]", "_", str(text))[:200]
    return "_" if part in ("", ".", "..") else part


class GuardedSink:
    """A run's TensorBoard sink whose failures never fail the run: TensorBoard is not part
    of a run's identity, so a log folder that cannot be made or written (a full disk, a
    label the file system refuses) costs the logs, not the run. The first failure is one
    line through ``say``; the sink is off after it."""

    def __init__(self, make, say) -> None:
        self.say, self.sink = say, None
        self._call(lambda: setattr(self, "sink", make()))

    def _call(self, fn) -> None:
        if fn is None:
            return
        try:
            fn()
        except Exception as e:  # any failure of the logger or of its files
            self.sink = None
            self.say(f"TensorBoard logging is off for this run: {type(e).__name__}: "
                     f"{' '.join(str(e).split())[:200]}")

    def __bool__(self) -> bool:
        return self.sink is not None

    def log_row(self, row: dict) -> None:
        self._call(self.sink and (lambda: self.sink.log_row(row)))

    def log_hparams(self, config: dict, summary: dict) -> None:
        self._call(self.sink and (lambda: self.sink.log_hparams(config, summary)))

    def close(self) -> None:
        self._call(self.sink and self.sink.close)
