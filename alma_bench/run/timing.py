"""Where a run's wall time goes: the breakdown of ``alma-bench perf --run``.

``execute(..., timer=Breakdown())`` times the parts of a run the issue names (data start,
training, per-epoch validation, the test / train-set / validation passes of each megabatch,
the strategy's hooks: pruning, rewiring and mask upkeep, checkpoint and metrics). Without a
timer nothing is measured: ``NO_TIMER.part`` is a shared no-op context, and strategy hooks are
wrapped only when a real timer is given.
"""

from __future__ import annotations

import contextlib
import functools
import time

#: the parts, in the order a report lists them; ``training`` is the template's time minus the
#: parts measured inside it (validation, selection snapshots, strategy hooks)
PARTS = ("data_start", "setup", "training", "validation", "selection", "strategy_hooks",
         "test_pass", "train_pass", "val_pass", "checkpoint_metrics")
#: parts measured while ``template.train`` runs (subtracted from it to give ``training``)
INSIDE_TRAINING = ("validation", "selection", "strategy_hooks")


class Breakdown:
    """Wall seconds per part, accumulated over a run; parts may nest only as documented."""

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS + ("template_train",), 0.0)
        self.counts = dict.fromkeys(("val_images", "test_images", "train_images",
                                     "final_val_images", "val_passes_reused"), 0)
        self._open: dict[str, float] = {}  # parts opened by start(), not yet stopped

    @contextlib.contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def start(self, name: str) -> None:
        """Open a part that spans more code than a ``with`` block should (a run's setup)."""
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._open.pop(name)

    def count(self, name: str, n: int) -> None:
        self.counts[name] += n

    def wrap_hooks(self, plugin) -> None:
        """Time every ``before_*``/``after_*`` hook of a strategy plugin as strategy_hooks
        (not the base class's empty ones: wrapped, the template would call them every step)."""
        from alma_bench.run.hooks import is_no_op

        for name in dir(type(plugin)):
            if not (name.startswith("before_") or name.startswith("after_")):
                continue
            if is_no_op(plugin, name):
                continue
            hook = getattr(plugin, name, None)
            if callable(hook):
                setattr(plugin, name, self._timed(hook))

    def _timed(self, hook):
        @functools.wraps(hook)
        def timed(*args, **kwargs):
            with self.part("strategy_hooks"):
                return hook(*args, **kwargs)
        return timed

    def result(self) -> dict:
        """Seconds per part (``training`` net of what is measured inside it) and counts."""
        s = dict(self.seconds)
        inside = sum(s[k] for k in INSIDE_TRAINING)
        s["training"] = max(0.0, s.pop("template_train") - inside)
        return {"seconds": {k: s[k] for k in PARTS}, "counts": dict(self.counts)}


class _NoTimer:
    def part(self, name: str):
        return contextlib.nullcontext()

    def start(self, name: str) -> None:
        pass

    def stop(self, name: str) -> None:
        pass

    def count(self, name: str, n: int) -> None:
        pass


NO_TIMER = _NoTimer()
