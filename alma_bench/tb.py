"""TensorBoard sink for per-megabatch metrics rows.

Tags are ``<suite>/<label>/seed<seed>/<key>`` so that many runs can share one log directory and
still be told apart (and filtered by regex) in the TensorBoard UI.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path


class TensorBoardSink:
    """Writes each numeric top-level field of a metrics row as a scalar at step = megabatch."""

    def __init__(self, log_dir: str | Path, suite: str, label: str, seed: int) -> None:
        # Imported here so that loading results or making reports never needs torch.
        from torch.utils.tensorboard import SummaryWriter

        self.prefix = f"{suite}/{label}/seed{seed}"
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log_row(self, row: dict) -> None:
        """Log every numeric field of ``row`` (nested dicts such as layer_density are skipped)."""
        step = int(row["megabatch"])
        for key, value in row.items():
            # bool is an int subclass but a flag, not a measurement.
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                value = float(value)
                if math.isfinite(value):
                    self._writer.add_scalar(f"{self.prefix}/{key}", value, global_step=step)
        # One row per megabatch (minutes apart): flush so a live TensorBoard sees it at once.
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
