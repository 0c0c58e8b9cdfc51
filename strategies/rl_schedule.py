"""Learned per-layer density schedules (Tessera et al. 2022; ALGORITHMS.md section 10).

``prune-regrow`` with its one replaceable decision, :meth:`PruneRegrowPlugin.layer_targets`,
made by a RecurrentPPO agent: at each of the run's decision points (before a megabatch, every
``update_period`` steps of its rewiring window, at the window's end) the agent reads the
observation of :mod:`alma_bench.rl.env` (per layer: density, mean |w|, gradient norm since the
last decision; progress, training loss, validation accuracy) and returns one density per
layer; the run's final decision is projected so the run ends at exactly ``density``. Masks,
cadence, swaps and the selection rule are prune-regrow's, so the learned schedule is compared
with the handcrafted ones on equal terms.

The agent is ``agent=PATH`` (made by ``alma-bench train-agent`` for the same stream, model,
protocol and schedule parameters: anything else is a one-line error before training), or,
without one, trained at the run's first decision for ``episodes`` episodes on train networks
(seeded from the strategy seed; networks trained on this run's stream as the run trains its
own, the reward read on ``reward_images`` more pool images outside the stream's subset), saved as
``artifacts/agent.zip`` (+ ``.json``) and reused when the run resumes; the seconds it took are
``agent_train_s`` in every row. With ``agent_seed``, the agent is trained once from that seed and
shared by every run of the same environment config in the results folder (under ``agents/``,
keyed by config, episodes, envs and seed; the first run trains it, the others wait and load
it): the paper's setting, one agent evaluated on unseen networks (each run's own seed).
Each metrics row lists the megabatch's decisions (``rl_schedule``: optimizer step and
per-layer target densities).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from alma_bench.errors import UserError
from alma_bench.registry import STRATEGIES
from alma_bench.rl.decisions import decision_groups
from alma_bench.sparsity import check_density
from alma_bench.spec.config import derive
from alma_bench.strategies.prune_regrow import PruneRegrow, PruneRegrowPlugin

AGENT = "agent.zip"  # an agent trained in the run, under its artifacts/


def _rl():
    """The RL modules, or a one-line error naming the extra that installs them."""
    try:
        from alma_bench.rl import agent, env
    except ImportError as e:
        raise UserError(f"rl-schedule needs gymnasium and sb3-contrib ({e.name} is missing): "
                        "pip install 'alma-bench[rl]'") from None
    return agent, env


class RLSchedulePlugin(PruneRegrowPlugin):
    def __init__(self, ctx, params: RLSchedule):
        # the agent is trained on networks built from the run's spec: this plugin needs the
        # harness's ctx, unlike prune-regrow's; its masks still live on strategy.model
        super().__init__(params.prune_regrow(), seed=ctx.seeds.strategy, model=ctx.model,
                         run_dir=ctx.run_dir)
        self.ctx = ctx
        self.rl, (self.agent_mod, self.env_mod) = params, _rl()
        self.config = params.env_config(ctx.spec.stream, ctx.spec.model, ctx.spec.protocol)
        if params.agent is not None:  # a wrong agent fails now, not after a megabatch
            self.agent_mod.check_agent(params.agent, self.config)
        p = ctx.protocol
        # T of the environment the agent was trained in: progress k/T means the same here
        intervals = len(self.env_mod.plan(
            [len(mb.train) for mb in ctx.stream.megabatches], p.epochs, p.batch_size,
            params.update_period))
        # the env's grouping of intervals into decisions, so decision k means the same here
        self.groups = decision_groups(intervals, params.decisions)
        self.n_decisions = self.groups[-1] + 1
        self.action = None  # the agent's last action, held through its group of intervals
        self.sizes = {n: m.numel() for n, m in self.maskset.masks.items()}
        self.stats = self.env_mod.IntervalStats(len(self.sizes))
        self.policy = None
        self.k, self.obs_t, self.train_s, self.agent_sha = 0, 0, 0.0, None
        self.last_targets: dict[str, float] = {}
        self.decisions: list[dict] = []  # of the current megabatch

    def _shared_agent(self) -> Path:
        """The results folder's agent for this config and ``agent_seed``: trained here under
        an exclusive lock when absent (flock: released if this process dies), else loaded."""
        r = self.rl
        key = hashlib.sha256(json.dumps(
            {"env": self.config.to_json(), "episodes": r.episodes, "envs": r.envs,
             "seed": r.agent_seed, **r.agent_data(),
             **({"crn_seeds": r.crn_seeds} if r.crn_seeds is not None else {})},
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(self.ctx.run_dir).parent / "agents" / f"{key}.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock, contextlib.ExitStack() as stack:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, lock, fcntl.LOCK_UN)
            if not path.is_file():
                a = self.agent_mod
                model, returns, secs = a.train_agent(self.config, r.episodes, r.envs,
                                                     seed=r.agent_seed, crn_seeds=r.crn_seeds,
                                                     **r.agent_data())
                a.save_agent(model, path, self.config, {"episodes": len(returns),
                                                        "returns": returns, "train_s": secs,
                                                        "seed": r.agent_seed})
        self.train_s = json.loads(self.agent_mod.config_path(path).read_text())["train_s"]
        return path

    def _load_policy(self):
        a = self.agent_mod
        if self.rl.policy == "untrained":  # the agent as training would start it
            return a.Policy(a.new_agent(self.config, seed=derive(self.ctx.seeds.strategy,
                                                                 "rl-agent")))
        if self.rl.policy == "random":
            return a.RandomPolicy(len(self.sizes), derive(self.ctx.seeds.strategy, "random"))
        path = self.rl.agent
        if path is None and self.rl.agent_seed is not None and self.ctx.run_dir:
            path = self._shared_agent()
        own = Path(self.ctx.run_dir) / "artifacts" / AGENT if self.ctx.run_dir else None
        if path is None and own is not None and own.is_file():
            path = own  # a resumed run: the agent it trained before the interruption
        if path is not None:
            self.agent_sha = a.file_hash(path)
            return a.Policy(a.load_agent(path, self.config))
        model, returns, self.train_s = a.train_agent(
            self.config, self.rl.episodes, self.rl.envs,
            seed=derive(self.ctx.seeds.strategy, "rl-agent"), crn_seeds=self.rl.crn_seeds,
            **self.rl.agent_data())
        if own is not None:
            a.save_agent(model, own, self.config, {"episodes": len(returns),
                                                   "returns": returns,
                                                   "train_s": self.train_s})
            self.agent_sha = a.file_hash(own)
        return a.Policy(model)

    def before_training_exp(self, strategy, **kw):
        self.decisions = []
        super().before_training_exp(strategy, **kw)

    def after_backward(self, strategy, **kw):
        super().after_backward(strategy, **kw)  # masked gradients, as the env measures them
        self.stats.add(self.maskset, strategy.loss.detach())
        self.obs_t = self.t  # the next observation validates on this megabatch, as the env

    def layer_targets(self, progress: float) -> dict[str, float]:
        """The densities at this decision point of the run: at the first interval of a group
        the agent acts (it reads its own k/T, as in the environment); the action then holds
        through the group, read against the base schedule at ``progress``."""
        if self.policy is None:
            self.policy = self._load_policy()
        env, c = self.env_mod, self.config
        k = min(self.k, len(self.groups) - 1)
        if k == 0 or self.groups[k - 1] != self.groups[k] or self.action is None:
            val_acc, _ = self.ctx.accuracy(*self.ctx.stream.val_set(self.obs_t))
            obs = env.observation(self.maskset, self.stats,
                                  min(1.0, self.groups[k] / self.n_decisions), val_acc,
                                  self.ctx.stream.data.num_classes)
            self.action = self.policy.act(obs)
            self.stats = env.IntervalStats(len(self.sizes))
        targets = env.action_densities(c, self.action, list(self.sizes), progress)
        if self.t == self.ctx.n_megabatches - 1 and not self.window_open():
            # the run's last decision: the final masks are at exactly the target density
            targets = env.project(targets, self.sizes, c.density, c.min_density)
        self.k += 1
        self.last_targets = targets
        self.decisions.append({"step": self.ctx.step, "targets": targets})
        return targets

    def metrics(self) -> dict:
        kept = sum(round(self.last_targets[n] * s) for n, s in self.sizes.items())
        # MaskedTraining's fields; prune-regrow's own would ask the agent for a decision
        return {**super(PruneRegrowPlugin, self).metrics(),
                "target_density": kept / sum(self.sizes.values()),
                "drop_fraction": self.p.drop_fraction, "rl_schedule": self.decisions,
                "agent_train_s": self.train_s, "agent_sha256": self.agent_sha}

    def state_dict(self) -> dict:
        return {"k": self.k, "obs_t": self.obs_t, "stats": self.stats.state_dict(),
                "policy": self.policy.state_dict() if self.policy else None,
                "train_s": self.train_s, "last_targets": self.last_targets,
                "action": None if self.action is None else [float(a) for a in self.action]}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.obs_t, self.train_s = state["k"], state["obs_t"], state["train_s"]
        self.stats.load_state_dict(state["stats"])
        self.last_targets = state["last_targets"]
        action = state.get("action")
        self.action = None if action is None else np.asarray(action, dtype=np.float32)
        if state["policy"] is not None:
            self.policy = self._load_policy()
            self.policy.load_state_dict(state["policy"])


@STRATEGIES.register("rl-schedule")
@dataclass(frozen=True)
class RLSchedule:
    """Prune-regrow with per-layer densities chosen by a RecurrentPPO agent (learned schedule)."""

    # revision 2: the swap's defaults became SET's, as prune-regrow's (its revision 2);
    # revision 3: agents train on networks trained as a run's (reward_images), 8 CRN seeds
    revision: ClassVar[int] = 3

    density: float = 0.1  # final global density over the prunable weights
    min_density: float = 0.05  # the agent's range per layer (action [-1, 1] mapped onto it)
    max_density: float = 1.0
    pruner: Literal["magnitude", "random"] = "magnitude"  # MP-RR or RP-RR
    update_period: int = 20  # optimizer steps between decisions (the env's interval)
    drop_fraction: float = 0.3
    drop_by: Literal["pruner", "magnitude"] = "magnitude"  # the swap's criterion (prune-regrow)
    regrow_dropped: bool = True  # the swap may regrow just-dropped weights (prune-regrow)
    # final val acc minus the base schedule's on the same seed (relative), the final val acc
    # (terminal), or its change per decision (delta)
    reward: Literal["terminal", "delta", "relative"] = "relative"
    # what the agent decides (alma_bench/rl/decisions.py): one action per group of intervals,
    # a residual on base_schedule (its zero action); null, null: one absolute action per
    # interval, the first form
    decisions: int | None = 3
    base_schedule: str | None = "constant"
    agent: str | None = None  # a saved agent (.zip); none: train one in the run
    # learned: the agent (trained or loaded); untrained: its initial policy (the zero action,
    # so the base schedule), for a paired comparison with what training added; random: a
    # uniform action per decision (seeded by the run's strategy seed)
    policy: Literal["learned", "untrained", "random"] = "learned"
    episodes: int = 100  # when training in the run
    agent_seed: int | None = None  # train one agent from this seed, shared by equal runs
    envs: int = 2  # parallel environments when training in the run
    # training episodes cycle through this many seeds (common random numbers); null: fresh.
    # 4 let an agent fit its seeds' luck; 8 cost 4 more base episodes per agent
    crn_seeds: int | None = 8
    # The agent's networks train on the run's whole stream, as a run's do, and its reward is
    # read on the megabatch's validation split plus this many images of the pool outside the
    # stream's subset (none when the stream uses the whole pool, whose validation split is
    # then large). null: they train on train_fraction of the pool, the rest joining the
    # validation split: half-pool networks, whose learned schedules lost on the run's
    # full-data networks (docs/learned-decisions.md)
    reward_images: int | None = 2000
    train_fraction: float = 0.5  # with reward_images null: the agent's share of the pool
    prune_first: bool = True
    prune_last: bool = False
    prune_linear: bool = False  # every conv, no Linear layer, as every pruning strategy

    def __post_init__(self):
        check_density(self.density)
        if not 0 < self.min_density <= self.density <= 1:
            raise ValueError(f"need 0 < min_density <= density, got min_density="
                             f"{self.min_density}, density={self.density}")
        if not self.min_density <= self.max_density <= 1:
            raise ValueError(f"need min_density <= max_density <= 1, got {self.max_density}")
        if self.episodes < 1 or self.envs < 1:
            raise ValueError("episodes and envs must be >= 1")
        if self.crn_seeds is not None and self.crn_seeds < self.envs:
            raise ValueError(f"crn_seeds must be >= envs ({self.envs}) or null, got "
                             f"{self.crn_seeds}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.reward_images is not None and self.reward_images < 0:
            raise ValueError(f"reward_images must be >= 0 or null, got {self.reward_images}")
        self.prune_regrow()  # update_period and drop_fraction checked as prune-regrow does

    def cost_factor(self, spec) -> float:
        """Without an agent, the run first trains one: ``episodes`` episodes, each a training
        run of the same steps (alma_bench/execute/cost.py)."""
        if self.agent is not None or self.policy != "learned":
            return 1.0
        return 1.0 + self.episodes * (1.0 if self.reward_images is not None
                                      else self.train_fraction)

    def shared_work(self, spec) -> str | None:
        """Runs of one label with ``agent_seed`` share one agent: the first to start trains it
        and the others wait for it, so only one of them should be costed (and started early)
        as an agent's training (alma_bench/execute/cost.py)."""
        if self.agent is None and self.agent_seed is not None and self.policy == "learned":
            return f"rl-schedule agent of {spec.label}"
        return None

    def agent_data(self) -> dict:
        """What the agent's networks train on and its reward reads (train_agent's keywords,
        and part of a shared agent's key): reward_images, else train_fraction."""
        if self.reward_images is not None:
            return {"reward_images": self.reward_images}
        return {"train_fraction": self.train_fraction}

    def prune_regrow(self) -> PruneRegrow:
        """The prune-regrow whose cadence and mask updates this strategy uses."""
        return PruneRegrow(density=self.density, schedule="constant", pruner=self.pruner,
                           update_period=self.update_period, drop_fraction=self.drop_fraction,
                           drop_by=self.drop_by, regrow_dropped=self.regrow_dropped,
                           prune_first=self.prune_first,
                           prune_last=self.prune_last, prune_linear=self.prune_linear)

    def env_config(self, stream: dict, model: dict, protocol: dict):
        """The environment config of a run with these sections (the agent must match it)."""
        env = _rl()[1]
        return env.EnvConfig(
            stream=stream, model=model, protocol=protocol, density=self.density,
            min_density=self.min_density, max_density=self.max_density, pruner=self.pruner,
            update_period=self.update_period, drop_fraction=self.drop_fraction,
            drop_by=self.drop_by, regrow_dropped=self.regrow_dropped, reward=self.reward,
            decisions=self.decisions, base_schedule=self.base_schedule,
            prune_first=self.prune_first,
            prune_last=self.prune_last, prune_linear=self.prune_linear)

    def plugins(self, ctx) -> list:
        return [RLSchedulePlugin(ctx, self)]
