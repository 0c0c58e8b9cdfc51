"""Grids in suites: one run per combination of listed values (cartesian product).

A strategy entry's ``grid: {density: [0.05, 0.1]}`` sweeps its own parameters; the suite's
``grid: {protocol.lr: [0.1, 0.01], stream.replay: [all, none]}`` sweeps dotted keys of the
stream, model and protocol sections, for every entry. ``--grid KEY=[...]`` on the command line
is ``--set grid.KEY=[...]``; ``strategies.<label>.<param>`` keys there go to that entry's grid.
Each combination is a run with its own id and a label naming its values, entry keys first:
``osp-snip[density=0.1]``, ``dense[protocol.lr=0.1]``, ``osp[density=0.1,protocol.lr=0.1]``.
Only values under ``grid`` sweep: a list anywhere else is a value (``milestones: [20, 40]``).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable
from typing import Any

from alma_bench.errors import UserError, unknown


#: Suite sections a suite-level grid may sweep (the strategy's own go on its entry).
def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists stay values (a list is a value, not a sweep); an
    empty mapping (a strategy without parameters) adds no key."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


SECTIONS = ("stream", "model", "protocol")


def sweeps(grid: Any, where: str) -> dict[str, list]:
    """A grid mapping checked: dotted keys (nested mappings flatten) to non-empty lists."""
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise UserError(f"{where}: grid must be a mapping of keys to lists of values, "
                        f"got {grid!r}")
    flat = flatten(grid)
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid key '{key}' needs a non-empty list of values, "
                            f"got {values!r}")
    return flat


def suite_grid(raw: dict, label_of) -> dict[str, list]:
    """The suite's grid as {dotted key: values}; ``strategies.<label>.<param>`` keys (and
    ``strategies.<label>.<part>.<param>`` of a composition) are moved into that entry's own
    grid (``raw`` is edited). ``label_of(entry)`` is an entry's label."""
    flat = sweeps(raw.get("grid"), "suite")
    entries = raw.get("strategies") or []
    for key in [k for k in flat if k.split(".")[0] == "strategies"]:
        parts = key.split(".")
        if len(parts) < 3:
            raise UserError(f"grid key '{key}': a strategy's grid key is "
                            "strategies.<label>.<param>")
        label, param = ".".join(parts[1:-1]), parts[-1]
        # a composition's key names a part too: strategies.<label>.<part>.<param>
        named = [lb for lb in map(label_of, entries) if key.startswith(f"strategies.{lb}.")]
        if named and label not in named:
            label = max(named, key=len)
            param = key[len(f"strategies.{label}."):]
        for i, entry in enumerate(entries):
            if label_of(entry) == label:
                entry = entries[i] = {"name": entry} if isinstance(entry, str) else entry
                if not isinstance(entry.get("grid") or {}, dict):
                    raise UserError(f"strategy entry '{label}': grid must be a mapping")
                entry["grid"] = {**(entry.get("grid") or {}), param: flat.pop(key)}
                break
        else:
            raise unknown("strategy label", label, [label_of(e) for e in entries])
    return flat


def check_keys(grid: dict[str, list], valid: Iterable[str], where: str) -> None:
    """Every key of ``grid`` must be one of ``valid``: one line naming them otherwise."""
    valid = sorted(valid)
    for key in grid:
        if key not in valid:
            raise UserError(f"{where}: {unknown('grid key', key, valid)}")


def combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest; [{}] for none."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def assigned(raw: dict, values: dict[str, Any]) -> dict:
    """``raw`` with each dotted key set to its value, ``raw`` left as it was: only the
    mappings on a key's path are copied (a deep copy of the whole suite per grid point made
    a 10,000-point grid take a minute and a gigabyte)."""
    out = dict(raw)
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            child = node.get(p)
            if child is None:  # an empty section (``protocol:``) in the YAML
                child = {}
            if not isinstance(child, dict):
                raise UserError(f"grid key '{key}': '{p}' is not a mapping")
            node[p] = child = dict(child)  # copied on the way down: raw is shared
            node = child
        node[last] = copy.deepcopy(value)
    return out


def label(base: str, values: dict[str, Any]) -> str:
    """``base[k=v,...]``; the base alone when nothing is swept."""
    if not values:
        return base
    shown = (v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)
             for v in values.values())
    return f"{base}[{','.join(f'{k}={v}' for k, v in zip(values, shown))}]"


def rejoin(labels: list[str]) -> list[str]:
    """``--strategies`` split on commas: glue back the pieces of a label like
    ``osp[density=0.1,protocol.lr=0.1]`` whose commas sit inside its brackets."""
    out: list[str] = []
    depth = 0
    for piece in labels:
        if depth > 0:
            out[-1] += "," + piece
        else:
            out.append(piece)
        depth += piece.count("[") - piece.count("]")
    return out
