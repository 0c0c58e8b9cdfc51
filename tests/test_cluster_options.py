"""The cluster options without a cluster: the lock timeout (and the heartbeat it sets), the
bound on GPU memory when several runs share a GPU, and their one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import time

import pytest

from alma_bench.cli import main
from alma_bench.errors import UserError
from alma_bench.execute import commands, executors
from alma_bench.store import locks


def test_lock_timeout_sets_when_another_nodes_lock_is_stale(tmp_path, monkeypatch):
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": "another-node", "pid": 1}))
    old = time.time() - 10
    os.utime(lock, (old, old))  # its owner stopped touching it 10 s ago
    monkeypatch.delenv(locks.TIMEOUT_ENV, raising=False)
    assert locks.stale_after() == 300 and locks.heartbeat_every() == 30
    assert locks.holder(lock) is not None  # 10 s is nothing under the default
    monkeypatch.setenv(locks.TIMEOUT_ENV, "5")
    assert locks.heartbeat_every() == 1.0  # five touches per timeout
    assert locks.holder(lock) is None
    assert locks.RunLock(lock).try_acquire() is None  # taken over
    assert json.loads(lock.read_text())["host"] == locks.HOST
    monkeypatch.setenv(locks.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="positive number of seconds"):
        locks.stale_after()


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpu-memory", "1.5"], "--gpu-memory must be a fraction in (0, 1], got 1.5"),
    (["--lock-timeout", "0"], "--lock-timeout must be > 0 seconds, got 0.0"),
    (["--retries", "-1"], "--retries must be >= 0, got -1"),
    (["--executor", "slurm", "--slurm", "account"], "--slurm takes KEY=VALUE"),
    (["--executor", "slurm", "--slurm-runs-per-task", "0"], "--slurm-runs-per-task must be"),
])
def test_cluster_options_fail_in_one_line(tmp_path, capsys, tiny_suite, argv, message):
    if "slurm" in argv:
        pytest.importorskip("submitit")
    code = main(["run", str(tiny_suite), "--out", str(tmp_path / "o"), "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(("executor", "workers", "ray_gpus", "asked", "want"), [
    ("local", 4, None, None, 0.9 / 4),  # N workers on one GPU share 90% of it
    ("local", 1, None, None, None),  # one run: the whole GPU
    ("ray", 1, 0.25, None, 0.9 * 0.25),  # a quarter of a GPU per Ray task
    ("ray", 1, 1.0, None, None),
    ("slurm", 1, None, None, None),  # a task has its GPUs to itself
    ("local", 4, None, 0.5, 0.5),  # asked
])
def test_gpu_memory_per_run(monkeypatch, executor, workers, ray_gpus, asked, want):
    monkeypatch.setattr(executors, "_wants_cuda", lambda device: True)
    args = argparse.Namespace(executor=executor, device="cuda", ray_gpus=ray_gpus,
                              gpu_memory=asked)
    got = commands._gpu_memory(args, workers)
    assert (got is None) if want is None else got == pytest.approx(want)
    monkeypatch.setattr(executors, "_wants_cuda", lambda device: False)
    assert commands._gpu_memory(args, workers) == asked  # on the CPU: only when asked
