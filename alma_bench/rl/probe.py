"""A schedule problem whose best answer is known by construction, for showing the agent learns.

:class:`KnownBestEnv` has the real environment's spaces (one action in [-1, 1] per prunable
layer, the normalised observation of 3 features per layer plus progress, loss and validation
accuracy), its number of decisions and its relative terminal reward (the return minus that of
the zero action, the base schedule), but the return is an analytic function of the actions
with a known best schedule ``best`` (one action per decision and layer), plus Gaussian noise
of a set size relative to the effect: ``effect`` is how far a uniformly random policy falls
below the best on average, ``noise`` the reward's standard deviation in units of ``effect``.

An agent trained here with the schedule agent's own settings (:func:`alma_bench.rl.agent.learn`)
must close most of the gap between a random policy and the best within its episode budget,
before its learning on real networks means anything (tests/test_rl.py).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class KnownBestEnv(gym.Env):
    """T decisions of L per-layer actions; terminal reward q(a) - q(0) + noise, where
    q(a) = -effect * mean((a - best)^2) / mean(1/3 + best^2), so a uniformly random policy
    scores -effect on average and ``best`` scores 0."""

    metadata = {"render_modes": []}

    def __init__(self, best: np.ndarray, effect: float = 0.05, noise: float = 0.5,
                 seed: int = 0):
        self.best = np.asarray(best, dtype=np.float64)  # (T, L)
        self.T, self.L = self.best.shape
        self.effect, self.noise = effect, noise
        self.scale = effect / float(np.mean(1 / 3 + self.best ** 2))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.L,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3 * self.L + 3,), dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.k = None

    @property
    def n_steps(self) -> int:
        return self.T

    def quality(self, actions: np.ndarray) -> float:
        """q of a (T, L) schedule of actions (clipped to [-1, 1], as the real env clips)."""
        a = np.clip(np.asarray(actions, dtype=np.float64).reshape(self.T, self.L), -1, 1)
        return -self.scale * float(np.mean((a - self.best) ** 2))

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3 * self.L + 3, dtype=np.float32)
        if self.taken:  # the densities the last action set, as the real env observes them
            obs[0: 3 * self.L: 3] = np.clip(self.taken[-1], -1, 1)
        obs[-3] = 2 * self.k / self.T - 1
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.k, self.taken = 0, []
        return self._obs(), {}

    def step(self, action):
        self.taken.append(np.asarray(action, dtype=np.float64).reshape(-1))
        self.k += 1
        last = self.k == self.T
        reward = 0.0
        if last:
            reward = (self.quality(np.stack(self.taken)) - self.quality(np.zeros_like(self.best))
                      + self.noise * self.effect * float(self.rng.standard_normal()))
        return self._obs(), float(reward), last, False, {}


def greedy_actions(model, env: KnownBestEnv) -> np.ndarray:
    """The trained agent's deterministic schedule in ``env`` (its LSTM carried through)."""
    obs, _ = env.reset()
    state, out = None, []
    for k in range(env.T):
        action, state = model.predict(obs, state=state, episode_start=np.array([k == 0]),
                                      deterministic=True)
        out.append(np.asarray(action).reshape(-1))
        obs, *_ = env.step(action)
    return np.stack(out)


def gap_closed(env: KnownBestEnv, actions: np.ndarray) -> float:
    """The share of the random-to-best gap a schedule closes (1: the best, 0: random)."""
    return 1.0 + env.quality(actions) / env.effect


def train_on_probe(best: np.ndarray, episodes: int, n_envs: int, seed: int,
                   effect: float = 0.05, noise: float = 0.5):
    """An agent trained on the probe with the schedule agent's settings: (model, returns)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    from alma_bench.rl.agent import learn, preserved_rng

    with preserved_rng():
        env = VecMonitor(DummyVecEnv([
            (lambda i=i: KnownBestEnv(best, effect, noise, seed=1000 * seed + i))
            for i in range(n_envs)]))
        try:
            return learn(env, True, episodes, n_envs, seed)
        finally:
            env.close()
