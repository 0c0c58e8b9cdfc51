"""The writing side of the result store: one directory per run (``RunDir``, in
alma_bench/store/rundir.py), crash-safe files (here).

    <out>/<suite>[-<scale>]/<run-id>/config.json   the fully resolved RunSpec (+ run_id, version)
                           metrics.jsonl       one row per finished megabatch
                           summary.json        written when the run is done
                           status.json         state (running | done | failed), megabatches_done,
                                               sha256 of checkpoint.pt and metrics.jsonl
                           checkpoint.pt       the resume point after the last finished megabatch
                           checkpoint.prev.pt  the one before it, while the run is unfinished
                           error.log           traceback of a failed run
                           run.lock            owner of a run being trained (store/locks.py)

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
import signal
import threading
from pathlib import Path

import torch

from alma_bench.errors import StoreError, store_error
from alma_bench.store.locks import HOST, pid_alive

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
    """Hold SIGINT, SIGTERM, SIGHUP and the preemption signals SIGUSR1/SIGUSR2 (SLURM's
    warning before a timeout, which submitit turns into a requeue and an exit) back until the
    block is done, then deliver them: no signal lands between the files of one megabatch.
    (Only the main thread can do this.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
    old = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)
