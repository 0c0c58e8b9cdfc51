"""Test plugin for the cluster executors: dense training, paced so that a test can kill it
mid-run, that logs each start of training in a process.

``ALMA_TEST_TRACE`` names a file that gets one JSON line per (process, run) when the process
trains its first megabatch of the run: label, seed, pid, node (``$ALMA_BENCH_NODE``), the
megabatch it starts at (0: from scratch; more: resumed) and, in a Ray worker, the resources
Ray assigned to the task. Appended with O_APPEND: concurrent processes never mix lines.
"""

import json
import os
import sys
import time
from dataclasses import dataclass

from avalanche.core import SupervisedPlugin

from alma_bench import register_strategy


def _ray_resources():
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_assigned_resources()


class _Trace(SupervisedPlugin):
    def __init__(self, ctx, pace: float):
        super().__init__()
        self.ctx, self.pace, self.logged = ctx, pace, False

    def before_training_exp(self, strategy, **kw):
        path = os.environ.get("ALMA_TEST_TRACE")
        if self.logged or not path:
            return
        self.logged = True
        line = json.dumps({"label": self.ctx.spec.label, "seed": self.ctx.spec.seed,
                           "pid": os.getpid(), "node": os.environ.get("ALMA_BENCH_NODE"),
                           "start": strategy.experience.current_experience,
                           "resources": _ray_resources(), "at": time.time()})
        with open(path, "a") as f:
            f.write(line + "\n")

    def after_training_iteration(self, strategy, **kw):
        time.sleep(self.pace)  # a run long enough to be killed mid-run; changes no number


@register_strategy("trace-dense")
@dataclass(frozen=True)
class TraceDense:
    """Dense; paced and traced (tests only)."""

    pace: float = 0.02

    def plugins(self, ctx):
        return [_Trace(ctx, self.pace)]
