"""The writing side of the result store: one directory per run, crash-safe files.

    <out>/<suite>[-<scale>]/<run-id>/config.json   the fully resolved RunSpec (+ run_id, version)
                           metrics.jsonl       one row per finished megabatch
                           summary.json        written when the run is done
                           status.json         state (running | done | failed), megabatches_done,
                                               sha256 of checkpoint.pt and metrics.jsonl
                           checkpoint.pt       the resume point after the last finished megabatch
                           checkpoint.prev.pt  the one before it, while the run is unfinished
                           error.log           traceback of a failed run
                           run.lock            owner of a run being trained (alma_bench/locks.py)

* Every file is written to ``.<name>.tmp<pid>@<host>`` and renamed over its name, so a kill
  never leaves half a file; the temporary file is removed when its write fails or is
  interrupted, and ``clean_stale_tmp`` removes those of writers that died (SIGKILL).
* A megabatch commits checkpoint (which holds the rows), then metrics, then status, with
  SIGINT/SIGTERM held back until all three are on disk; after a SIGKILL between them the
  checkpoint is the truth, and the runner resumes from it.
* status.json records the sha256 of checkpoint.pt and metrics.jsonl, so a damaged file is
  noticed: a run whose files do not match is not done, and it resumes from the last
  checkpoint that loads and matches (``resume_point``), or restarts, saying which.
* An OSError while writing is a ``StoreError``: one line naming the path, exit code 3.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

from alma_bench.errors import StoreError, store_error
from alma_bench.locks import HOST, pid_alive

_TMP = re.compile(r"^\..+\.tmp(\d+)(?:@(.+))?$")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}@{HOST}")


def _stage(path: Path, data: bytes | None = None, write=None) -> Path:
    """``data`` (or what ``write(file)`` writes) in a synced temporary file next to ``path``,
    to be renamed over it."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            if write is None:
                f.write(data)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # disk full, Ctrl-C: the temporary file goes with the writer
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise store_error(path, e) from None
        raise
    return tmp


def _seal(status: dict) -> dict:
    """``status`` with the sha256 of its other fields: a damaged status file is noticed even
    when it is still valid JSON."""
    body = {k: v for k, v in status.items() if k != "status_sha256"}
    blob = json.dumps(body, sort_keys=True, default=str).encode()
    return {**body, "status_sha256": hashlib.sha256(blob).hexdigest()}


def _replace(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except BaseException as e:
        with contextlib.suppress(OSError):
            if src.name.startswith("."):  # only ever a temporary file
                os.unlink(src)
        if isinstance(e, OSError):
            raise store_error(dst, e) from None
        raise


def ensure_dir(path: Path) -> None:
    """``mkdir -p``, with a one-line StoreError naming the part of the path that is wrong."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for p in (*reversed(path.parents), path):
            if p.exists() and not p.is_dir():
                raise StoreError(f"cannot write {path}: {p} is a file, "
                                 "not a folder") from None
        raise store_error(path, e) from None


def check_writable(folder: Path) -> None:
    """Fail now, before any training, when results cannot be written under ``folder``."""
    ensure_dir(folder)
    probe = Path(folder) / ".write-probe"
    write_bytes(probe, b"")
    with contextlib.suppress(OSError):
        probe.unlink()


def write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (fsync, rename); returns its sha256."""
    path = Path(path)
    _replace(_stage(path, data), path)
    return hashlib.sha256(data).hexdigest()


def atomic_write_text(path: Path, text: str) -> str:
    return write_bytes(path, text.encode())


def write_json(path: Path, obj) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, default=None):
    """The JSON in ``path``; ``default`` when it is missing or unreadable (a damaged file says
    nothing: callers that must know use ``RunDir.inspect``)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_rows(path: Path, rows: list[dict]) -> str:
    # keys keep insertion order: layer_density stays in model order for reports
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` made atomic (streamed: a data cache may be large)."""
    path = Path(path)
    _replace(_stage(path, write=lambda f: torch.save(state, f)), path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _load_verified(path: Path) -> tuple[dict | None, str | None, str]:
    """(checkpoint, its sha256, None) or (None, sha256, what is wrong with it)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, "", e.strerror or str(e)
    sha = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or garbage: torch raises several types
        return None, sha, f"unreadable: {type(e).__name__}"
    if not (isinstance(state, dict) and isinstance(state.get("rows"), list)
            and state.get("megabatches_done") == len(state["rows"])):
        return None, sha, "not a checkpoint of a run"
    return state, sha, None


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove temporary files of dead writers on this host in ``folder`` (a run folder) and its
    artifacts; returns them. Writers on other hosts, or alive, are left alone."""
    removed = []
    for p in [*Path(folder).glob(".*.tmp*"), *Path(folder).glob("artifacts/.*.tmp*")]:
        m = _TMP.match(p.name)
        if not m or (m.group(2) or HOST) != HOST or pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back until the block is done, then deliver them: a Ctrl-C
    never lands between the files of one megabatch. (Only the main thread can do this.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)


class RunDir:
    """Paths of one run's directory, and its state as its files say it."""

    def __init__(self, root: Path, folder: str, run_id: str):
        self.path = Path(root) / folder / run_id
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.status = self.path / "status.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.prev_checkpoint = self.path / "checkpoint.prev.pt"
        self.error_log = self.path / "error.log"
        self.lock = self.path / "run.lock"
        self._sha: str | None = None  # of the checkpoint this process wrote or resumed from

    def read_status(self) -> tuple[dict | None, str | None]:
        """(status, None), (None, None) when there is none, or (None, what is wrong)."""
        try:
            status = json.loads(self.status.read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            return None, f"status.json is unreadable ({type(e).__name__})"
        if not isinstance(status, dict) or "state" not in status:
            return None, "status.json is not a status"
        if "status_sha256" in status and _seal(status)["status_sha256"] != status["status_sha256"]:
            return None, "status.json is damaged (checksum mismatch)"
        return status, None

    def write_status(self, status: dict) -> None:
        write_json(self.status, _seal(status))

    def inspect(self) -> tuple[str, list[str]]:
        """(state, problems): state is new, running, failed, done, or damaged (a status that
        cannot be read, or a finished run whose files do not match their checksums)."""
        status, bad = self.read_status()
        if bad:
            return "damaged", [bad]
        if status is None:
            return ("running" if self.checkpoint.exists() else "new"), []
        if status["state"] != "done":
            return str(status["state"]), []
        problems = []
        if not isinstance(read_json(self.summary), dict):
            problems.append("summary.json is missing or unreadable")
        want = status.get("metrics_sha256")
        if want is not None:
            if sha256_file(self.metrics) != want:
                problems.append("metrics.jsonl is damaged (checksum mismatch)")
        else:  # written before checksums: the rows must at least all be there
            try:
                if len(read_rows(self.metrics)) != status.get("megabatches_done"):
                    problems.append("metrics.jsonl has the wrong number of rows")
            except ValueError:
                problems.append("metrics.jsonl is damaged (unreadable line)")
        want = status.get("checkpoint_sha256")
        if want is not None and sha256_file(self.checkpoint) != want:
            problems.append("checkpoint.pt is damaged (checksum mismatch)")
        return ("damaged" if problems else "done"), problems

    def is_done(self) -> bool:
        return self.inspect()[0] == "done"

    def resume_point(self, say) -> dict | None:
        """The newest checkpoint that loads and matches its recorded checksum (None: start
        from scratch). ``say`` gets one line when damaged files change what is resumed."""
        _, problems = self.inspect()
        status = self.read_status()[0] or {}
        done = status.get("megabatches_done")
        candidates = [(self.checkpoint, status.get("checkpoint_sha256"), done),
                      (self.prev_checkpoint, status.get("previous_sha256"),
                       done - 1 if isinstance(done, int) else None)]
        for path, want, at in candidates:
            if not path.exists():
                continue
            ckpt, sha, bad = _load_verified(path)
            # a checkpoint newer than the status (killed before the status was written) has
            # no recorded checksum yet: that it loads is its check
            if ckpt is not None and want and ckpt["megabatches_done"] == at and sha != want:
                ckpt, bad = None, "checksum mismatch"
            if ckpt is None:
                if not any(p.startswith(path.name) for p in problems):
                    problems.append(f"{path.name} is damaged ({bad})")
                if path == self.checkpoint:  # or the next commit would keep it as fallback
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            if problems:
                say(f"{'; '.join(problems)}; resuming from {path.name} "
                    f"({ckpt['megabatches_done']} megabatches done)")
            self._sha = sha
            return ckpt
        if problems:
            say(f"{'; '.join(problems)}; no usable checkpoint, restarting from megabatch 1")
        return None

    def commit(self, checkpoint: dict, rows: list[dict], n_megabatches: int) -> None:
        """One finished megabatch: checkpoint, metrics, status, never split by a Ctrl-C. The
        checkpoint it replaces is kept as checkpoint.prev.pt (the fallback)."""
        with signals_deferred():
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            data = buf.getvalue()
            tmp = _stage(self.checkpoint, data)
            if self.checkpoint.exists():
                _replace(self.checkpoint, self.prev_checkpoint)
            _replace(tmp, self.checkpoint)
            prev, self._sha = self._sha, hashlib.sha256(data).hexdigest()
            metrics_sha = write_rows(self.metrics, rows)
            self.write_status({
                "state": "running", "megabatches_done": len(rows), "n_megabatches": n_megabatches,
                "checkpoint_sha256": self._sha, "previous_sha256": prev,
                "metrics_sha256": metrics_sha, "updated": time.time()})

    def finish(self, rows: list[dict], summary: dict, n_megabatches: int) -> None:
        """The run is done: metrics (rewritten from the rows), summary, status."""
        with signals_deferred():
            metrics_sha = write_rows(self.metrics, rows)
            write_json(self.summary, summary)
            self.write_status({
                "state": "done", "megabatches_done": len(rows), "n_megabatches": n_megabatches,
                "checkpoint_sha256": self._sha or sha256_file(self.checkpoint),
                "metrics_sha256": metrics_sha, "updated": time.time()})
            with contextlib.suppress(FileNotFoundError):
                self.prev_checkpoint.unlink()  # only unfinished runs need a fallback

    def record_failure(self, error: str, trace: str) -> None:
        """Mark the run failed: the error in status.json, the traceback in error.log."""
        old, _ = self.read_status()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.error_log, trace)
        self.write_status({**(old or {}), "state": "failed", "error": error,
                                 "log": self.error_log.name, "failed_at": time.time()})

    def reset(self) -> None:
        """Forget a failed attempt (``--retry-failed`` reruns from scratch); config stays."""
        for p in (self.status, self.checkpoint, self.prev_checkpoint, self.metrics,
                  self.summary, self.error_log):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        shutil.rmtree(self.path / "artifacts", ignore_errors=True)
