"""RecurrentPPO agents for :class:`~alma_bench.rl.env.SparsityScheduleEnv`: training on train
networks, saving with the config they were trained for, loading with a config check,
deterministic evaluation on an unseen network, and the policy a run steps through.

Only sb3-contrib's ``RecurrentPPO`` with ``MlpLstmPolicy`` learns here; this module wires it
to the environment (vectorised envs, a tqdm bar of episode rewards, seeds) and nothing more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from alma_bench.errors import UserError
from alma_bench.rl.env import EnvConfig, SparsityScheduleEnv
from alma_bench.spec.config import derive

# A small LSTM: the policy reads ~3 numbers per layer, and RecurrentPPO on CPU is slow enough
# (ALGORITHMS.md section 10) without sb3's default 256 units.
FIRST_FORM_POLICY = {"lstm_hidden_size": 64, "net_arch": [64]}
FIRST_FORM_LR = 3e-3  # the first form's step (its learning test found 1e-3 too small)
# The residual form (alma_bench/rl/decisions.py), tuned on the known-best probe at the real
# reward's noise (alma_bench/rl/probe.py, tests/test_rl.py; docs/learned-decisions.md):
# exploration around the zero action (the base schedule) with std 0.5 of an action unit: with
# std 0.1 or 0.3 the reward differences exploration makes drown in the seed noise (measured:
# 0.6-0.8 of the gap closed, against 0.8-0.96 here); the std is learned, so it shrinks as
# the policy settles.
POLICY_KWARGS = {**FIRST_FORM_POLICY, "log_std_init": math.log(0.5)}
LEARNING_RATE = 1e-3
# A terminal reward copied to every decision (gamma = lambda = 1, as AMC): a decision's
# advantage is the episode's return minus the value estimate, normalised per update; a wide
# clip and many epochs let the few updates of a 100-episode budget move the policy
PPO_KWARGS = {"gamma": 1.0, "gae_lambda": 1.0, "n_epochs": 30, "clip_range": 0.5,
              "ent_coef": 0.0}
EPISODES_PER_UPDATE = 10  # whole episodes (over all envs) per PPO update
MIN_ROLLOUT = 64  # the first form (one decision per interval): decisions per update at least


def config_path(agent_path: str | Path) -> Path:
    """The JSON beside an agent's zip: the environment config it was trained for."""
    return Path(agent_path).with_suffix(".json")


def _make_env(config_json: dict, split: str, train_fraction: float, one_thread: bool,
              seed_cycle: tuple[int, ...] | None = None, reward_images: int = 0):
    if one_thread:  # a SubprocVecEnv worker: K workers share the cores, one thread each
        torch.set_num_threads(1)
    return SparsityScheduleEnv(EnvConfig.from_json(config_json), split=split,
                               train_fraction=train_fraction, seed_cycle=seed_cycle,
                               reward_images=reward_images)


def seed_cycles(seed: int, crn_seeds: int | None, n_envs: int) -> list:
    """Each env's cycle of episode seeds (common random numbers): ``crn_seeds`` seeds derived
    from the agent's seed, dealt out to the envs so no two envs run the same seed (each
    seed's base episode then runs once); None: fresh seeds every episode."""
    if crn_seeds is None:
        return [None] * n_envs
    seeds = [derive(seed, "crn", i) for i in range(crn_seeds)]
    return [tuple(seeds[i::n_envs]) for i in range(n_envs)]


def make_vec_env(config: EnvConfig, n_envs: int = 1, split: str = "train",
                 train_fraction: float = 0.5, cycles: list | None = None,
                 reward_images: int = 0):
    """K environments: in subprocesses when K > 1 (the env step, training, dominates), else
    in this process; wrapped in VecMonitor so episode returns reach the callback."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    if n_envs < 1:
        raise UserError(f"--envs must be >= 1, got {n_envs}")
    cycles = cycles or [None] * n_envs
    fns = [partial(_make_env, config.to_json(), split, train_fraction, n_envs > 1, cycles[i],
                   reward_images) for i in range(n_envs)]
    if n_envs == 1:
        return VecMonitor(DummyVecEnv(fns))
    # Workers fork from a forkserver that imported torch and the harness once (seconds on a
    # busy machine, Avalanche above all), instead of every worker importing them again; no
    # effect if this process's forkserver is already running.
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return VecMonitor(SubprocVecEnv(fns))
    multiprocessing.set_forkserver_preload(["alma_bench.rl.env", "alma_bench.run.training"])
    return VecMonitor(SubprocVecEnv(fns, start_method="forkserver"))


@contextlib.contextmanager
def preserved_rng():
    """sb3 seeds Python's, numpy's and torch's global generators; a run that trains an agent
    in-process must draw afterwards exactly what it would have drawn without it."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _episode_bar(episodes: int, enabled: bool):
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class EpisodeBar(BaseCallback):
        """A tqdm bar of finished episodes with the last and mean episode reward."""

        def _on_training_start(self) -> None:
            self.bar = tqdm(total=episodes, desc="agent episodes", unit="ep",
                            disable=not enabled, leave=False)
            self.returns: list[float] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
                    self.bar.update(1)
                    self.bar.set_postfix_str(f"reward {self.returns[-1]:.3f} "
                                             f"(mean {np.mean(self.returns[-10:]):.3f})")
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return EpisodeBar()


def _zero_action_head(model) -> None:
    """The policy's mean action starts at exactly 0 whatever it observes: the base schedule
    (sb3 initialises the head with a small orthogonal gain, which leans each run differently)."""
    head = model.policy.action_net
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)


def make_ppo(learnable: bool, env, seed: int, n_steps: int, n_envs: int,
             ppo: dict | None = None):
    """RecurrentPPO as the schedule agent is configured: for the residual form (``learnable``,
    alma_bench/rl/decisions.py) the settings above and a zeroed action head."""
    from sb3_contrib import RecurrentPPO

    kw = {"learning_rate": LEARNING_RATE if learnable else FIRST_FORM_LR, "n_steps": n_steps,
          "batch_size": n_steps * n_envs,
          "policy_kwargs": POLICY_KWARGS if learnable else FIRST_FORM_POLICY,
          **(PPO_KWARGS if learnable else {}), **(ppo or {})}
    model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, device="cpu", **kw)
    if learnable:
        _zero_action_head(model)
    return model


def learn(env, learnable: bool, episodes: int, n_envs: int, seed: int,
          progress: bool = False, ppo: dict | None = None):
    """A new agent trained on the vectorised ``env`` for ``episodes`` episodes, whole rollouts
    of whole episodes: (model, episode returns)."""
    T = int(env.get_attr("n_steps", [0])[0])
    if learnable:  # whole episodes, EPISODES_PER_UPDATE each
        want = max(1, math.ceil(EPISODES_PER_UPDATE / n_envs))
    else:  # about MIN_ROLLOUT decisions over all envs
        want = max(1, math.ceil(MIN_ROLLOUT / (T * n_envs)))
    # spread evenly over the updates, so at most n_envs x rollouts - 1 are added
    rollouts = math.ceil(episodes / (n_envs * want))
    per_env = math.ceil(episodes / (n_envs * rollouts))
    n_steps = T * per_env
    model = make_ppo(learnable, env, seed, n_steps, n_envs, ppo)
    bar = _episode_bar(rollouts * n_envs * per_env, progress)
    model.learn(total_timesteps=rollouts * n_steps * n_envs, callback=bar)
    return model, bar.returns


def new_agent(config: EnvConfig, seed: int = 0):
    """The agent as training starts it (its untrained policy), without training it."""
    with preserved_rng():
        env = make_vec_env(config, 1, "train")
        try:
            T = int(env.get_attr("n_steps", [0])[0])
            return make_ppo(config.base_schedule is not None, env, seed, T, 1)
        finally:
            env.close()


def train_agent(config: EnvConfig, episodes: int, n_envs: int = 1, seed: int = 0,
                train_fraction: float = 0.5, progress: bool = False, ppo: dict | None = None,
                crn_seeds: int | None = None, reward_images: int | None = None):
    """RecurrentPPO trained on train networks for ``episodes`` episodes (rounded up to whole
    rollouts of all envs); env i's episodes are seeded from ``seed + i`` (or cycle through its
    share of ``crn_seeds`` seeds). The networks train on ``train_fraction`` of the pool (the
    train split) or, with ``reward_images``, on all of it as a run's do, the reward read on
    that many more images outside the stream's subset. Returns (model, episode returns,
    seconds)."""
    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    start = time.perf_counter()
    split = "train" if reward_images is None else "full"
    with preserved_rng():
        env = make_vec_env(config, n_envs, split, train_fraction,
                           seed_cycles(seed, crn_seeds, n_envs), reward_images or 0)
        try:
            model, returns = learn(env, config.base_schedule is not None, episodes, n_envs,
                                   seed, progress, ppo)
        finally:
            env.close()
    return model, returns, time.perf_counter() - start


def save_agent(model, path: str | Path, config: EnvConfig, meta: dict | None = None) -> Path:
    """``path`` (a .zip, sb3's format) and the config it was trained for beside it (.json)."""
    path = Path(path)
    if path.suffix != ".zip":
        raise UserError(f"an agent is saved as a .zip, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    config_path(path).write_text(json.dumps(
        {"env_config": config.to_json(), "sha256": file_hash(path), **(meta or {})},
        indent=1, sort_keys=True, default=str) + "\n")
    return path


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_agent(path: str | Path, config: EnvConfig) -> dict:
    """The saved metadata of the agent at ``path``; a one-line UserError when it is missing
    or was trained for a different environment config."""
    path, meta_path = Path(path), config_path(path)
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"agent {path} not found (needs {path.name} and {meta_path.name}; "
                        "make one with alma-bench train-agent)")
    meta = json.loads(meta_path.read_text())
    diff = EnvConfig.from_json(meta["env_config"]).differences(config)
    if diff:
        raise UserError(f"agent {path} was trained for a different environment config "
                        f"(differs in {', '.join(diff)}); retrain it for this run")
    return meta


def load_agent(path: str | Path, config: EnvConfig):
    """The RecurrentPPO agent at ``path``, after :func:`check_agent`."""
    from sb3_contrib import RecurrentPPO

    check_agent(path, config)
    return RecurrentPPO.load(Path(path), device="cpu")


class Policy:
    """The agent acting deterministically through one episode, one decision at a time, with
    its LSTM state (saved with a run's checkpoint, so a resumed run decides the same)."""

    def __init__(self, model):
        self.model = model
        self.lstm = None  # (hidden, cell), numpy; None before the first decision

    def act(self, obs: np.ndarray) -> np.ndarray:
        action, self.lstm = self.model.predict(obs, state=self.lstm,
                                               episode_start=np.array([self.lstm is None]),
                                               deterministic=True)
        return action

    def state_dict(self) -> dict:
        return {"lstm": None if self.lstm is None else [torch.from_numpy(a.copy())
                                                         for a in self.lstm]}

    def load_state_dict(self, state: dict) -> None:
        self.lstm = None if state["lstm"] is None else tuple(t.numpy() for t in state["lstm"])


class RandomPolicy:
    """A uniform action in [-1, 1] per decision, from a seeded generator (resumable)."""

    def __init__(self, n_layers: int, seed: int):
        self.n, self.rng = n_layers, np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.n).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def evaluate(model, config: EnvConfig, seed: int, split: str = "full") -> dict:
    """One deterministic episode on an unseen network (initialised from ``seed``, which no
    training episode used) over the full training set: its final validation accuracy and
    density, return and per-decision schedule."""
    env = SparsityScheduleEnv(config, split=split)
    policy = Policy(model)
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, done, _, info = env.step(policy.act(obs))
        total += reward
    return {"val_acc": info["val_acc"], "density": info["density"], "return": total,
            "schedule": env.schedule}


def suite_config(suite: str, scale: str | None = None, sets: list[str] = ()):
    """(rl-schedule strategy, its environment config, run seed, results name) of a suite: its
    first ``rl-schedule`` entry, or the strategy's defaults on the suite's stream, model and
    protocol when it has none; the seed is the suite's first."""
    from alma_bench.registry import STRATEGIES
    from alma_bench.spec.config import load_suite

    spec = load_suite(suite, scale, list(sets))
    entries = [r for r in spec.runs if r.strategy["name"] == "rl-schedule"]
    run = (entries or spec.runs)[0]
    strategy = STRATEGIES.create("rl-schedule", **(run.strategy["params"] if entries else {}))
    config = strategy.env_config(run.stream, run.model, run.protocol)
    return strategy, config, run.seed, spec.results_name
