"""The SLURM executor on submitit: its options as submitit writes them into an sbatch script,
and (slow) submitit's own local executor running a suite, a preempted task requeued by
submitit, and a killed task resubmitted, each giving the rows of the local pool. No part of
submitit is mocked; the local executor runs each task as its own process, as SLURM would."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, rows_by_run, traces, write_suite

from alma_bench.cli import main

PLUGIN = str(ROOT / "tests" / "plugins" / "cluster.py")


def test_without_submitit_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    suite = write_suite(tmp_path / "tiny.yaml")
    code = main(["run", str(suite), "--executor", "slurm", "--out", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["alma-bench: error: executor 'slurm' needs submitit: pip install "
                   "'alma-bench[slurm]'"]


def test_chunks_keep_dependencies_in_one_task(tmp_path):
    from alma_bench.execute.plan import plan
    from alma_bench.execute.slurm import chunks

    suite = write_suite(tmp_path / "s.yaml", seeds=[0, 1], strategies=[
        "dense", {"name": "dpr", "label": "dpr"},
        {"name": "static", "params": {"structure": "from_run", "structure_from": "dpr"}}])
    runs = plan(str(suite)).runs
    assert len(runs) == 6
    one = chunks(runs, 1)
    # dpr and the static run that needs its mask share a task, dependency first
    pairs = [[r.label for r in c] for c in one if len(c) > 1]
    assert pairs == [["dpr", "static"], ["dpr", "static"]]
    assert sorted(len(c) for c in one) == [1, 1, 2, 2]
    three = chunks(runs, 3)  # packed, each dependency pair kept whole, dependency first
    assert len(three) < len(one) and all(len(c) <= 3 for c in three)
    for c in three:
        ids = [r.run_id for r in c]
        assert all(ids.index(d) < ids.index(r.run_id) for r in c for d in (r.deps or {}).values())
    assert sum(len(c) for c in chunks(runs, 100)) == 6 and len(chunks(runs, 100)) == 1


def test_sbatch_options_reach_submitits_script(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from alma_bench.execute.executors import Job
    from alma_bench.execute.plan import plan
    from alma_bench.execute.slurm import SlurmOptions, _executor, parse_extra

    runs = plan(str(write_suite(tmp_path / "s.yaml")), threads=2).runs
    opts = SlurmOptions(partition="gpu", time_min=90, gpus=1, mem_gb=16, max_parallel=8,
                        extra=parse_extra(["account=abc", "--qos=high", "constraint=a100"]))
    # no SLURM on this machine: stand-ins for its commands on PATH (never run) let submitit
    # build its SLURM executor, and the script it would submit is read, not submitted
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ex = _executor(submitit, opts, Job(out=tmp_path), runs, tmp_path / "logs")
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=2",
                 "--mem=16GB", "--account=abc", "--qos=high", "--constraint=a100",
                 "--signal=USR2@", "--job-name=alma-tiny"):
        assert f"#SBATCH {line}" in text, (line, text)
    assert ex._executor.max_num_timeout == 3
    from alma_bench.errors import UserError

    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_extra(["account"])


# -- with submitit's local executor (slow: each task is a fresh Python process) -------------

def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pace_suite(tmp_path, seeds, megabatches=4, pace=0.02):
    return write_suite(tmp_path / "tiny.yaml", seeds=seeds,
                       stream={**TINY["stream"], "megabatches": megabatches},
                       strategies=[{"name": "trace-dense", "params": {"pace": pace}}])


def reference(suite, tmp_path, extra=()):
    ref = tmp_path / "ref"
    assert main(["run", str(suite), "--plugin", PLUGIN, "--quiet", "--threads", "1",
                 "--workers", "1", "--out", str(ref), *extra]) == 0
    return rows_by_run(ref / "tiny")


@pytest.mark.slow
def test_submitit_local_executor_gives_the_rows_of_the_local_pool(tmp_path, monkeypatch,
                                                                  capsys):
    pytest.importorskip("submitit")
    monkeypatch.setattr("alma_bench.execute.slurm.POLL", 0.5)
    suite = write_suite(tmp_path / "tiny.yaml", strategies=["dense", "scratch"], seeds=[0, 1],
                        stream={**TINY["stream"], "megabatches": 3})
    common = ["run", str(suite), "--quiet", "--threads", "1"]
    t0 = time.time()
    assert main([*common, "--workers", "1", "--out", str(tmp_path / "ref")]) == 0
    t_ref = time.time() - t0
    slurm = [*common, "--executor", "slurm", "--slurm-cluster", "local", "--slurm-time", "10",
             "--slurm-runs-per-task", "2", "--out", str(tmp_path / "slurm")]
    capsys.readouterr()
    t0 = time.time()
    assert main([*slurm, "--no-wait"]) == 0  # submits and returns at once
    t_submit = time.time() - t0
    err = capsys.readouterr().err
    assert "SLURM: 4 new" in err and "submitted 4 runs as 2 tasks (local: job" in err
    assert "4 runs queued or running" in err
    assert t_submit < 30, t_submit
    # again, at once: nothing is submitted twice; it shows where the runs are, and waits
    assert main(slurm) == 0
    err = capsys.readouterr().err
    assert "submitted" not in err, err
    assert "SLURM: " in err and ("queued" in err or "running" in err or "4 done" in err), err
    t_all = time.time() - t0
    assert rows_by_run(tmp_path / "slurm" / "tiny") == rows_by_run(tmp_path / "ref" / "tiny")
    assert len(rows_by_run(tmp_path / "ref" / "tiny")) == 4
    # and once more: every run done, nothing submitted
    assert main(slurm) == 0
    assert "all 4 runs of suite 'tiny' were already done" in capsys.readouterr().out
    print(f"\nwall: local pool {t_ref:.1f}s, submit --no-wait {t_submit:.1f}s, "
          f"submitit local (submit to last row) {t_all:.1f}s")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["preempt", "kill"])
def test_a_task_stopped_mid_run_resumes_to_the_same_rows(tmp_path, monkeypatch, capsys, how):
    """``preempt``: SLURM's warning signal (USR2) reaches the task after megabatch 2; submitit
    checkpoints it and requeues it in the same job, and the run resumes. ``kill``: the task
    is SIGKILLed after megabatch 2 (a lost node); the next ``alma-bench run`` finds the run
    interrupted, resubmits it, and it resumes."""
    pytest.importorskip("submitit")
    from alma_bench.store.locks import pid_alive, read_owner

    monkeypatch.setattr("alma_bench.execute.slurm.POLL", 0.5)
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("ALMA_TEST_TRACE", str(trace))  # tasks inherit it
    suite = pace_suite(tmp_path, seeds=[0], megabatches=6, pace=0.03)
    t0 = time.time()
    ref = reference(suite, tmp_path)
    t_ref = time.time() - t0
    trace.unlink()
    out = tmp_path / "slurm"
    args = ["run", str(suite), "--plugin", PLUGIN, "--quiet", "--threads", "1", "--executor",
            "slurm", "--slurm-cluster", "local", "--slurm-time", "10", "--out", str(out)]
    t0 = time.time()
    assert main([*args, "--no-wait"]) == 0
    capsys.readouterr()
    run = wait_for(lambda: [d for d in (out / "tiny").iterdir() if d.is_dir()], 120,
                   "the run folder")[0]

    def after_two():
        try:
            st = json.loads((run / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return st if st.get("megabatches_done", 0) >= 2 else None

    st = wait_for(after_two, 240, "megabatch 2")
    owner = read_owner(run / "run.lock")
    assert owner is not None and st["state"] == "running"
    at = st["megabatches_done"]
    controller = int(Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(owner.pid, signal.SIGUSR2 if how == "preempt" else signal.SIGKILL)
    t_kill = time.time() - t0
    if how == "kill":  # the task, and its job (submitit's controller) with it, gone
        wait_for(lambda: not pid_alive(controller), 30, "the killed task's job to end")
    code = main(args)  # waits; after a kill it finds the run interrupted and resubmits it
    err = capsys.readouterr().err
    t_all = time.time() - t0
    assert code == 0, err
    if how == "kill":
        assert "interrupted" in err and "submitted 1 runs" in err, err
    else:  # requeued by submitit itself, in the same job: nothing submitted again
        assert "submitted" not in err, err
        logs = "".join(p.read_text() for p in (out / ".slurm" / "tiny").rglob("*_log.*"))
        assert "Requeued job" in logs and "Calling checkpoint method" in logs
    assert rows_by_run(out / "tiny") == ref
    starts = traces(trace)
    assert [s["start"] for s in starts][0] == 0 and len(starts) == 2, starts
    assert starts[1]["start"] >= at  # resumed after the megabatches done when stopped
    assert starts[0]["pid"] == owner.pid != starts[1]["pid"]
    print(f"\n{how}: task pid {owner.pid} stopped after megabatch {at} at {t_kill:.1f}s; "
          f"resumed at megabatch {starts[1]['start'] + 1}; all rows at {t_all:.1f}s "
          f"(undisturbed local run {t_ref:.1f}s)")
