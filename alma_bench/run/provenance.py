"""Provenance of a run: the code, library versions, device, threads and command that made it.

Recorded in each run's ``config.json``. A finished run is reused whenever its id matches (the
id covers what changes the numbers: config, seed, threads, core and strategy revisions, and a
strategy that is not alma-bench's own by its code: the sha256 of its file and the version of
the package that ships it, so an edited plugin is a new run); when it was made under a
different environment (another commit, library version, device, plugin file or entry-point
package), the reuse is said in one line rather than silently mixed into a table.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("alma-bench", "torch", "torchvision", "avalanche-lib")
# what may differ between the run on disk and now without changing its id, but is worth a word
_COMPARED = ("git_commit", "git_dirty", "versions", "device", "plugins", "entry_points")
_GROUPS = ("alma_bench.strategies", "alma_bench.streams", "alma_bench.models",
           "alma_bench.pruners", "alma_bench.schedules")


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """Commit and dirty flag of the checkout this package runs from (None outside one)."""
    root = Path(__file__).resolve().parents[2]  # alma_bench/run/provenance.py
    if not (root / ".git").exists():
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def entry_point_packages() -> dict:
    """``{distribution: version}`` of every installed package other than alma-bench that
    registers components through an ``alma_bench.*`` entry-point group."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "alma-bench" and any(
                ep.group in _GROUPS for ep in dist.entry_points):
            out[name] = dist.version
    return dict(sorted(out.items()))


def file_hashes(paths) -> dict:
    """sha256 of each plugin file (a module name, not a file, maps to None)."""
    out = {}
    for p in paths or ():
        path = Path(p)
        out[str(p)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out


def invocation(plugins=()) -> dict:
    """The part of the environment known where the command runs (passed to workers)."""
    return {"command": list(sys.argv), "plugins": file_hashes(plugins)}


def provenance(device, threads: int, env: dict | None = None) -> dict:
    env = env or {}
    return {**git_state(), "versions": versions(), "device": str(device), "threads": threads,
            "python": sys.version.split()[0], "command": env.get("command", list(sys.argv)),
            "plugins": env.get("plugins", {}), "entry_points": entry_point_packages()}


def note_reuse(spec, config: dict, device: str, env: dict | None) -> None:
    """One line on stderr when a finished run is reused under a different environment."""
    old = config.get("provenance")
    if not isinstance(old, dict):
        return
    now = provenance(_device_name(device), spec.threads, env)
    diff = [f"{k} {old.get(k)!r} -> {now.get(k)!r}" for k in _COMPARED
            if k in old and old.get(k) != now.get(k)
            and not (k in ("plugins", "entry_points") and not now[k])]
    if diff:
        print(f"alma-bench: reusing finished run {spec.run_id} ({spec.label}, seed {spec.seed}) "
              f"made under a different environment: {'; '.join(diff)}", file=sys.stderr)


def _device_name(device: str) -> str:
    from alma_bench.run.device import resolve_device

    return str(resolve_device(device))
