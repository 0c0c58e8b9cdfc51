"""The one training loop per megabatch: Avalanche's SupervisedTemplate plus core plugins.

``AlmaTemplate`` changes only where the data and the optimizer come from (tensor batches of
the ALMA stream; an optimizer rebuilt or kept per the protocol). Everything else, the LR
schedule, best-validation selection, early stopping, step counting, and every strategy, is
an Avalanche plugin, so strategies never copy the loop.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from alma_bench.run.benchmark import mark_megabatches
from alma_bench.run.data import BatchLoader, Normalizer
from alma_bench.run.hooks import STEP_EVENTS, is_no_op
from alma_bench.run.plugin_base import MASK_BUFFER as MASK_SUFFIX
from alma_bench.run.stream import AlmaStream
from alma_bench.run.tally import StepTally, hits
from alma_bench.run.timing import NO_TIMER
from alma_bench.spec.config import Protocol, RunSpec, Seeds, derive


@dataclass
class RunContext:
    """What a strategy sees of the run: handed to ``strategy.plugins(ctx)``.

    ``step`` (optimizer steps so far, over the whole stream) and ``samples_seen`` are the
    explicit clock schedules are keyed to; ``megabatch`` is the 0-based index being trained.
    """

    spec: RunSpec
    stream: AlmaStream
    model: torch.nn.Module
    protocol: Protocol
    seeds: Seeds
    device: torch.device
    normalize: Normalizer
    step: int = 0
    samples_seen: int = 0
    megabatch: int = 0
    # per-epoch (train_acc, val_acc) of the current megabatch
    epoch_log: list = field(default_factory=list)
    kept_epoch: int = 0  # index into epoch_log of the epoch the megabatch ended with
    # cumulative training FLOPs: 3 x effective forward FLOPs x batch, per optimizer step, with
    # the masks in force at that step (set by ClockPlugin when a FlopMeter is given)
    train_flops: float = 0.0
    flop_meter: object = None
    epoch_end_masks: list = field(default_factory=list)  # masks validation saw, per epoch
    # the run's own result folder (a strategy may save artifacts in ``run_dir / "artifacts"``)
    # and, per dependency parameter (e.g. ``structure_from``), the folder of the finished run
    # it names; see ``depends_on`` in the README's plugin section
    run_dir: Path | None = None
    deps: dict = field(default_factory=dict)
    # where the run's time goes (alma_bench/run/timing.py): a no-op unless perf --run asks
    timer: object = NO_TIMER
    # the validation accuracy of the kept model and the weight versions it was measured at:
    # the megabatch's row reuses it while the model is unchanged (no pass computed twice)
    kept_val: tuple | None = None

    @property
    def n_megabatches(self) -> int:
        return self.stream.n_megabatches

    def steps_per_megabatch(self, t: int) -> int:
        """Planned optimizer steps of megabatch t (without early stopping)."""
        n = len(self.stream.megabatches[t].train)
        return self.protocol.epochs * -(-n // self.protocol.batch_size)

    def batches(self, x, y, batch_size=None, *, seed=0, augment=False):
        """Normalised (x, y) batches on the device (e.g. a pruner's sample)."""
        bs = batch_size or self.protocol.batch_size
        loader = BatchLoader(x, y, bs, self.normalize, seed=seed, augment=augment,
                             padding=self.protocol.crop_padding)
        return [(xb, yb) for xb, yb, _ in loader]

    @torch.inference_mode()
    def accuracy(self, x, y, model=None) -> tuple[float, int]:
        """(accuracy, error count) of ``model`` (default: the run's) on uint8 images, eval mode."""
        model = model or self.model
        was_training = model.training
        model.eval()
        correct = 0
        bs = self.protocol.eval_batch_size
        for i in range(0, len(y), bs):
            out = model(self.normalize(x[i : i + bs]))
            correct += int((out.argmax(1).cpu() == y[i : i + bs]).sum())
        model.train(was_training)
        n = len(y)
        return (correct / n if n else float("nan")), n - correct


class _SilentEvaluator(EvaluationPlugin):
    """Avalanche's evaluator with no metrics and no loggers, minus its per-hook cost.

    The base class answers every ``before_*``/``after_*`` name (a dozen hooks per step) through
    ``__getattribute__``: a caught AttributeError, a new closure, and a copy of the experience
    for logging, all to loop over empty metric and logger lists. With plain attribute lookup
    the template skips those hooks; nothing observable changes (measured: 5% of a quickstart
    run's time, see reports/perf.md).
    """

    def __getattribute__(self, item):
        return object.__getattribute__(self, item)


def _silent_evaluator() -> EvaluationPlugin:
    # metrics are computed by the runner; Avalanche's evaluator only has to exist, quietly
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return _SilentEvaluator(loggers=[])


def build_optimizer(p: Protocol, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov,
                               weight_decay=p.weight_decay)
    return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)


class AlmaTemplate(SupervisedTemplate):
    """SupervisedTemplate fed by the ALMA stream's tensors, with the protocol's optimizer."""

    def __init__(self, *, ctx: RunContext, plugins: list, evaluator=None):
        p = ctx.protocol
        core = [ClockPlugin(ctx), LRSchedulePlugin(p), BestValidationPlugin(ctx)]
        super().__init__(
            model=ctx.model, optimizer=build_optimizer(p, ctx.model),
            criterion=torch.nn.CrossEntropyLoss(), train_mb_size=p.batch_size,
            train_epochs=p.epochs, eval_mb_size=p.eval_batch_size, device=ctx.device,
            # the guard runs last: no strategy hook may change a mask after selection
            plugins=core + list(plugins) + [SelectionGuard(ctx)],
            # Avalanche's metrics and loggers only when asked for (alma_bench/run/avalanche_logs.py)
            evaluator=evaluator if evaluator is not None else _silent_evaluator(),
            eval_every=-1,
        )
        self.alma = ctx
        self._hook_key, self._hooks = None, {}
        # the stream's experiences say their megabatch's size, as make_benchmark's do: a
        # pruner's sample is a fraction of it (alma_bench.sparsity.experience)
        mark_megabatches(ctx.stream)

    def make_train_dataloader(self, **kwargs):
        ctx = self.alma
        t = self.experience.current_experience
        x, y = ctx.stream.train_set(t)
        self.dataloader = BatchLoader(
            x, y, ctx.protocol.batch_size, ctx.normalize, seed=derive(ctx.seeds.order, t),
            augment=ctx.protocol.augment, padding=ctx.protocol.crop_padding)

    def sample_batches(self, indices: torch.Tensor, seed: int) -> list:
        """Batches of ``indices`` into the current experience's dataset (a pruner's sample),
        made as the training batches are: the stream's uint8 images of megabatch t (what its
        dataset holds, in the same order) normalised on the device, in ``BatchLoader``'s order
        for ``seed``. Read by sparse plugins when present; the dataset's own per-sample
        normalisation would differ in the last bits."""
        x, y = self.alma.stream.train_set(self.experience.current_experience)
        return self.alma.batches(x[indices], y[indices], seed=seed)

    def _step_hooks(self, event: str) -> list:
        """The bound hooks of ``event`` that do something (rebuilt when the plugin list
        changes).

        Avalanche's ``trigger_plugins`` calls every plugin's hook of every event (a hasattr, a
        getattr and a call each: eight events x every plugin per step), though most are the
        base class's no-ops; on a small model that is a visible share of a step. Skipping
        exactly those no-ops leaves the calls, their order and their arguments unchanged.
        """
        if self._hook_key != (id(self.plugins), len(self.plugins)):
            self._hook_key, self._hooks = (id(self.plugins), len(self.plugins)), {}
        hooks = self._hooks.get(event)
        if hooks is None:
            hooks = self._hooks[event] = [getattr(p, event) for p in self.plugins
                                          if hasattr(p, event) and not is_no_op(p, event)]
        return hooks

    def _before_training_epoch(self, **kwargs):
        self._hook_key = None  # a plugin list edited in place is seen at the next epoch
        super()._before_training_epoch(**kwargs)

    def check_model_and_optimizer(self, **kwargs):
        # Parameters never change identity in ALMA (re-initialisation is in place), so
        # Avalanche's parameter bookkeeping is not needed; only the state policy matters.
        self.model = self.model.to(self.device)
        if not self.alma.protocol.keep_optimizer_state:
            self.optimizer = build_optimizer(self.alma.protocol, self.model)


def _fire(event: str):
    def fire(self, **kwargs):
        for hook in self._step_hooks(event):
            hook(self, **kwargs)
    fire.__name__ = fire.__qualname__ = "_" + event
    return fire


for _event in STEP_EVENTS:
    setattr(AlmaTemplate, "_" + _event, _fire(_event))
del _event


class ClockPlugin(SupervisedPlugin):
    """Counts optimizer steps and samples over the whole stream (the run's clock)."""

    def __init__(self, ctx: RunContext):
        super().__init__()
        self.ctx = ctx

    def before_training_exp(self, strategy, **kw):
        self.ctx.megabatch = strategy.experience.current_experience
        self.first = True

    def before_training_iteration(self, strategy, **kw):
        if self.first and self.ctx.flop_meter is not None:
            # after every strategy's before_training_exp (pruning before the megabatch)
            self.ctx.flop_meter.refresh()
        self.first = False

    def after_update(self, strategy, **kw):
        # Runs before any strategy's after_update: the masks read here are the ones the step
        # was trained under, not the ones a strategy rewires to afterwards.
        n = len(strategy.mb_y)
        self.ctx.step += 1
        self.ctx.samples_seen += n
        if self.ctx.flop_meter is not None:
            self.ctx.train_flops += 3.0 * self.ctx.flop_meter.per_sample() * n


class LRSchedulePlugin(SupervisedPlugin):
    """Restarts the LR schedule at every megabatch; steps it per epoch."""

    def __init__(self, p: Protocol):
        super().__init__()
        self.p = p
        self.sched = None

    def before_training_exp(self, strategy, **kw):
        for g in strategy.optimizer.param_groups:
            g["lr"] = self.p.lr
            g["initial_lr"] = self.p.lr
        opt = strategy.optimizer
        if self.p.lr_schedule == "multistep":
            self.sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(self.p.milestones),
                                                              self.p.gamma)
        elif self.p.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.p.epochs)
        else:
            self.sched = None

    def after_training_epoch(self, strategy, **kw):
        if self.sched is not None:
            self.sched.step()


def mask_state(model) -> dict[str, torch.Tensor]:
    """Name -> copy of every mask buffer of ``model``."""
    return {k: b.clone() for k, b in model.named_buffers() if k.endswith(MASK_SUFFIX)}


def _mask_versions(tables: list[dict]) -> tuple:
    """Identity and version of the mask buffers in these module buffer tables: a mask
    registered, replaced or written in place changes the tuple."""
    return tuple((id(b), b._version) for d in tables for k, b in d.items() if k == MASK_SUFFIX)


def state_versions(model) -> tuple:
    """Identity and version counter of every parameter and buffer: equal tuples mean no
    tensor of the model was written in between (optimizer steps, load_state_dict and mask
    updates all write in place)."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def masks_differ(a: dict, b: dict) -> bool:
    """Whether the mask entries of two mappings (``mask_state``s or whole state dicts) differ."""
    a = {k: v for k, v in a.items() if k.endswith(MASK_SUFFIX)}
    b = {k: v for k, v in b.items() if k.endswith(MASK_SUFFIX)}
    return a.keys() != b.keys() or any(not torch.equal(v, b[k]) for k, v in a.items())


def _masks_final(strategy) -> bool:
    return all(p.masks_final(strategy) for p in strategy.plugins if hasattr(p, "masks_final"))


class SelectionGuard(SupervisedPlugin):
    """The harness's rule, checked: the reported model was trained under exactly the masks it
    is reported with. No hook may change masks after an epoch's validation, and after every
    hook of ``after_training_exp`` has run (this plugin is last), the kept model's masks must
    equal those its kept epoch ended with (``ctx.epoch_end_masks``). A strategy that prunes
    after selection fails loudly."""

    def __init__(self, ctx: RunContext):
        super().__init__()
        self.ctx = ctx

    def after_training_epoch(self, strategy, **kw):
        # ctx.epoch_end_masks[-1]: what validation saw, recorded by BestValidationPlugin
        if masks_differ(mask_state(strategy.model), self.ctx.epoch_end_masks[-1]):
            # validation scored the epoch before this change: its score would describe a
            # model that no longer exists
            raise RuntimeError(
                f"megabatch {self.ctx.megabatch + 1}: the masks changed in after_training_epoch "
                f"of epoch {len(self.ctx.epoch_end_masks)}, after validation; a strategy may "
                "change masks before a megabatch or inside its rewiring window "
                "(alma_bench.sparsity.plugin.RewiringTraining.rewire)")

    def after_training_exp(self, strategy, **kw):
        if not self.ctx.epoch_end_masks:
            return
        kept = self.ctx.epoch_end_masks[self.ctx.kept_epoch]
        if masks_differ(mask_state(strategy.model), kept):
            names = [type(p).__name__ for p in strategy.plugins]
            raise RuntimeError(
                f"megabatch {self.ctx.megabatch + 1}: the masks changed after the kept epoch "
                f"{self.ctx.kept_epoch + 1} was selected (plugins: {', '.join(names)}); a "
                "strategy may change masks before a megabatch or inside its rewiring window "
                "(alma_bench.sparsity.plugin.RewiringTraining), never after training")


class BestValidationPlugin(SupervisedPlugin):
    """Evaluates validation accuracy after each epoch; early stopping with patience; ends the
    megabatch at the best-validation epoch (weights and mask buffers restored together) among
    the epochs trained wholly under the megabatch's final masks. Early stopping waits until every
    plugin with ``masks_final(strategy)`` says its masks are final (a rewiring window)."""

    def __init__(self, ctx: RunContext):
        super().__init__()
        self.ctx = ctx

    def before_training_exp(self, strategy, **kw):
        self.best, self.bad, self.snapshot, self.best_epoch = -1.0, 0, None, 0
        self.last_val = None
        self.ctx.epoch_log = []
        self.ctx.epoch_end_masks = []

    def before_training_epoch(self, strategy, **kw):
        self.start_masks = mask_state(strategy.model)
        # every module's buffer table, read per step instead of walking the module tree
        self.tables = [m._buffers for m in strategy.model.modules()]
        self.versions, self.mixed = _mask_versions(self.tables), False
        self.correct, self.seen = StepTally(hits), 0  # this epoch's running accuracy

    def after_training_iteration(self, strategy, **kw):
        # Masks that change and come back by the epoch's end (a swap whose regrown zeros are
        # the next ones pruned) still mean the epoch trained under other masks: compare with
        # the epoch's start whenever a mask buffer was written (its version moved), so the
        # check costs a step nothing while no strategy touches the masks.
        if not self.mixed:
            versions = _mask_versions(self.tables)
            if versions != self.versions:
                self.versions = versions
                self.mixed = masks_differ(mask_state(strategy.model), self.start_masks)
        # running accuracy on the (augmented) training batches, for APP's per-epoch gap:
        # counted on the device in batched chunks, so the hot loop neither waits for a host
        # sync nor launches a kernel
        self.correct.add((strategy.mb_output.detach(), strategy.mb_y))
        self.seen += len(strategy.mb_y)

    def after_training_epoch(self, strategy, **kw):
        t = self.ctx.megabatch
        # the masks validation sees: the guard checks no later hook of this epoch changes them
        end = mask_state(strategy.model)
        self.ctx.epoch_end_masks.append(end)
        val = self.ctx.stream.val_set(t)
        with self.ctx.timer.part("validation"):
            val_acc, _ = self.ctx.accuracy(*val)
        self.ctx.timer.count("val_images", len(val[1]))
        self.last_val = (state_versions(strategy.model), val_acc)
        n_hits = self.correct.total()
        train_acc = int(n_hits) / max(1, self.seen) if n_hits is not None else 0.0
        self.ctx.epoch_log.append((train_acc, val_acc))
        if val_acc != val_acc:  # no validation data: no selection, no early stopping
            return
        if self.mixed or masks_differ(end, self.start_masks):
            # Trained under masks that changed during the epoch: never a kept epoch (it would
            # report a model pruned after its training), and no early stopping yet.
            self.best, self.bad, self.snapshot = -1.0, 0, None
            return
        if self.snapshot is not None and masks_differ(end, self.snapshot[0]):
            # Select only among epochs with the current masks: restoring an epoch with older,
            # denser masks would report a model never trained at its density (e.g. GMP).
            self.best, self.bad, self.snapshot = -1.0, 0, None
        if val_acc > self.best:
            self.best, self.bad, self.best_epoch = val_acc, 0, len(self.ctx.epoch_log) - 1
            if self.ctx.protocol.keep_best:
                opt = strategy.optimizer
                with self.ctx.timer.part("selection"):
                    # a tensor copy of the state (deepcopy's memo and pickling protocol
                    # cost more than the copy itself on a small model)
                    self.snapshot = ({k: v.detach().clone()
                                      for k, v in strategy.model.state_dict().items()},
                                     copy.deepcopy(opt.state_dict())
                                     if self.ctx.protocol.keep_optimizer_state else None)
        else:
            self.bad += 1
            if (self.ctx.protocol.patience and self.bad >= self.ctx.protocol.patience
                    and _masks_final(strategy)):
                strategy.stop_training()

    def after_training_exp(self, strategy, **kw):
        self.ctx.kept_epoch = len(self.ctx.epoch_log) - 1
        # the last epoch's validation, valid for the row while no tensor changes after it
        self.ctx.kept_val = self.last_val
        self.last_val = None
        if self.snapshot is not None and masks_differ(mask_state(strategy.model),
                                                      self.snapshot[0]):
            # a strategy changed masks after the last epoch ended (it must not; the guard
            # reports it): keep the model as it is rather than restore older masks
            self.snapshot = None
        if self.snapshot is not None:
            self.ctx.kept_epoch = self.best_epoch
            model_state, opt_state = self.snapshot
            with self.ctx.timer.part("selection"):
                strategy.model.load_state_dict(model_state)
                if opt_state is not None:  # momentum that belongs to the kept weights
                    strategy.optimizer.load_state_dict(opt_state)
            self.snapshot = None
            # the restored weights are the ones the kept epoch's validation scored
            self.ctx.kept_val = (state_versions(strategy.model), self.best)
