"""Learning curves of the learners in a results folder: do the learned decisions learn?

Two kinds of learner leave a record of their training:

* ``rl-schedule`` agents, one JSON beside each agent under ``<suite>/agents/`` with the return
  of every training episode (in the order episodes ended; with ``reward: relative`` a return
  is the episode's final validation accuracy minus that of the base schedule on its seed);
* ``imp-q`` runs, whose rows list every level's decision with its reward (against plain
  magnitude pruning on the same weights); a run's levels are its agent's episode.

For each learner: the curve, and the mean of the last 20% of its episodes (levels) minus the
first 20%; over several agents (seeds) that difference is paired per agent and given a 95%
t-interval, so "it learned" is a claim with an interval, not a look at a plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

SHARE = 0.2  # the first and last fifth of the episodes


def agent_returns(results_dir: str | Path) -> pd.DataFrame:
    """One row per training episode of every rl-schedule agent under ``results_dir``: the
    agent's file, the label of the runs that used it, its seed, episode index and return."""
    root = Path(results_dir)
    labels = _labels_by_agent(root)
    rows = []
    for path in sorted(root.rglob("agents/*.json")):
        meta = json.loads(path.read_text())
        label = labels.get(meta.get("sha256"), path.stem)
        for i, r in enumerate(meta.get("returns", [])):
            rows.append({"agent": path.stem, "label": label, "seed": meta.get("seed"),
                         "episode": i + 1, "return": float(r),
                         "train_s": meta.get("train_s")})
    return pd.DataFrame(rows, columns=["agent", "label", "seed", "episode", "return",
                                       "train_s"])


def imp_q_rewards(results_dir: str | Path) -> pd.DataFrame:
    """One row per imp-q level decision under ``results_dir``: label, seed, level, reward."""
    rows = []
    for config in sorted(Path(results_dir).rglob("config.json")):
        try:
            spec = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        strategy = spec.get("strategy") or {}
        if strategy.get("name") != "imp-q" or (strategy.get("params") or {}).get(
                "learn") is False:  # its untrained greedy policy learns nothing by design
            continue
        metrics = config.parent / "metrics.jsonl"
        if not metrics.is_file():
            continue
        for line in metrics.read_text().splitlines():
            for d in json.loads(line).get("q_decisions") or []:
                if isinstance(d, dict) and d.get("reward") is not None:
                    rows.append({"agent": config.parent.name, "label": spec.get("label"),
                                 "seed": spec.get("seed"), "episode": int(d["level"]),
                                 "return": float(d["reward"])})
    return pd.DataFrame(rows, columns=["agent", "label", "seed", "episode", "return"])


def first_last(curves: pd.DataFrame) -> pd.DataFrame:
    """Per agent: mean return of its first and last 20% of episodes, and last minus first."""
    columns = ["agent", "label", "seed", "episodes", "first", "last", "gain"]
    if curves.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for agent, c in curves.sort_values("episode").groupby("agent", sort=False):
        n = max(1, math.floor(SHARE * len(c)))
        first, last = c["return"].iloc[:n].mean(), c["return"].iloc[-n:].mean()
        out.append({"agent": agent, "label": c["label"].iloc[0], "seed": c["seed"].iloc[0],
                    "episodes": len(c), "first": first, "last": last, "gain": last - first})
    return pd.DataFrame(out, columns=columns)


def paired_gain(table: pd.DataFrame, level: float = 0.95) -> dict:
    """Mean of the per-agent gains with its t-interval (NaN below 2 agents)."""
    from scipy.special import stdtrit

    g = table["gain"].astype(float)
    n, mean = len(g), float(g.mean()) if len(g) else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": math.nan, "high": math.nan}
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * float(g.std(ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def curve_figure(curves: pd.DataFrame, title: str, ylabel: str):
    """Return per episode, one line per agent, with a rolling mean over 10 episodes."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    for i, (_, c) in enumerate(curves.sort_values("episode").groupby("agent", sort=False)):
        colour = sns.color_palette("colorblind")[i % 10]
        name = f"{c['label'].iloc[0]} (seed {c['seed'].iloc[0]})"
        ax.plot(c["episode"], c["return"], ".", color=colour, alpha=0.35, markersize=4)
        window = max(1, min(10, len(c) // 5))
        ax.plot(c["episode"], c["return"].rolling(window, min_periods=1).mean(),
                color=colour, label=f"{name}, mean of {window}")
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="episode", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def section(results_dir: str | Path, save) -> str:
    """The report's "Learning" section (empty when no learner is in ``results_dir``); figures
    go through ``save(fig, stem) -> file name``."""
    parts = []
    for curves, what, ylabel, stem in [
        (agent_returns(results_dir), "rl-schedule agents: return per training episode",
         "return (val acc - base schedule's)", "learning_rl_schedule"),
        (imp_q_rewards(results_dir), "imp-q: reward per level of the run (its episode)",
         "reward (vs magnitude pruning)", "learning_imp_q")]:
        if curves.empty:
            continue
        name = save(curve_figure(curves, what, ylabel), stem)
        table = first_last(curves)
        gain = paired_gain(table)
        lines = [f"### Learning: {what}", "", f"![{what}]({name})", "",
                 "| learner | seed | episodes | first 20% | last 20% | last - first |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r.label} | {r.seed} | {r.episodes} | {r.first:+.4f} | {r.last:+.4f} | "
                  f"{r.gain:+.4f} |" for r in table.itertuples()]
        lines += ["", f"Last minus first 20%, paired over the {gain['n']} learners: "
                  f"{gain['mean']:+.4f}, 95% t-interval [{gain['low']:+.4f}, "
                  f"{gain['high']:+.4f}].", ""]
        if "train_s" in curves and curves["train_s"].notna().any():
            secs = curves.groupby("agent")["train_s"].first()
            lines += [f"Agent training wall time: {', '.join(f'{s:.0f} s' for s in secs)}.",
                      ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _labels_by_agent(root: Path) -> dict[str, str]:
    """Agent file hash -> the label of a run that used it (from its rows)."""
    out: dict[str, str] = {}
    for config in root.rglob("config.json"):
        metrics = config.parent / "metrics.jsonl"
        try:
            label = json.loads(config.read_text()).get("label")
            first = metrics.read_text().splitlines()[0] if metrics.is_file() else ""
        except (OSError, ValueError, IndexError):
            continue
        sha = json.loads(first).get("agent_sha256") if first else None
        if sha and label:
            out.setdefault(sha, label)
    return out
