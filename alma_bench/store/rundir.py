"""One run's directory and its state as its files say it (the layout and the commit order
are described in alma_bench/store/files.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import torch

from alma_bench.store.files import (
    _load_verified,
    _replace,
    _seal,
    _stage,
    atomic_write_text,
    read_json,
    read_rows,
    sha256_file,
    signals_deferred,
    write_json,
    write_rows,
)


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
        config = read_json(self.config)
        if not isinstance(config, dict) or config.get("run_id") != self.path.name:
            # readers skip such a run; resuming from the final checkpoint rewrites it (no
            # megabatch is trained again)
            problems.append("config.json is missing or damaged")
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
