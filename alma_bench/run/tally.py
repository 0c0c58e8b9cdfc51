"""Per-step sums kept on the device without a kernel per step (the hot loop's bookkeeping).

A run's step-level accounting (the running training accuracy APP's per-epoch gap reads, the
finite-loss check) used to launch a few tiny kernels every optimizer step: argmax, eq, sum and
an add for accuracy, an add for the loss. On a small model each is a visible share of a step.
``StepTally`` only keeps the step's tensors (detached: no graph is held) and reduces them in
one batched call every ``every`` steps and at the end, so the count is exactly the same and the
memory held stays bounded (``every`` batches of outputs).
"""

from __future__ import annotations

import torch


class StepTally:
    """Buffers per-step tensors; ``reduce(buffer) -> tensor`` folds a chunk into the total."""

    def __init__(self, reduce, every: int = 64):
        self.reduce, self.every = reduce, every
        self.buffer: list = []
        self._total = None

    def add(self, item) -> None:
        self.buffer.append(item)
        if len(self.buffer) >= self.every:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            part = self.reduce(self.buffer)
            self._total = part if self._total is None else self._total + part
            self.buffer = []

    def total(self):
        """The reduction over every item added (None when nothing was added)."""
        self._flush()
        return self._total


def hits(chunk: list) -> torch.Tensor:
    """Correct predictions in a chunk of (output, target) pairs."""
    out = torch.cat([o for o, _ in chunk])
    return (out.argmax(1) == torch.cat([y for _, y in chunk])).sum()


def non_finite(chunk: list) -> torch.Tensor:
    """How many of a chunk of step losses are NaN or infinite."""
    return (~torch.isfinite(torch.stack([v.reshape(()) for v in chunk]))).sum()
