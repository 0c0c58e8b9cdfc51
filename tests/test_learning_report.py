"""The report's learning curves: every learner's episodes, and last-minus-first 20% paired
over learners with a t-interval."""

from __future__ import annotations

import json

import pytest

from alma_bench.analysis import learning


def _agent(root, name, seed, returns, sha):
    (root / "agents").mkdir(parents=True, exist_ok=True)
    (root / "agents" / f"{name}.json").write_text(json.dumps(
        {"seed": seed, "returns": returns, "sha256": sha, "train_s": 12.5}))
    run = root / f"run{seed}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"label": "learned", "seed": 0}))
    (run / "metrics.jsonl").write_text(json.dumps({"agent_sha256": sha}) + "\n")


def test_first_and_last_fifth_paired_over_agents(tmp_path):
    root = tmp_path / "suite"
    # three agents that improve by 0.1, 0.2 and 0.3 between their first and last 2 episodes
    for seed, gain in enumerate([0.1, 0.2, 0.3]):
        _agent(root, f"a{seed}", seed, [0.0, 0.0] + [0.05] * 6 + [gain, gain], f"sha{seed}")
    curves = learning.agent_returns(tmp_path)
    assert len(curves) == 30 and set(curves["label"]) == {"learned"}
    table = learning.first_last(curves)
    assert table["gain"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    gain = learning.paired_gain(table)
    # mean 0.2, sd 0.1, t(0.975, 2) = 4.303: half-width 0.2484
    assert gain["n"] == 3 and gain["mean"] == pytest.approx(0.2)
    assert gain["low"] == pytest.approx(0.2 - 0.2484, abs=1e-3)
    saved = []
    text = learning.section(tmp_path, lambda fig, stem: saved.append(stem) or "f.png")
    assert saved == ["learning_rl_schedule"] and "| learned | 1 | 10 |" in text
    assert "paired over the 3 learners: +0.2000" in text


def test_no_learner_no_section(tmp_path):
    assert learning.section(tmp_path, lambda fig, stem: "x") == ""
    assert learning.paired_gain(learning.first_last(learning.agent_returns(tmp_path)))[
        "n"] == 0
