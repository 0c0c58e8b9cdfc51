"""One registry per kind of component (strategies, streams, models, pruners, schedules).

A component is a frozen dataclass of its parameters, registered by a decorator::

    @STRATEGIES.register("dense")
    @dataclass(frozen=True)
    class Dense:
        '''Warm start from the previous megabatch's model.'''
        def plugins(self, ctx): return []

``create(name, **params)`` validates the parameters against the dataclass fields (unknown keys
and ill-typed values are errors naming the valid ones). Third-party packages register through
the entry-point group of the registry; built-in components use exactly that path too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import re
import sys
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alma_bench.errors import UserError, unknown


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, parameter dataclass and one-line description."""

    name: str
    cls: type
    description: str

    def params(self) -> dict[str, Any]:
        """Parameter names with their defaults (``MISSING`` for required ones)."""
        if not dataclasses.is_dataclass(self.cls):
            return {}
        out = {}
        for f in dataclasses.fields(self.cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = dataclasses.MISSING
        return out


class Registry:
    """Name -> component class, filled by ``register`` and by entry points of ``group``."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._entry_points_loaded = group is None
        self._broken: list[str] = []  # entry points that failed to load, one line each

    def register(self, name: str, description: str | None = None):
        """Class decorator registering ``cls`` under ``name``; a duplicate name is an error."""

        def deco(cls):
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(
                    f"duplicate {self.kind} name '{name}': already registered by "
                    f"{self._entries[name].cls.__module__}.{self._entries[name].cls.__qualname__}"
                )
            doc = description or (cls.__doc__ or "").strip().splitlines()
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, cls, text)
            return cls

        return deco

    def forget_module(self, module: str) -> None:
        """Drop the components registered by ``module`` (before it is imported again)."""
        self._entries = {n: e for n, e in self._entries.items() if e.cls.__module__ != module}

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                ep.load()  # importing the target module runs its @register decorators
            except Exception as e:  # any error of a third party's import
                # One broken package must not break every command: its components are
                # missing (an unknown-name error says why), the rest work.
                line = f"{self.group} entry point '{ep.name} = {ep.value}' failed to load: " \
                       f"{one_line(e)}"
                self._broken.append(line)
                warnings.warn(line, stacklevel=2)

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load_entry_points()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def get(self, name: str) -> Entry:
        """The entry for ``name``, or a UserError naming the closest valid name."""
        self._load_entry_points()
        if name not in self._entries:
            err = unknown(self.kind, name, self._entries)
            if self._broken:  # the name may be one a broken package would have registered
                err = UserError(f"{err} ({'; '.join(self._broken)})")
            raise err
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def create(self, name: str, /, **params: Any):  # a parameter may be called "name" too
        """Instantiate ``name`` with validated parameters."""
        entry = self.get(name)
        return build_dataclass(entry.cls, params, f"{self.kind} '{name}'")


def build_dataclass(cls: type, params: dict[str, Any], what: str):
    """Construct dataclass ``cls`` from ``params``, with one-line errors for bad keys or types."""
    params = dict(params or {})
    if not dataclasses.is_dataclass(cls):
        if params:
            raise UserError(f"{what} takes no parameters, got: {', '.join(sorted(params))}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    bad = sorted(set(params) - set(fields))
    if bad:
        raise UserError(
            f"unknown parameter(s) {', '.join(bad)} for {what}. "
            f"Valid: {', '.join(sorted(fields)) or '(none)'}"
        )
    hints = _hints(cls)
    for key, value in list(params.items()):
        params[key] = _coerce(value, hints.get(key, Any), f"{what} parameter '{key}'")
    try:
        return cls(**params)
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{what}: {e}") from None


#: Bounds on any numeric parameter: beyond them a value is a typo (``1e20`` epochs), and an
#: integer past int32 overflows the kernels and generators it is handed to.
MAX_FLOAT = 1e9
MAX_INT = 2**31 - 1

@functools.cache
def _hints(cls: type) -> dict:
    # resolving string annotations evaluates them: the slowest part of a large grid's plan
    return typing.get_type_hints(cls)


_YAML11_EXP = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def _coerce(value: Any, tp: Any, what: str) -> Any:
    """Check ``value`` against annotation ``tp``; int -> float and list -> tuple are allowed."""
    # a bare ``dict`` or ``list`` annotation is checked as ``dict[Any, Any]``, ``list[Any]``
    origin = typing.get_origin(tp) or (tp if tp in (dict, list, tuple) else None)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, what)
            except UserError:
                continue
        raise UserError(f"{what} must be {_tname(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UserError(f"{what} must be one of {', '.join(map(str, args))}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"{what} must be None, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{what} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, what) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{what} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        # PyYAML (YAML 1.1) reads an unquoted 1e-4 (exponent, no dot) as a string, e.g. in
        # --set protocol.lr=1e-4: only that form is taken as a number. A quoted "0.5" is a
        # string the user wrote, and a string is not a number.
        if isinstance(value, str) and _YAML11_EXP.match(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            quoted = " (a string: drop the quotes)" if isinstance(value, str) else ""
            raise UserError(f"{what} must be a number, got {value!r}{quoted}")
        # NaN passes every `x < bound` check of a __post_init__ (comparisons are false), and
        # a run would only fail once trained: no parameter is meant to be NaN or infinite
        if not math.isfinite(value) or abs(value) > MAX_FLOAT:
            raise UserError(f"{what} must be a finite number of magnitude at most "
                            f"{MAX_FLOAT:g}, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{what} must be an integer, got {value!r}")
        if abs(value) > MAX_INT:  # epochs: 10**20 would never end, and torch takes int64
            raise UserError(f"{what} must be an integer of magnitude at most {MAX_INT}, "
                            f"got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{what} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{what} must be a string, got {value!r}")
        return value
    return value


def _tname(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def one_line(e: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def load_plugin_file(path: str | Path) -> types.ModuleType:
    """Import a single Python file (``--plugin``); its decorators register its components.

    The file's sha256 is kept on the module (``CODE_HASH``): it is what the run ids of its
    strategies record (:func:`code_identity`). A file already imported is imported again when
    its contents changed since (a notebook or test that edits it between runs). Every
    registry's entry points (the built-ins) load first, so a plugin that reuses a built-in
    name is the one blamed; any error of the file's import is one UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plugin file not found: {path}")
    code = hashlib.sha256(path.read_bytes()).hexdigest()
    # The module name includes a digest of the resolved path: two plugin files of one name in
    # different folders are two modules (a name from the stem alone loaded only the first),
    # and a worker process that loads the same path gets the same name (pickled classes).
    resolved = str(path.resolve())
    where = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"alma_bench_plugin_{stem}_{where}"
    old = sys.modules.get(name)
    if old is not None and getattr(old, CODE_HASH, None) == code:
        return old
    if old is not None:  # edited since: its new contents register again
        for registry in REGISTRIES:
            registry.forget_module(name)
    for registry in REGISTRIES:
        registry._load_entry_points()
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    setattr(module, CODE_HASH, code)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a plugin's import may raise anything
        del sys.modules[name]
        raise UserError(f"plugin file {path} failed to load: {one_line(e)}") from None
    return module


#: Attribute of a module imported by :func:`load_plugin_file`: the sha256 of its file then.
CODE_HASH = "__alma_bench_sha256__"


def code_identity(cls: type) -> dict | None:
    """What identifies the code of a component that is not alma-bench's own (None for
    alma-bench's): the sha256 of the file its class was loaded from (for a ``--plugin`` file,
    the contents it was imported with) and, for a module of an installed distribution (an
    entry-point package), ``"<distribution> <version>"``. A strategy's run id covers it
    (docs/strategies.md, "Edited code"): an edited plugin is a new run, never a reused one."""
    name = getattr(cls, "__module__", "") or ""
    if name == "alma_bench" or name.startswith("alma_bench."):
        return None
    module = sys.modules.get(name)
    out: dict[str, str] = {}
    digest = getattr(module, CODE_HASH, None)
    file = getattr(module, "__file__", None)
    if digest is None and file and Path(file).is_file():
        stat = Path(file).stat()
        digest = _file_sha256(str(Path(file).resolve()), stat.st_mtime_ns, stat.st_size)
    if digest:
        out["sha256"] = digest
    # a --plugin file belongs to no distribution: the lookup (a scan of every installed one)
    # is only for modules imported by name
    dist = None if getattr(module, CODE_HASH, None) else _distributions().get(name.split(".")[0])
    if dist:
        try:
            out["version"] = f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return out or None


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, str]:
    """Top-level module -> the installed distribution that ships it (its first)."""
    return {top: dists[0] for top, dists in importlib.metadata.packages_distributions().items()
            if dists}


def load_modules(names: list[str]) -> None:
    """Import modules by dotted name (plugins passed to worker processes)."""
    for n in names:
        if n.endswith(".py"):
            load_plugin_file(n)
        else:
            importlib.import_module(n)


STRATEGIES = Registry("strategy", "alma_bench.strategies")
STREAMS = Registry("stream", "alma_bench.streams")
MODELS = Registry("model", "alma_bench.models")
PRUNERS = Registry("pruner", "alma_bench.pruners")
SCHEDULES = Registry("schedule", "alma_bench.schedules")
REGISTRIES = (STRATEGIES, STREAMS, MODELS, PRUNERS, SCHEDULES)
