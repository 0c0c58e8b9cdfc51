"""The writing side of the result store: one directory per run, atomic writes.

    <out>/<suite>[-<scale>]/<run-id>/config.json   the fully resolved RunSpec (+ run_id, version)
                           metrics.jsonl one row per finished megabatch
                           summary.json  written when the run is done
                           status.json   {"state": "running" | "done", "megabatches_done", ...}
                           checkpoint.pt the resume point after the last finished megabatch
Every file is written to a temporary name and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def write_rows(path: Path, rows: list[dict]) -> None:
    # keys keep insertion order: layer_density stays in model order for reports
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class RunDir:
    """Paths of one run's directory."""

    def __init__(self, root: Path, folder: str, run_id: str):
        self.path = Path(root) / folder / run_id
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.status = self.path / "status.json"
        self.checkpoint = self.path / "checkpoint.pt"

    def is_done(self) -> bool:
        return (read_json(self.status) or {}).get("state") == "done" and self.summary.exists()
