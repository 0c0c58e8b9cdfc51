"""Composed strategies: one suite entry made of several registered strategies.

A suite entry ``{name: [app, "avalanche:ewc"], params: {app: {...}, "avalanche:ewc": {...}}}``
(or the name ``app+avalanche:ewc``) trains one model with the plugins of every part, their
hooks running in the listed order (Avalanche calls plugins in list order). Its resolved name is
the parts joined by ``+`` (its default label), its params one mapping per part, so the run's
identity covers every part, each part's ``revision`` included. At most one part may own the
masks: two mask sets on one model would overwrite each other's masks.

A single strategy goes through the same functions unchanged (its params are the flat mapping
of its dataclass), so callers never branch on the kind of entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from alma_bench.errors import UserError
from alma_bench.registry import STRATEGIES, code_identity

SEP = "+"


def canonical(name: Any) -> str:
    """An entry's ``name`` (a string, or a list of parts) as the resolved name string."""
    if isinstance(name, list):
        if not name or not all(isinstance(n, str) for n in name):
            raise UserError(f"a composed strategy's name is a non-empty list of strategy "
                            f"names, got {name!r}")
        name = SEP.join(name)
    if not isinstance(name, str):
        raise UserError(f"a strategy's name must be a string or a list of names, got {name!r}")
    parts = name.split(SEP)
    for p in parts:
        STRATEGIES.get(p)  # an unknown part: one line naming the valid ones
    if len(set(parts)) < len(parts):
        raise UserError(f"composed strategy '{name}' lists a part twice; a part's params are "
                        "keyed by its name")
    return name


def parts(name: str) -> list[str]:
    return name.split(SEP)


def composed(name: str) -> bool:
    return SEP in name


def param_keys(name: str) -> list[str]:
    """Valid parameter keys: the strategy's own, or ``<part>.<param>`` for a composition."""
    if not composed(name):
        return list(STRATEGIES.get(name).params())
    return [f"{p}.{k}" for p in parts(name) for k in STRATEGIES.get(p).params()]


def merge(name: str, params: dict, combo: dict) -> dict:
    """``params`` with one grid combination applied (``<part>.<param>`` keys for a
    composition, whose params are one mapping per part)."""
    if not composed(name):
        return {**params, **combo}
    out = {p: dict(v) if isinstance(v, dict) else v for p, v in params.items()}
    for key, value in combo.items():
        part, _, param = key.partition(".")
        out.setdefault(part, {})[param] = value
    return out


def create(name: str, params: dict):
    """The strategy object of a resolved name: a registered strategy, or a ``Composed``."""
    if not composed(name):
        return STRATEGIES.create(name, **params)
    names = parts(name)
    bad = sorted(set(params) - set(names))
    if bad:
        raise UserError(f"params of '{name}' are one mapping per part; unknown part(s) "
                        f"{', '.join(bad)}. Valid: {', '.join(names)}")
    for p in names:
        if not isinstance(params.get(p) or {}, dict):
            raise UserError(f"params of '{name}': '{p}' must be a mapping of its parameters, "
                            f"got {params[p]!r}")
    return Composed(tuple((p, STRATEGIES.create(p, **(params.get(p) or {}))) for p in names))


def resolved_params(obj) -> dict:
    """The params recorded in a RunSpec: every field, defaults included (per part), but a
    field the class lists in ``later_params`` (added after runs were published, with the
    value that leaves their numbers unchanged) only when set otherwise, so adding one moved
    no run id."""
    if isinstance(obj, Composed):
        return {name: _params(o) for name, o in obj.parts}
    return _params(obj)


def omit_later(d: dict, later: dict) -> dict:
    """``d`` without the fields of ``later`` (fields added after results were published) that
    hold the value ``later`` gives them, the one that leaves those results as they were: the
    ids and keys hashed from ``d`` did not move when the field was added."""
    return {k: v for k, v in d.items() if k not in later or v != later[k]}


def _params(obj) -> dict:
    if not dataclasses.is_dataclass(obj):
        return {}
    return omit_later(dataclasses.asdict(obj), getattr(type(obj), "later_params", {}))


def revision(name: str):
    """The ``revision`` that enters a run's identity: the class's (1, the default, is left
    out: None), or per part ``{part: revision}`` for the parts that declare one."""
    if name not in STRATEGIES and not composed(name):
        return None
    revs = {p: getattr(STRATEGIES.get(p).cls, "revision", 1) for p in parts(name)
            if p in STRATEGIES}
    if not composed(name):
        rev = revs.get(name, 1)
        return rev if rev != 1 else None
    revs = {p: r for p, r in revs.items() if r != 1}
    return revs or None


def code(name: str):
    """The code identity (``registry.code_identity``) of a strategy that is not alma-bench's
    own, or per part ``{part: identity}`` for a composition's such parts; None when every
    part is built in, so a built-in strategy's run id is what it always was."""
    if name not in STRATEGIES and not composed(name):
        return None
    codes = {p: code_identity(STRATEGIES.get(p).cls) for p in parts(name) if p in STRATEGIES}
    codes = {p: c for p, c in codes.items() if c}
    if not composed(name):
        return codes.get(name)
    return codes or None


def dependency_params(strategy: dict) -> dict[str, str]:
    """Parameter -> the label of the entry it names (``depends_on``), over every part."""
    name, params = strategy["name"], strategy["params"]
    out: dict[str, str] = {}
    for p in parts(name):
        own = (params.get(p) or {}) if composed(name) else params
        for key in getattr(STRATEGIES.get(p).cls, "depends_on", ()):
            if own.get(key) is not None:
                if key in out:  # ctx.deps is keyed by the parameter: one run per name
                    raise UserError(f"composed strategy '{name}': two parts set {key}")
                out[key] = own[key]
    return out


@dataclass(frozen=True)
class Composed:
    """Several strategies on one model: the plugins of every part, in the listed order."""

    parts: tuple[tuple[str, Any], ...]

    def plugins(self, ctx) -> list:
        out, owner = [], None
        for name, strategy in self.parts:
            mine = list(strategy.plugins(ctx))
            # a plugin with a mask set (alma_bench.sparsity.plugin.MaskedTraining, which may
            # make it only when training starts) owns the model's masks
            if any(hasattr(p, "maskset") for p in mine):
                if owner is not None:
                    raise UserError(f"composed strategy '{SEP.join(n for n, _ in self.parts)}'"
                                    f": '{owner}' and '{name}' both own the masks; at most "
                                    "one part may be a sparse strategy")
                owner = name
            out += mine
        return out
