"""Which runs may be averaged: runs whose resolved configs are equal except for the seed.

ALGORITHMS.md section 2: "only runs whose resolved configs are equal except for the seed are
ever averaged". A run's config key is its identity (what is hashed into its run id) without the
seed, flattened to dotted keys (``protocol.lr``, ``strategy.params.density``). Runs of one
suite and label with equal keys form a *group*; a label with several configs in one frame gets
one group per config, labelled by the keys that differ, e.g. ``dense [protocol.lr=0.001]``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from alma_bench.spec.grid import flatten

if TYPE_CHECKING:  # pandas only types the frames: importing this module loads no pandas
    import pandas as pd

#: Dotted keys that hold the strategy's own parameters; shown without the prefix in labels.
PARAMS = "strategy.params."
#: Shown for a key that a group's config lacks but another group's has.
ABSENT = "-"
# A grid expansion's label: the entry's label, then "[key=value,...]" (alma_bench/spec/grid.py).
_GRID_SUFFIX = re.compile(r"\[[^\[\]]*\]$")


def config_key(config: dict, dep_keys: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's config without its seed, flattened.

    Prefer ``config["identity"]`` (exactly what the run id hashes, written by the runner);
    older config.json files lack it, so fall back to the sections that made up the identity
    then. ``scale`` is kept in both: the same run found under two scale folders is one
    computation and must not count as two seeds. ``deps`` (run ids of the runs this one
    depends on) change with the seed by construction, so each is replaced by its run's own
    config key (``dep_keys``: run id -> key) when that run is loaded too.
    """
    ident = config.get("identity")
    if isinstance(ident, dict):
        base = {k: v for k, v in ident.items() if k != "seed"}
    else:
        base = {k: config.get(k) for k in ("stream", "model", "protocol", "strategy")}
    base["scale"] = config.get("scale")
    deps = base.pop("deps", None)
    if isinstance(deps, dict):
        base["deps"] = {p: (dep_keys or {}).get(str(r), str(r)) for p, r in deps.items()}
    return flatten(base)


def dump(key: dict[str, Any]) -> str:
    """Canonical text of a config key: equal keys, equal text."""
    return json.dumps(key, sort_keys=True, default=str)


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def show(value: Any) -> str:
    """A value as it reads in a label: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def display_key(key: str) -> str:
    """A config key as a label shows it: a strategy parameter by its bare name."""
    if key == "strategy.name":
        return "strategy"
    return key[len(PARAMS):] if key.startswith(PARAMS) else key


def base_label(label: str) -> str:
    """The suite entry's label of a grid expansion (``osp[density=0.1]`` -> ``osp``)."""
    return _GRID_SUFFIX.sub("", str(label))


def differing(keys: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every one of ``keys`` (absent counts as a
    value), in first-seen order."""
    names = list(dict.fromkeys(k for key in keys for k in key))
    return [n for n in names
            if len({dump(key[n]) if n in key else "\0absent" for key in keys}) > 1]


def column(key: str) -> str:
    """The frame column of a config key: dotted keys as they are (``protocol.lr``); top-level
    ones (``threads``, ``scale``) get a ``config.`` prefix, so they never clash with run
    columns such as ``scale``."""
    return key if "." in key else f"config.{key}"


def assign_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (needs suite, label, config = ``dump(config_key)``) with ``group`` (a stable
    id of suite, label and config), ``group_label`` and one column per config key that varies
    across the frame (``column(key)``). Labels are relative to the frame: run it again after
    filtering rows, so a label with one config left in view carries no suffix."""
    configs = {c: json.loads(c) for c in runs["config"].dropna().unique()}
    stale = {column(k) for key in configs.values() for k in key}
    runs = runs.drop(columns=[c for c in runs.columns if c in stale])
    runs["group"] = [short_hash(f"{s}\0{lb}\0{c}") for s, lb, c
                     in zip(runs["suite"], runs["label"], runs["config"])]
    names = {}
    for (suite, label), rows in runs.groupby(["suite", "label"], sort=False, dropna=False):
        distinct = list(dict.fromkeys(rows["config"]))
        keys = [configs.get(c, {}) for c in distinct]
        diff = differing(keys) if len(distinct) > 1 else []
        for c, key in zip(distinct, keys, strict=True):
            suffix = ", ".join(f"{display_key(k)}={show(key[k]) if k in key else ABSENT}"
                               for k in diff)
            names[(suite, label, c)] = f"{label} [{suffix}]" if suffix else str(label)
    runs["group_label"] = [names[k] for k in zip(runs["suite"], runs["label"], runs["config"])]
    parsed = runs["config"].map(lambda c: configs.get(c, {}))
    for key in differing(list(configs.values())):
        runs[column(key)] = parsed.map(lambda d, k=key: d.get(k))
    return runs


def varying_columns(runs: pd.DataFrame) -> list[str]:
    """The columns ``assign_groups`` gives the config keys that vary across ``runs``."""
    configs = [json.loads(c) for c in runs["config"].dropna().unique()]
    return [column(k) for k in differing(configs) if column(k) in runs.columns]


def shared_and_own(keys: dict[str, dict[str, Any]]) -> tuple[dict, dict[str, dict]]:
    """Split configs (name -> flat key) into the part all share and each one's own part."""
    diff = set(differing(list(keys.values())))
    first = next(iter(keys.values()), {})
    shared = {k: v for k, v in first.items() if k not in diff}
    own = {name: {k: v for k, v in key.items() if k in diff} for name, key in keys.items()}
    return shared, own
