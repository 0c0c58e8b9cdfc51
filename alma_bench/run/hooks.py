"""Which plugin hooks do anything: the training template skips a plugin's empty per-step hooks
(``AlmaTemplate``, alma_bench/run/training.py), and the timer of ``alma-bench perf --run``
wraps only hooks that do something (alma_bench/run/timing.py). Shared here so that neither of
those two modules imports the other."""

from __future__ import annotations

from avalanche import core as av_core

from alma_bench.run.plugin_base import SupervisedPlugin as LightPlugin

#: The hooks Avalanche fires at every optimizer step (``SGDUpdate.training_epoch``).
STEP_EVENTS = ("before_training_iteration", "before_forward", "after_forward",
               "before_backward", "after_backward", "before_update", "after_update",
               "after_training_iteration")
_NO_OPS = {(e, getattr(c, e)) for e in STEP_EVENTS
           for c in (av_core.BaseSGDPlugin, av_core.SupervisedPlugin, LightPlugin)
           if hasattr(c, e)}


def is_no_op(plugin, event: str) -> bool:
    """Whether ``plugin``'s ``event`` hook is a base class's empty one (not overridden on its
    class or its instance)."""
    return (event not in getattr(plugin, "__dict__", {})
            and (event, getattr(type(plugin), event, None)) in _NO_OPS)
