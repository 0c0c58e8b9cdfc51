"""Reliability: one training per run across processes, failure isolation, crash-safe files,
and one line (with a documented exit code) for every bad input. One test per failure mode."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, TINY, write_suite

from alma_bench.cli import main
from alma_bench.store.files import read_rows

HOST = socket.gethostname()  # what a lock file and a temporary file name record

PLUGIN = str(ROOT / "tests" / "plugins" / "reliability.py")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_dir(out: Path) -> Path:
    (folder,) = [p for p in (out / "tiny").iterdir() if p.is_dir()]
    return folder


def rows(folder: Path, volatile=("wall_time",)) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in volatile}
            for r in read_rows(folder / "metrics.jsonl")]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if ".tmp" in p.name]


def starts(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(tuple(line.split()[:2]) for line in lines)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny suite (dense, 4 megabatches, seed 0) run once, undisturbed."""
    base = tmp_path_factory.mktemp("reference")
    suite = write_suite(base / "tiny.yaml")
    assert main(["run", str(suite), "--out", str(base / "out"), "--quiet"]) == 0
    return base


def copy_of(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(suite file, results folder) holding a copy of the finished reference run."""
    shutil.copytree(reference / "out", tmp_path / "out")
    return reference / "tiny.yaml", tmp_path / "out"


def interrupt_at_status_write(monkeypatch, args, n: int) -> int:
    """Run, sending SIGINT to this process while the n-th status.json is being renamed into
    place (between the megabatch's metrics and its status): a Ctrl-C at the worst moment."""
    real = os.replace
    seen = []

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("status.json"):
            seen.append(dst)
            if len(seen) == n:
                os.kill(os.getpid(), signal.SIGINT)
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
    # jobs with SIGINT ignored, and then the signal would never arrive
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return main([str(a) for a in args])
    finally:
        monkeypatch.setattr(os, "replace", real)
        signal.signal(signal.SIGINT, old)


# --- two runners on one results folder ------------------------------------------------------


def test_two_runners_train_each_run_once(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "tiny.yaml", strategies=[{"name": "count-dense"}],
                        seeds=[0, 1, 2])
    common = [str(suite), "--plugin", PLUGIN, "--quiet", "--workers", "1"]
    env = {**os.environ, "ALMA_TEST_STARTS": str(tmp_path / "starts")}
    procs = [subprocess.Popen([sys.executable, "-m", "alma_bench.cli", "run", *common,
                               "--out", str(tmp_path / "shared")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    monkeypatch.setenv("ALMA_TEST_STARTS", str(tmp_path / "single-starts"))
    assert main(["run", *common, "--out", str(tmp_path / "single")]) == 0
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    assert starts(tmp_path / "starts") == [("count-dense", str(s)) for s in range(3)]
    single = {d.name: rows(d) for d in (tmp_path / "single" / "tiny").iterdir()}
    shared = {d.name: rows(d) for d in (tmp_path / "shared" / "tiny").iterdir()}
    assert len(single) == 3 and shared == single
    assert not list((tmp_path / "shared").rglob("run.lock"))


def test_stale_lock_is_taken_over_and_a_live_one_waited_for_or_skipped(tmp_path, capsys):
    from alma_bench.spec.config import load_suite

    suite = write_suite(tmp_path / "tiny.yaml", stream={**TINY["stream"], "megabatches": 2})
    out = tmp_path / "out"
    folder = out / "tiny" / load_suite(str(suite)).runs[0].run_id
    folder.mkdir(parents=True)
    lock = folder / "run.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": HOST, "pid": dead.pid}))  # its owner died
    code, _, err = run(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 0 and err == "" and not lock.exists()
    (folder / "status.json").unlink()  # unfinished again (it resumes from its checkpoint)
    alive = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(json.dumps({"host": HOST, "pid": alive.pid}))
        code, _, err = run(capsys, "run", suite, "--out", out, "--quiet", "--no-wait")
        assert code == 4
        assert f"is being trained by pid {alive.pid} on {HOST}; skipped (--no-wait)" in err
        # waiting: the owner dies 1 s later, so its lock is stale and this process goes on
        threading.Timer(1.0, lambda: (alive.kill(), alive.wait())).start()
        code, _, err = run(capsys, "run", suite, "--out", out, "--quiet")
        assert code == 0 and "waiting for it" in err, err
    finally:
        alive.kill()
        alive.wait()
    assert not lock.exists()


# --- failure isolation ----------------------------------------------------------------------


# the pool variant spawns two workers that import torch and Avalanche: slow on a busy machine
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_failing_run_is_recorded_and_the_suite_goes_on(tmp_path, capsys, monkeypatch, workers):
    suite = write_suite(tmp_path / "tiny.yaml", stream={**TINY["stream"], "megabatches": 3},
                        strategies=[{"name": "count-dense"}, {"name": "boom"},
                                    {"name": "count-dense", "label": "other",
                                     "params": {"tag": 1}}])
    (tmp_path / "boom").touch()
    monkeypatch.setenv("ALMA_TEST_BOOM", str(tmp_path / "boom"))
    monkeypatch.setenv("ALMA_TEST_STARTS", str(tmp_path / "starts"))
    out = tmp_path / "out"
    args = ["run", suite, "--plugin", PLUGIN, "--out", out, "--quiet"]
    code, said, err = run(capsys, *args, "--workers", workers)
    assert code == 4
    state = {json.loads((d / "config.json").read_text())["label"]:
             json.loads((d / "status.json").read_text()) for d in (out / "tiny").iterdir()}
    assert state["count-dense"]["state"] == state["other"]["state"] == "done"
    assert state["boom"]["state"] == "failed"
    assert state["boom"]["error"] == "RuntimeError: boom in megabatch 2"
    log = out / "tiny" / next(d.name for d in (out / "tiny").iterdir()
                              if (d / "error.log").exists()) / "error.log"
    assert "Traceback" in log.read_text() and "raise RuntimeError" in log.read_text()
    assert "1 of 3 runs did not finish (exit code 4)" in err
    assert "boom seed 0 (" in err
    assert f"failed: RuntimeError: boom in megabatch 2; traceback in {log}" in err
    assert "count-dense" in said and "other" in said  # the table of the finished runs
    # again, without --retry-failed: nothing trains, the failure is reported again
    code, _, err = run(capsys, *args)
    assert code == 4 and "failed before, skipped (--retry-failed reruns it)" in err
    assert len(starts(tmp_path / "starts")) == 3
    # fixed: --retry-failed reruns only it
    (tmp_path / "boom").unlink()
    code, _, err = run(capsys, *args, "--retry-failed")
    assert code == 0, err
    assert starts(tmp_path / "starts") == sorted([("boom", "0")] * 2 + [("count-dense", "0"),
                                                                         ("other", "0")])
    assert not (log.exists() or leftovers(out))


def test_nan_loss_fails_the_run_not_the_suite(tmp_path, capsys):
    suite = write_suite(tmp_path / "tiny.yaml", strategies=["dense", "scratch"])
    out = tmp_path / "out"
    code, _, err = run(capsys, "run", suite, "--out", out, "--quiet", "--workers", "1",
                       "--set", "protocol.lr=1e6")
    assert code == 4
    assert "2 of 2 runs did not finish" in err
    assert err.count("NonFiniteError: ") == 2
    for d in (out / "tiny").iterdir():
        assert json.loads((d / "status.json").read_text())["state"] == "failed"


# --- crash-safe files -----------------------------------------------------------------------


def test_sigint_during_a_commit_leaves_consistent_files(tmp_path, monkeypatch, reference):
    out = tmp_path / "out"
    code = interrupt_at_status_write(
        monkeypatch, ["run", reference / "tiny.yaml", "--out", out, "--quiet"], n=2)
    assert code == 130
    folder = run_dir(out)
    assert leftovers(out) == []
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "running" and status["megabatches_done"] == 2
    assert len(read_rows(folder / "metrics.jsonl")) == 2
    assert not (folder / "run.lock").exists()
    assert main(["run", str(reference / "tiny.yaml"), "--out", str(out), "--quiet"]) == 0
    assert rows(folder) == rows(run_dir(reference / "out"))


def test_truncated_checkpoint_of_unfinished_run_falls_back(tmp_path, monkeypatch, capsys,
                                                          reference):
    out = tmp_path / "out"
    interrupt_at_status_write(
        monkeypatch, ["run", reference / "tiny.yaml", "--out", out, "--quiet"], n=3)
    capsys.readouterr()
    ckpt = run_dir(out) / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = run(capsys, "run", reference / "tiny.yaml", "--out", out, "--quiet")
    assert code == 0
    assert err.count("\n") == 1 and "checkpoint.pt is damaged (unreadable: " in err
    assert "resuming from checkpoint.prev.pt (2 megabatches done)" in err
    assert rows(run_dir(out)) == rows(run_dir(reference / "out"))


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.jsonl"])
def test_damaged_file_of_finished_run_is_noticed(tmp_path, capsys, reference, name):
    suite, out = copy_of(reference, tmp_path)
    path = run_dir(out) / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    code, said, err = run(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 0 and "already done" not in said
    assert err.count("\n") == 1 and f"{name} is damaged (checksum mismatch)" in err
    if name == "metrics.jsonl":  # the checkpoint holds the rows: nothing is retrained
        assert "resuming from checkpoint.pt (4 megabatches done)" in err
        assert rows(run_dir(out), ()) == rows(run_dir(reference / "out"), ())
    else:
        assert "no usable checkpoint, restarting from megabatch 1" in err
    assert rows(run_dir(out)) == rows(run_dir(reference / "out"))
    code, said, _ = run(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 0 and "already done" in said


@pytest.mark.parametrize("damage, problem", [
    ("garbage", "status.json is unreadable (JSONDecodeError)"),
    ("edited", "status.json is damaged (checksum mismatch)"),  # valid JSON, wrong numbers
])
def test_damaged_status_is_one_line_and_repaired(tmp_path, capsys, reference, damage, problem):
    suite, out = copy_of(reference, tmp_path)
    path = run_dir(out) / "status.json"
    if damage == "garbage":
        path.write_text('{"state": "do')
    else:
        path.write_text(path.read_text().replace('"megabatches_done": 4', '"megabatches_done": 3'))
    code, said, err = run(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 0, err
    assert err.count("\n") == 1
    assert f"{problem}; resuming from checkpoint.pt (4 megabatches done)" in err
    assert json.loads(path.read_text())["state"] == "done"
    assert rows(run_dir(out), ()) == rows(run_dir(reference / "out"), ())


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path, capsys, reference):
    suite, out = copy_of(reference, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = run_dir(out)
    old = [folder / f".status.json.tmp{dead.pid}", folder / f".checkpoint.pt.tmp{dead.pid}@{HOST}"]
    live = folder / f".config.json.tmp{os.getpid()}@{HOST}"
    for p in (*old, live):
        p.write_text("half")
    assert run(capsys, "run", suite, "--out", out, "--quiet")[0] == 0
    assert leftovers(out) == [live]


# --- I/O problems: one line, exit code 3 ------------------------------------------------------


@pytest.mark.parametrize("problem", ["file", "read-only", "no-permission"])
def test_unwritable_results_path_is_one_line_exit_3(tmp_path, capsys, monkeypatch, problem):
    suite = write_suite(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    expect = {"file": f"{out} is a file, not a folder", "read-only": "read-only file system",
              "no-permission": "permission denied"}[problem]
    if problem == "file":
        out.write_text("not a folder")
    elif problem == "no-permission" and os.geteuid() != 0:
        out.mkdir(mode=0o500)
    else:  # root ignores permissions, and a read-only mount needs privileges: the OS's answer
        err = errno.EROFS if problem == "read-only" else errno.EACCES
        real = os.mkdir

        def mkdir(path, *a, **kw):
            if str(path).startswith(str(out)):
                raise OSError(err, os.strerror(err), str(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(os, "mkdir", mkdir)
    code, _, err = run(capsys, "run", suite, "--out", out, "--quiet")
    assert code == 3
    assert err.count("\n") == 1 and err.startswith(f"alma-bench: error: cannot write {out}")
    assert expect in err


def test_a_folder_gone_read_only_mid_run_names_the_write_not_the_lock(tmp_path, capsys,
                                                                     monkeypatch, reference):
    """The 4th sync (megabatch 1's metrics) finds the file system read-only, and so does the
    lock's removal after it: the one line is about the write that failed."""
    out = tmp_path / "out"
    real_fsync, real_unlink, calls = os.fsync, os.unlink, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 4:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_fsync(fd)

    def unlink(path, *a, **kw):
        if len(calls) >= 4 and str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    code, _, err = run(capsys, "run", reference / "tiny.yaml", "--out", out, "--quiet")
    assert code == 3
    assert err.count("\n") == 1 and "read-only file system" in err
    assert "run.lock" not in err, err


def test_disk_full_is_one_line_exit_3_and_leaves_no_temp_files(tmp_path, capsys, monkeypatch,
                                                               reference):
    out = tmp_path / "out"
    real, calls = os.fsync, []

    def fsync(fd):  # the 4th sync (metrics of megabatch 1) finds the disk full
        calls.append(fd)
        if len(calls) >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run(capsys, "run", reference / "tiny.yaml", "--out", out, "--quiet")
    monkeypatch.setattr(os, "fsync", real)
    assert code == 3
    assert err.count("\n") == 1 and "no space left on device" in err
    assert err.startswith(f"alma-bench: error: cannot write {out}")
    assert leftovers(out) == [] and not list(out.rglob("run.lock"))
    assert run(capsys, "run", reference / "tiny.yaml", "--out", out, "--quiet")[0] == 0
    assert rows(run_dir(out)) == rows(run_dir(reference / "out"))


# --- bad input: one line, exit code 2 ---------------------------------------------------------


def _limited(args, tmp_path, gib=8):
    """The CLI in a subprocess that cannot use more than ``gib`` GiB (an OOM is an error)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gib * 2**30, gib * 2**30))

    return subprocess.run([sys.executable, "-m", "alma_bench.cli", *map(str, args)],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300,
                          cwd=tmp_path)


def test_megabatches_beyond_the_data_fail_before_allocating(tmp_path):
    # in a subprocess with a memory cap: splitting into 10**9 parts used to exhaust memory
    suite = write_suite(tmp_path / "tiny.yaml")
    done = _limited(["run", suite, "--out", tmp_path / "out", "--quiet",
                     "--set", "stream.megabatches=1000000000"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == ("alma-bench: error: 1000000000 megabatches of 240 samples leave a "
                           "megabatch with no training sample; use fewer megabatches\n")


def test_data_larger_than_memory_fails_before_allocating(tmp_path, capsys):
    suite = write_suite(tmp_path / "tiny.yaml")
    code, _, err = run(capsys, "run", suite, "--out", tmp_path / "out", "--quiet",
                       "--set", "stream.n_train=2000000000")
    assert code == 2 and err.count("\n") == 1
    assert "synthetic stream of 2000000000+64 images of 3x8x8 needs" in err
    assert "GiB of memory; make it smaller" in err


def test_duplicate_yaml_key_is_an_error(tmp_path, capsys):
    suite = write_suite(tmp_path / "tiny.yaml")
    suite.write_text(suite.read_text() + "seeds: [1, 2]\n")
    code, _, err = run(capsys, "run", suite, "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert f"malformed suite YAML {suite} at line" in err and "duplicate key 'seeds'" in err


def test_string_where_a_number_is_expected_is_an_error(tmp_path, capsys):
    suite = write_suite(tmp_path / "tiny.yaml",
                        strategies=[{"name": "osp", "params": {"density": "0.5"}}])
    code, _, err = run(capsys, "run", suite, "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert "strategy 'osp' parameter 'density' must be a number, got '0.5'" in err
    # an unquoted 1e-4 is a number (PyYAML alone reads it as a string)
    suite = write_suite(tmp_path / "s.yaml", protocol={**TINY["protocol"], "lr": "1e-4"})
    suite.write_text(suite.read_text().replace("'1e-4'", "1e-4"))
    assert run(capsys, "run", suite, "--dry-run")[0] == 0


def test_data_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "data").write_text("not a folder")
    suite = write_suite(tmp_path / "s.yaml", stream={
        "name": "imagefolder", "data_root": str(tmp_path / "data"), "megabatches": 2})
    code, _, err = run(capsys, "run", suite, "--out", tmp_path / "o", "--quiet")
    assert code == 2
    assert err == f"alma-bench: error: data root is a file, not a folder: {tmp_path / 'data'}\n"


def test_third_party_warning_does_not_leak_into_an_error(tmp_path):
    (tmp_path / "noisy_dep.py").write_text(
        "import warnings\nwarnings.warn('noisy third-party import', UserWarning)\n")
    plugin = tmp_path / "uses_noisy.py"
    plugin.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport noisy_dep\n")
    suite = write_suite(tmp_path / "s.yaml")
    done = _limited(["run", suite, "--plugin", plugin, "--set", "protocol.epochs=0"], tmp_path)
    assert done.returncode == 2
    assert done.stderr == "alma-bench: error: protocol: epochs must be >= 1, got 0\n"
