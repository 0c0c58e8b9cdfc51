"""``SupervisedPlugin`` without importing Avalanche, for plugins defined at module top level.

``avalanche.core.SupervisedPlugin`` is an abstract class whose hooks all do nothing. Avalanche
calls a plugin's hooks by name (``trigger_plugins``: ``getattr(plugin, event)``) and checks a
plugin against its template by the hook names in ``dir(plugin)``, never by type, so a plugin
built on this class behaves exactly as one built on Avalanche's. What differs is the import:
``import avalanche.core`` runs ``avalanche/__init__``, which imports the benchmarks,
evaluation, models and training packages (about 12 s on 2 busy cores), and strategy modules are
imported just to list or validate strategies. tests/test_imports.py keeps HOOKS equal to
Avalanche's hook names and checks that ``alma-bench list strategies`` imports no Avalanche.
"""

from __future__ import annotations

#: The buffer a mask is kept in, next to the weight it masks (``<layer>.weight_mask``): the
#: sparsity package owns masks (alma_bench/sparsity/masks.py); the training template only needs
#: to know which buffers are masks (whether the weights it validated are still the same ones).
MASK_BUFFER = "weight_mask"

#: Every callback of ``avalanche.core.SupervisedPlugin`` (Avalanche 0.6).
HOOKS = (
    "before_training", "before_training_exp", "after_training_exp", "after_training",
    "before_eval", "before_eval_exp", "after_eval_exp", "after_eval",
    "before_training_epoch", "before_training_iteration", "before_forward", "after_forward",
    "before_backward", "after_backward", "after_training_iteration", "before_update",
    "after_update", "after_training_epoch", "before_eval_iteration", "before_eval_forward",
    "after_eval_forward", "after_eval_iteration", "before_train_dataset_adaptation",
    "after_train_dataset_adaptation", "before_eval_dataset_adaptation",
    "after_eval_dataset_adaptation",
)


class SupervisedPlugin:
    """Base of an Avalanche ``SupervisedTemplate`` plugin: every hook is a no-op to override."""

    supports_distributed: bool = False

    def __init_subclass__(cls, supports_distributed: bool = False, **kwargs) -> None:
        # as Avalanche's BasePlugin: a subclass declares distributed support in its header
        cls.supports_distributed = supports_distributed
        super().__init_subclass__(**kwargs)


def _no_op(self, strategy, *args, **kwargs) -> None:
    """Does nothing; override it to act at this point of training."""


for _hook in HOOKS:
    setattr(SupervisedPlugin, _hook, _no_op)
del _hook
