"""Shared fixtures: a tiny synthetic suite that trains in about a second per run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

# Tiny models run fastest on one thread, and OpenMP threads that spin-wait on a shared 2-core
# machine can be 50x slower; tests (and their subprocesses) use one.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

TINY = {
    "name": "tiny",
    "description": "tiny synthetic suite for tests",
    "stream": {"name": "synthetic", "n_train": 240, "n_test": 64, "classes": 3, "size": 8,
               "megabatches": 4, "replay": "all"},
    "model": {"name": "small-cnn", "width": 4},
    "protocol": {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
                 "weight_decay": 5e-4, "patience": None, "eval_batch_size": 256},
    "strategies": [{"name": "dense"}],
    "seeds": [0],
}


def write_suite(path: Path, **over) -> Path:
    """Write the tiny suite with top-level fields replaced by ``over``."""
    suite = {**TINY, **over}
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    return write_suite(tmp_path / "tiny.yaml")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # decoded-data caches go to a per-session temp dir, never the user's home
    monkeypatch.setenv("ALMA_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))


def cli_process(*args) -> subprocess.Popen:
    """``python -m alma_bench.cli ARGS`` in a subprocess (stderr piped, for its message)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "alma_bench.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def sigkill_after(proc: subprocess.Popen, suite_dir: Path, megabatches: int):
    """SIGKILL ``proc`` once a run under ``suite_dir`` has finished ``megabatches``; returns
    the last status read and the status files found then."""
    status, found = None, []
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(suite_dir.glob("*/status.json"))
        if found:
            status = json.loads(found[0].read_text())
            if status["megabatches_done"] >= megabatches:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return status, found


def rows_by_run(folder: Path) -> dict:
    """{(label, seed): metrics rows without wall_time} of every run folder in ``folder``:
    what must be identical between an undisturbed run and a killed-and-resumed one."""
    from alma_bench.store.files import read_rows

    out = {}
    for d in folder.iterdir():
        if d.is_dir() and (d / "config.json").exists():
            cfg = json.loads((d / "config.json").read_text())
            out[(cfg["label"], cfg["seed"])] = [
                {k: v for k, v in r.items() if k != "wall_time"}
                for r in read_rows(d / "metrics.jsonl")]
    return out


def traces(path: Path) -> list:
    """The JSON lines a test plugin appended to ``path`` (none when it never wrote)."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
