"""The learned-schedule environment (ALGORITHMS.md section 10): one episode is one run.

An episode walks the stream exactly as a ``prune-regrow`` run of the same configuration does:
megabatch t trains its planned ``epochs x ceil(|train_t| / batch)`` optimizer steps, and the
per-layer densities are decided at the run's own decision points (before the megabatch, every
``update_period`` steps of its rewiring window, and at the window's last step; see
:func:`plan`). One env step is one decision followed by the steps up to the next one, so an
agent trained here meets, in a run, the same number of decisions at the same places.

The inner loop is a plain step loop built from the harness's pieces (stream, model registry,
MaskSet, Protocol, ``build_optimizer``, ``LRSchedulePlugin``, ``BatchLoader``,
``set_layer_densities``), not ``AlmaTemplate``: gymnasium's ``step`` must return after each
interval, and Avalanche's ``train()`` cannot be suspended inside a megabatch. What the template
adds and the loop leaves out cannot change the trajectory: best-epoch selection keeps the last
epoch of a rewiring megabatch (the only one under its final masks), and early stopping never
ends a megabatch while its window is open, which leaves one epoch after it.

* decisions: one per schedule interval, or (``decisions: K``) one per group of intervals, the
  action held through its group (:mod:`alma_bench.rl.decisions`);
* action: one value per prunable layer in [-1, 1], mapped affinely to [min_density,
  max_density], or (``base_schedule``) a residual on a handcrafted schedule whose zero action
  is that schedule; the last interval is projected (:func:`project`) so the run ends at
  exactly round(density x n) prunable weights;
* observation: per layer (density, mean |w| of its kept weights, mean gradient norm over the
  interval), then progress k/T, mean training loss over the interval, validation accuracy,
  each normalised into [-1, 1] (:func:`~alma_bench.rl.decisions.normalise`);
* reward: the final validation accuracy (``terminal``), its change over each step (``delta``;
  the sum telescopes to final minus initial), or (``relative``) the final validation accuracy
  minus that of the base schedule (the zero action) on the same episode seed: the baseline
  that takes the network's and the data order's luck out of the return. With a seed cycle
  (``seed_cycle``: common random numbers), episodes draw their seeds from a fixed list, so
  the base episode of each seed is run once and return differences come from the policy.

Seeding goes through ``reset(seed=...)`` only: every random draw of an episode (stream split,
initialisation, data order, regrowth) comes from seeds derived from one episode seed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from alma_bench.errors import UserError
from alma_bench.registry import PRUNERS, SCHEDULES, build_dataclass
from alma_bench.rl.decisions import decision_groups, normalise, residual_densities
from alma_bench.run.data import BatchLoader, Normalizer
from alma_bench.run.models import build_model
from alma_bench.run.stream import build_stream, outside_indices
from alma_bench.sparsity.masks import MaskSet
from alma_bench.sparsity.plugin import rewiring_window, window_fraction
from alma_bench.sparsity.rewire import DROP_BY, set_layer_densities
from alma_bench.spec.compose import omit_later
from alma_bench.spec.config import LATER_PROTOCOL_FIELDS, Protocol, Seeds, derive, split_and_source

# Observation ceilings: finite bounds the values are clipped to (check_env wants them finite;
# real values stay far below them: |w| means ~0.01-1, gradient norms ~0.001-10, losses ~0-5).
MAX_WEIGHT, MAX_GRAD, MAX_LOSS = 10.0, 100.0, 100.0
TRAIN_SPLIT_SEED = 20220930  # one fixed agent-train split of the pool for every episode
# EnvConfig fields added after agents were saved, with the value that leaves them valid (none
# now: the swap's defaults became SET's, so every agent saved before is for another env)
LATER_FIELDS: dict = {}


@dataclass(frozen=True)
class EnvConfig:
    """What an agent is trained for; an agent only runs in an environment with an equal config.

    ``stream``, ``model`` and ``protocol`` are a run's sections (``RunSpec``), the stream
    without its split seed (it changes which samples, not how many); the rest are the
    ``rl-schedule`` strategy's schedule parameters.
    """

    stream: dict
    model: dict
    protocol: dict
    density: float = 0.1  # final global density over the prunable weights
    min_density: float = 0.05
    max_density: float = 1.0
    pruner: Literal["magnitude", "random"] = "magnitude"  # MP-RR or RP-RR
    update_period: int = 20  # optimizer steps between decisions inside a rewiring window
    drop_fraction: float = 0.3
    drop_by: Literal["pruner", "magnitude"] = "magnitude"  # the swap's criterion (prune-regrow)
    regrow_dropped: bool = True  # the swap may regrow just-dropped weights (SET; prune-regrow)
    reward: Literal["terminal", "delta", "relative"] = "terminal"
    decisions: int | None = None  # groups of intervals, one decision each; None: per interval
    base_schedule: str | None = None  # the zero action's schedule; None: absolute densities
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # every conv, no Linear layer, as every pruning strategy

    def __post_init__(self):
        if not 0 < self.min_density <= self.density <= 1:
            raise UserError(f"need 0 < min_density <= density <= 1, got min_density="
                            f"{self.min_density}, density={self.density}")
        if not self.min_density <= self.max_density <= 1:
            raise UserError(f"need min_density <= max_density <= 1, got {self.max_density}")
        if self.update_period < 1:
            raise UserError(f"update_period must be >= 1, got {self.update_period}")
        if not 0 <= self.drop_fraction < 1:
            raise UserError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if self.drop_by not in DROP_BY:
            raise UserError(f"drop_by must be one of {', '.join(DROP_BY)}, got {self.drop_by!r}")
        if self.decisions is not None and self.decisions < 1:
            raise UserError(f"decisions must be >= 1 or null, got {self.decisions}")
        if self.base_schedule is not None and self.base_schedule not in SCHEDULES:
            raise UserError(f"unknown base_schedule {self.base_schedule!r}. Valid: "
                            f"{', '.join(SCHEDULES.names())}")
        if self.reward == "relative" and self.base_schedule is None:
            raise UserError("reward: relative needs a base_schedule (the zero action's)")
        for name in ("stream", "model", "protocol"):
            d = dict(getattr(self, name))
            if name == "stream":
                d.pop("seed", None)  # a run's split seed: which samples, not how many
            # JSON-normal form (tuples as lists): a config read back from an agent's .json
            # then equals the one a run derives
            object.__setattr__(self, name, json.loads(json.dumps(d, sort_keys=True)))

    def to_json(self) -> dict:
        """Every field, but one of :data:`LATER_FIELDS` (or a protocol field of
        ``LATER_PROTOCOL_FIELDS``, as in a run id) only when set otherwise: the key of a shared
        agent (a hash of this) did not move when the field was added."""
        d = omit_later(dataclasses.asdict(self), LATER_FIELDS)
        d["protocol"] = omit_later(d["protocol"], LATER_PROTOCOL_FIELDS)
        return d

    @classmethod
    def from_json(cls, d: dict) -> EnvConfig:
        return build_dataclass(cls, d, "environment config")

    def protocol_obj(self) -> Protocol:
        return build_dataclass(Protocol, self.protocol, "protocol")

    def differences(self, other: EnvConfig) -> list[str]:
        """Dotted names of the fields (one level into stream/model/protocol) that differ."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        out = []
        for k in a:
            if isinstance(a[k], dict) and isinstance(b[k], dict):
                out += [f"{k}.{s}" for s in sorted(set(a[k]) | set(b[k]))
                        if a[k].get(s) != b[k].get(s)]
            elif a[k] != b[k]:
                out.append(k)
        return out


@dataclass(frozen=True)
class Interval:
    megabatch: int
    steps: int  # optimizer steps trained after the decision
    first: bool  # the megabatch's first decision: no swap (drop 0), as prune-regrow does
    # prune-regrow's schedule progress at the decision (its planned step over the stream's
    # planned total, megabatch t's span run over its window): where a base schedule is read
    progress: float = 0.0


def plan(train_sizes: list[int], epochs: int, batch_size: int, update_period: int):
    """The decision points of a prune-regrow run (``RewiringTraining`` + ``PruneRegrowPlugin``):
    per megabatch, before its first step, after every ``update_period`` steps of its window
    and at the window's last step; each decision is followed by the steps up to the next."""
    out = []
    spans = [epochs * -(-n // batch_size) for n in train_sizes]
    planned, offset = sum(spans), 0
    for t, n in enumerate(train_sizes):
        per_epoch = -(-n // batch_size)
        total = epochs * per_epoch
        window = rewiring_window(per_epoch, epochs)  # the strategy's own window
        points = sorted({0, window, *range(update_period, window + 1, update_period)})
        for start, end in zip(points, [*points[1:], total]):
            # RewiringTraining.planned_step: the span scaled by the window's progress
            done = window_fraction(start, window)
            out.append(Interval(t, end - start, start == 0,
                                (offset + spans[t] * done) / max(1, planned)))
        offset += spans[t]
    return out


def action_densities(config: EnvConfig, action, names: list[str],
                     progress: float) -> dict[str, float]:
    """The per-layer densities ``action`` asks for at schedule progress ``progress``
    (unprojected), in the environment and in a run alike: absolute in [min_density,
    max_density], or a residual on the config's base schedule (from density 1 to the target,
    as prune-regrow's schedules run)."""
    c = config
    if c.base_schedule is None:
        return to_densities(action, names, c.min_density, c.max_density)
    base = SCHEDULES.create(c.base_schedule).density(progress, 1.0, c.density)
    return residual_densities(action, names, base, c.min_density, c.max_density)


def to_densities(action, names: list[str], low: float, high: float) -> dict[str, float]:
    """Action in [-1, 1]^L -> per-layer densities in [low, high] (affine)."""
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
    return {n: low + (float(v) + 1.0) / 2.0 * (high - low) for n, v in zip(names, a)}


def project(densities: dict[str, float], sizes: dict[str, int], target: float,
            min_density: float) -> dict[str, float]:
    """Densities that keep exactly round(target x sum n_l) weights: the proposal scaled by one
    factor (per-layer ratios kept), clipped to [min_density, 1] and scaled again among the
    unclipped layers until nothing clips, then counts rounded and the remainder given one by
    one by largest fractional part (ties to model order). Returns k_l / n_l."""
    total = round(target * sum(sizes.values()))
    lo = {n: max(1, round(min_density * s)) for n, s in sizes.items()}
    if not sum(lo.values()) <= total <= sum(sizes.values()):
        raise UserError(f"density {target} cannot be met with min_density {min_density} "
                        f"(at least {sum(lo.values())} weights, target {total})")
    d = {n: max(densities[n], 1e-12) for n in sizes}
    fixed: dict[str, float] = {}
    # Scaling up only ever clips at 1, scaling down only at min_density, so this converges
    # in at most one pass per layer.
    for _ in range(len(sizes) + 1):
        free = [n for n in sizes if n not in fixed]
        if not free:
            break
        c = (total - sum(fixed[n] * sizes[n] for n in fixed)) / sum(d[n] * sizes[n] for n in free)
        clip = {n: min(1.0, max(min_density, c * d[n])) for n in free
                if not min_density <= c * d[n] <= 1.0}
        if not clip:
            break
        fixed.update(clip)
    want = {n: sizes[n] * (fixed[n] if n in fixed else c * d[n]) for n in sizes}
    k = {n: min(sizes[n], max(lo[n], round(want[n]))) for n in sizes}
    order = list(sizes)
    while (left := total - sum(k.values())) != 0:
        step = 1 if left > 0 else -1
        room = [n for n in order if lo[n] <= k[n] + step <= sizes[n]]
        # the layer whose rounding was furthest from what it wanted, in that direction
        n = max(room, key=lambda n: (step * (want[n] - k[n]), -order.index(n)))
        k[n] += step
    return {n: k[n] / sizes[n] for n in sizes}


class IntervalStats:
    """Training loss and per-layer (masked) gradient norms, averaged over an interval."""

    def __init__(self, n_layers: int):
        self.grad = torch.zeros(n_layers, dtype=torch.float64)
        self.loss, self.steps = 0.0, 0

    @torch.no_grad()
    def add(self, maskset: MaskSet, loss: torch.Tensor) -> None:
        grads = [w.grad if w.grad is not None else torch.zeros_like(w)
                 for w in maskset.weights.values()]
        self.grad += torch.stack(torch._foreach_norm(grads)).double().cpu()
        self.loss += float(loss)
        self.steps += 1

    def means(self) -> tuple[list[float], float]:
        n = max(1, self.steps)  # an empty interval (a window ending its megabatch) reads 0
        return (self.grad / n).tolist(), self.loss / n

    def state_dict(self) -> dict:
        return {"grad": self.grad.clone(), "loss": self.loss, "steps": self.steps}

    def load_state_dict(self, s: dict) -> None:
        self.grad, self.loss, self.steps = s["grad"].clone(), s["loss"], s["steps"]


def observation_space(n_layers: int) -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (3 * n_layers + 3,), dtype=np.float32)


def raw_space(n_layers: int) -> gym.spaces.Box:
    """Bounds of the raw features, before :func:`~alma_bench.rl.decisions.normalise`."""
    low = np.zeros(3 * n_layers + 3, dtype=np.float32)
    high = np.array([1.0, MAX_WEIGHT, MAX_GRAD] * n_layers + [1.0, MAX_LOSS, 1.0],
                    dtype=np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


@torch.no_grad()
def observation(maskset: MaskSet, stats: IntervalStats, progress: float,
                val_acc: float, num_classes: int) -> np.ndarray:
    """The observation vector (module docstring), normalised into :func:`observation_space`."""
    grads, loss = stats.means()
    values = []
    for (name, m), g in zip(maskset.masks.items(), grads):
        w = maskset.weights[name].detach()
        kept = int(m.sum())
        mean_w = float(w.abs().sum()) / kept if kept else 0.0  # masked weights are zero
        values += [kept / m.numel(), mean_w, g]
    values += [progress, loss, val_acc]
    space = raw_space(len(grads))
    obs = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=MAX_LOSS)
    return normalise(np.clip(obs, space.low, space.high), len(grads), num_classes)


class SparsityScheduleEnv(gym.Env):
    """One prune-regrow run of ``config`` per episode, with the densities chosen by the agent.

    ``split="train"``: the agent's training data, a fixed ``train_fraction`` of the training
    pool (each megabatch's training samples restricted to it; its validation samples, which
    no network trains on, are kept whole; step counts stay those of the full stream, so
    episodes have the run's length). ``split="full"``: the whole training set, as a run sees
    it, and with ``reward_images`` the validation split of every megabatch grows by that many
    images of the pool outside the stream's subset (:func:`outside_indices`): a reward read
    on enough images, from networks trained exactly as a run's. The stream's split, like
    every other draw, comes from the episode seed.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig, split: Literal["train", "full"] = "train",
                 train_fraction: float = 0.5, device: str = "cpu",
                 seed_cycle: tuple[int, ...] | None = None, reward_images: int = 0):
        from alma_bench.run.runner import load_data  # the harness's (per-process cached) loader

        if split not in ("train", "full"):
            raise UserError(f"split must be train or full, got {split!r}")
        if not 0 < train_fraction <= 1:
            raise UserError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if reward_images < 0 or (reward_images and split != "full"):
            raise UserError(f"reward_images must be >= 0 and needs split full, got "
                            f"{reward_images} with split {split}")
        self.config, self.split, self.reward_images = config, split, reward_images
        self.protocol = config.protocol_obj()
        self.device = torch.device(device)
        self.data = load_data(config.stream)
        self.alma_split = split_and_source(config.stream)[0]
        self.normalize = Normalizer(self.data.mean, self.data.std, self.device)
        self.pruner = PRUNERS.create(config.pruner, scope="layer")
        n = len(self.data.train_y)
        g = torch.Generator().manual_seed(TRAIN_SPLIT_SEED)
        self.in_split = torch.zeros(n, dtype=torch.bool)
        self.in_split[torch.randperm(n, generator=g)[: max(1, round(train_fraction * n))]] = True
        stream = build_stream(self.data, self.alma_split, 0)
        if any(not len(mb.val) for mb in stream.megabatches):  # the reward is validation
            raise UserError("the schedule environment needs validation samples in every "
                            "megabatch: raise stream.val_fraction or use more data")
        self.plan = self._plan(stream)
        model, ms = self._network(0)
        self.names = ms.names
        self.sizes = {n_: m.numel() for n_, m in ms.masks.items()}
        project({n_: 1.0 for n_ in self.names}, self.sizes, config.density,
                config.min_density)  # infeasible budgets fail here, not at the last step
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(self.names),), dtype=np.float32)
        self.observation_space = observation_space(len(self.names))
        self.groups = decision_groups(len(self.plan), config.decisions)
        # common random numbers: episode seeds from a fixed cycle; none: from the env's RNG
        self.seed_cycle = tuple(int(v) for v in seed_cycle) if seed_cycle else None
        self.episodes = 0
        self.base_acc: dict[int, float] = {}  # episode seed -> the base schedule's final val acc
        self.k = None  # index of the next decision; None before reset and after the end

    @property
    def n_steps(self) -> int:
        """Decisions per episode (T)."""
        return self.groups[-1] + 1

    def _plan(self, stream) -> list[Interval]:
        # from the full stream's sizes: the agent's train split never changes step counts
        p = self.protocol
        return plan([len(mb.train) for mb in stream.megabatches], p.epochs, p.batch_size,
                    self.config.update_period)

    def _network(self, init_seed: int):
        c = self.config
        # forked: the caller's global RNG (an RL learner, a run) is not moved by the init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_model(c.model, self.data.input_shape, self.data.num_classes)
        model = model.to(self.device).train()
        return model, MaskSet(model, c.prune_first, c.prune_last, c.prune_linear)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.seed_cycle is not None:
            episode_seed = self.seed_cycle[self.episodes % len(self.seed_cycle)]
        else:
            episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.episodes += 1
        if self.config.reward == "relative" and episode_seed not in self.base_acc:
            # the baseline of this seed: the base schedule (the zero action) run once
            self._begin(episode_seed)
            zero = np.zeros(len(self.names), dtype=np.float32)
            while self.k is not None:
                self.step(zero)
            self.base_acc[episode_seed] = self.val_acc
        self._begin(episode_seed)
        return self._obs(), {}

    def _begin(self, episode_seed: int) -> None:
        """Start an episode: every draw (split, init, data order, regrowth) from its seed."""
        self.episode_seed = episode_seed
        self.seeds = Seeds.derive(episode_seed)
        self.stream = build_stream(self.data, self.alma_split, self.seeds.stream)
        # T follows the stream's sizes, which depend on the seed only under replay=fraction
        self.plan = self._plan(self.stream)
        self.groups = decision_groups(len(self.plan), self.config.decisions)
        if self.reward_images:  # validation images the run's stream never uses
            extra = outside_indices(len(self.data.train_y), self.alma_split, self.seeds.stream,
                                    self.reward_images)
            for mb in self.stream.megabatches:
                mb.val = np.concatenate([mb.val, extra])
        if self.split == "train":  # the agent's networks train on its share of the pool
            keep = self.in_split.numpy()
            for mb in self.stream.megabatches:
                held_out = mb.train[~keep[mb.train]]
                mb.train = mb.train[keep[mb.train]]
                if not len(mb.train):
                    raise UserError("train_fraction leaves a megabatch without training "
                                    "samples; raise it or use more data")
                if self.config.reward == "relative":
                    # the megabatch's samples no train network sees join its validation
                    # split: at 1/10 of a 2k subset, 200 images put a 3 pp binomial noise on
                    # the reward, above the effects between schedules
                    mb.val = np.concatenate([mb.val, held_out])
        self.model, self.maskset = self._network(self.seeds.init)
        self.optimizer, self.loader, self.t = None, None, -1
        self.stats = IntervalStats(len(self.names))
        self.k, self.i, self.exp_step, self.schedule = 0, 0, 0, []
        self.val_acc = self._val_acc(0)

    def _obs(self) -> np.ndarray:
        return observation(self.maskset, self.stats, self.k / self.n_steps, self.val_acc,
                           self.data.num_classes)

    @torch.no_grad()
    def _val_acc(self, t: int) -> float:
        """Validation accuracy of megabatch t, eval mode (as ``RunContext.accuracy``)."""
        x, y = self.stream.val_set(t)
        bs, correct = self.protocol.eval_batch_size, 0
        self.model.eval()
        for i in range(0, len(y), bs):
            out = self.model(self.normalize(x[i: i + bs]))
            correct += int((out.argmax(1).cpu() == y[i: i + bs]).sum())
        self.model.train()
        return correct / len(y)

    def _start_megabatch(self, t: int) -> None:
        """What AlmaTemplate does before a megabatch: optimizer (rebuilt unless the protocol
        keeps its state), LR schedule restarted, data order seeded by (order seed, t)."""
        from alma_bench.run.training import LRSchedulePlugin, build_optimizer

        p = self.protocol
        if self.optimizer is None or not p.keep_optimizer_state:
            self.optimizer = build_optimizer(p, self.model)
        self.lr = LRSchedulePlugin(p)
        self.lr.before_training_exp(SimpleNamespace(optimizer=self.optimizer))
        x, y = self.stream.train_set(t)
        self.loader = BatchLoader(x, y, p.batch_size, self.normalize,
                                  seed=derive(self.seeds.order, t), augment=p.augment,
                                  padding=p.crop_padding)
        self.batches, self.t, self.exp_step = iter(self.loader), t, 0

    def _train_step(self) -> None:
        batch = next(self.batches, None)
        if batch is None:  # an epoch ended: the LR schedule steps per epoch, as in a run
            self.lr.after_training_epoch(None)
            self.batches = iter(self.loader)
            batch = next(self.batches)
        x, y, _ = batch
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.maskset.mask_grads()
        self.stats.add(self.maskset, loss.detach())
        self.optimizer.step()
        self.maskset.apply()
        self.exp_step += 1

    def step(self, action):
        """One decision: its action held through every interval of its group."""
        if self.k is None:
            raise RuntimeError("call reset() before step() (the episode has ended)")
        c = self.config
        self.stats = IntervalStats(len(self.names))
        before = self.val_acc
        while self.i < len(self.plan) and self.groups[self.i] == self.k:
            iv = self.plan[self.i]
            if iv.first:
                self._start_megabatch(iv.megabatch)
            targets = action_densities(c, action, self.names, iv.progress)
            if self.i == len(self.plan) - 1:  # the run's last interval: exactly on target
                targets = project(targets, self.sizes, c.density, c.min_density)
            g = torch.Generator().manual_seed(
                derive(self.seeds.strategy, "prune-regrow", self.t, self.exp_step))
            set_layer_densities(self.maskset, targets, self.pruner,
                                0.0 if iv.first else c.drop_fraction, g, self.optimizer,
                                drop_by=c.drop_by, regrow_dropped=c.regrow_dropped)
            self.schedule.append(targets)
            for _ in range(iv.steps):
                self._train_step()
            self.i += 1
        self.val_acc = self._val_acc(iv.megabatch)
        self.k += 1
        last = self.i == len(self.plan)
        if c.reward == "delta":
            reward = self.val_acc - before
        elif not last:
            reward = 0.0
        elif c.reward == "relative":  # 0 while the baseline itself runs
            reward = self.val_acc - self.base_acc.get(self.episode_seed, self.val_acc)
        else:
            reward = self.val_acc
        obs = self._obs()
        info = {"val_acc": self.val_acc, "megabatch": iv.megabatch, "targets": targets,
                "density": self.maskset.density()}
        if last:
            self.k = None
        return obs, float(reward), bool(last), False, info
