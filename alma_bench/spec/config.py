"""Typed specs: the training protocol, one run, a suite (loaded from YAML and validated).

A suite file names a stream, a model, a protocol, strategies with parameters, seeds, and scale
presets that override fields. ``load_suite`` resolves scale and ``--set`` overrides, validates
every section against the registered dataclasses, and expands one ``RunSpec`` per
(strategy, seed). A run's identity is the hash of its resolved config.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from alma_bench.errors import UserError, unknown
from alma_bench.registry import MODELS, STREAMS, build_dataclass
from alma_bench.spec import compose, grid, schema
from alma_bench.spec.split import AlmaSplit


@dataclass(frozen=True)
class Protocol:
    """How each megabatch is trained (ALGORITHMS.md section 1). Set per suite.

    Defaults are ALMA's protocol (Caccia et al. 2021): SGD, lr 0.01, momentum 0.9, weight
    decay 1e-4, batch 128, a constant LR, the optimizer rebuilt each megabatch, early stopping
    on validation accuracy. The paper gives no epoch cap or patience: ``epochs=20`` and
    ``patience=3`` are alma-bench's. APP's protocol is in the app-* suites."""

    epochs: int = 20  # a cap: early stopping (patience) usually ends a megabatch first
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    lr_schedule: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: tuple[int, ...] = ()  # epochs, for multistep
    gamma: float = 0.1
    keep_optimizer_state: bool = False  # APP keeps it; ALMA (and the default) rebuilds it
    patience: int | None = 3  # early stopping on validation accuracy (epochs); null: off
    keep_best: bool = True  # end each megabatch at its best-validation epoch
    augment: bool = False  # random crop (padding) + horizontal flip, on batched tensors
    crop_padding: int = 4
    eval_batch_size: int = 1024
    # the generalisation gap's train accuracy on a fixed seeded sample of this many images of
    # the megabatch's training set; null: the whole set, as ALGORITHMS.md defines it
    train_eval_sample: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or null, got {self.patience}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.train_eval_sample is not None and self.train_eval_sample < 1:
            raise ValueError(f"train_eval_sample must be >= 1 or null, got "
                             f"{self.train_eval_sample}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones are epochs >= 1, got {list(self.milestones)}")


@dataclass(frozen=True)
class Seeds:
    """Separate seeds for stream split, model init, data order and strategy, from one run seed."""

    run: int
    stream: int
    init: int
    order: int
    strategy: int

    @classmethod
    def derive(cls, seed: int, stream_seed: int | None = None) -> Seeds:
        return cls(seed, stream_seed if stream_seed is not None else derive(seed, "stream"),
                   derive(seed, "init"), derive(seed, "order"), derive(seed, "strategy"))


def derive(seed: int, purpose: str | int, *more: int) -> int:
    """A 31-bit seed from ``seed`` and a purpose; stable across processes and platforms."""
    key = zlib.crc32(purpose.encode()) if isinstance(purpose, str) else int(purpose)
    state = np.random.SeedSequence([int(seed), key, *map(int, more)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


#: Revision of the core numerics (training loop, metrics, stream, masks, data). Bump it with
#: any change that changes the numbers of some run: every run id changes with it, so results
#: made by older code are never reused as finished. tests/test_trust.py pins the numbers of
#: a tiny run, so a silent change of numbers fails CI until the pin and this constant move
#: together.
CORE_REVISION = 2
#: Protocol fields added after revision 2, with the value that leaves every number as it was:
#: they enter a run's identity only when set otherwise, so adding one changed no run id.
LATER_PROTOCOL_FIELDS = {"train_eval_sample": None}


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run, plus labels that do not change its numbers."""

    suite: str
    label: str
    strategy: dict  # {"name": ..., "params": {...}}
    seed: int
    stream: dict  # {"name": ..., split fields..., source params...}
    model: dict  # {"name": ..., params...}
    protocol: dict
    scale: str | None = None
    reference: dict | None = None
    # torch threads of the run: CPU kernels split their reductions by thread count, so the
    # same run on 1 and 2 threads differs in the last bits and then in its numbers
    threads: int = 1
    # label of an entry of the same suite -> run id of that entry's run with this seed, for a
    # strategy parameter naming another run (e.g. static's structure_from)
    deps: dict | None = None

    def identity(self) -> dict:
        """The fields that determine the run's numbers: hashed into its id.

        The core revision, the thread count, the run ids of the runs it depends on, the
        strategy class's ``revision`` (revision 1 is left out) and, for a strategy that is not
        alma-bench's own, its code (``strategy_code``: the sha256 of its file and its package's
        version) are part of it."""
        protocol = compose.omit_later(self.protocol, LATER_PROTOCOL_FIELDS)
        ident = {"stream": self.stream, "model": self.model, "protocol": protocol,
                 "strategy": self.strategy, "seed": self.seed, "threads": self.threads,
                 "core_revision": CORE_REVISION}
        if self.deps:
            ident["deps"] = dict(sorted(self.deps.items()))
        revision = compose.revision(self.strategy["name"])  # per part for a composition
        if revision is not None:
            ident["strategy_revision"] = revision
        code = compose.code(self.strategy["name"])  # a plugin's file hash / package version
        if code is not None:
            ident["strategy_code"] = code
        return ident

    @property
    def results_name(self) -> str:
        """The run's folder under the results root: the suite, suffixed by a non-default scale
        so that scales of one suite never mix in a table."""
        return f"{self.suite}-{self.scale}" if self.scale else self.suite

    @property
    def run_id(self) -> str:
        # not cached: the identity includes the strategy class's revision, read each time
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_json(self) -> dict:
        return {"run_id": self.run_id, **dataclasses.asdict(self), "identity": self.identity()}

    @classmethod
    def from_json(cls, d: dict) -> RunSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    # typed views, validated against the registries
    def protocol_obj(self) -> Protocol:
        return build_dataclass(Protocol, self.protocol, "protocol")

    def split(self) -> AlmaSplit:
        return split_and_source(self.stream)[0]

    def seeds(self) -> Seeds:
        return Seeds.derive(self.seed, self.stream.get("seed"))


SPLIT_KEYS = {f.name for f in dataclasses.fields(AlmaSplit)}
SUITE_KEYS = schema.SUITE_KEYS


def split_and_source(stream: dict):
    """Split a stream section into the ALMA split, the source name and the source params."""
    s = dict(stream)
    if "name" not in s:
        raise UserError(f"stream section needs a 'name'. Valid: {', '.join(STREAMS.names())}")
    name = s.pop("name")
    s.pop("seed", None)
    split = build_dataclass(AlmaSplit, {k: s.pop(k) for k in list(s) if k in SPLIT_KEYS}, "stream")
    entry = STREAMS.get(name)
    valid = set(entry.params()) | SPLIT_KEYS | {"name", "seed"}
    bad = sorted(set(s) - set(entry.params()))
    if bad:
        raise UserError(f"unknown stream key(s) {', '.join(bad)} for stream '{name}'. "
                        f"Valid: {', '.join(sorted(valid))}")
    return split, name, s


@dataclass
class SuiteSpec:
    """A validated suite: its runs and where it came from."""

    name: str
    description: str
    runs: list[RunSpec]
    labels: list[str]
    seeds: list[int]
    scale: str | None
    scales: list[str] = field(default_factory=list)

    @property
    def results_name(self) -> str:
        return f"{self.name}-{self.scale}" if self.scale else self.name


def suite_names() -> list[str]:
    """Names of the suites shipped in the package."""
    files = resources.files("alma_bench") / "suites"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


class SuiteLoader(yaml.SafeLoader):
    """YAML for suite files: a key given twice is an error (PyYAML keeps the last silently),
    and ``1e-4`` is a float as in YAML 1.2 (PyYAML's 1.1 rules read it as a string). Merge
    keys (``<<: *defaults``) work as in PyYAML: keys written beside one override it."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # SafeLoader flattens these itself
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, collections.abc.Hashable):
                continue  # PyYAML's own check names it ("found unhashable key")
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_suite_file(name_or_path: str) -> dict:
    """The raw YAML mapping of a shipped suite (by name) or a user's file (by path)."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"suite file not found: {path}")
        text = path.read_text()
    else:
        if name_or_path not in suite_names():
            raise unknown("suite", name_or_path, suite_names())
        text = (resources.files("alma_bench") / "suites" / f"{name_or_path}.yaml").read_text()
    try:
        raw = yaml.load(text, Loader=SuiteLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"malformed suite YAML {name_or_path}{where}: "
                        f"{getattr(e, 'problem', e)}".replace("\n", " ")) from None
    except RecursionError:
        raise UserError(f"suite {name_or_path} is nested too deeply") from None
    if not isinstance(raw, dict):
        raise UserError(f"suite {name_or_path} must be a YAML mapping of "
                        f"{', '.join(sorted(SUITE_KEYS))}, got {schema.show(raw)}")
    return raw


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_set(raw: dict, assignment: str) -> None:
    """Apply one ``--set a.b.c=value`` (value parsed as YAML). ``strategies.<label>.<param>``
    sets a strategy parameter."""
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got '{assignment}'")
    key, _, text = assignment.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    if parts[0] not in SUITE_KEYS:
        raise unknown("suite key", parts[0], SUITE_KEYS)
    if parts[0] == "strategies" and len(parts) in (3, 4):
        # strategies.<label>.<param>, or strategies.<label>.<part>.<param> of a composition
        entries = raw.get("strategies") or []
        if not isinstance(entries, list):
            raise schema.bad("strategies", entries, "a non-empty list of strategy entries")
        for i, s in enumerate(entries):
            if _label(s) == parts[1]:
                if isinstance(s, str):  # a bare name: make it an entry that can hold params
                    s = entries[i] = {"name": s}
                node = s.setdefault("params", {})
                if len(parts) == 4:
                    node = node.setdefault(parts[2], {})
                    if not isinstance(node, dict):
                        raise UserError(f"--set {key}: '{parts[2]}' is not a mapping")
                node[parts[-1]] = value
                return
        raise unknown("strategy label", parts[1], [_label(s) for s in raw.get("strategies", [])])
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{p}' is not a mapping")
    node[parts[-1]] = value


def _label(s: Any) -> str:
    if isinstance(s, str):
        return s
    name = s.get("name", "?")
    return s.get("label", compose.SEP.join(map(str, name)) if isinstance(name, list) else name)


def load_suite(name_or_path: str, scale: str | None = None, sets: list[str] = (),
               strategies: list[str] | None = None, seeds: list[int] | None = None) -> SuiteSpec:
    """Resolve a suite by name or path into validated RunSpecs."""
    raw = read_suite_file(name_or_path)
    # the shape of the document, checked before anything indexes into it (spec/schema.py);
    # again after every edit, since --scale and --set may replace whole sections
    schema.check(raw, name_or_path)
    scales = raw.get("scales") or {}
    if scale is not None:
        if scale not in scales:
            raise unknown("scale", scale, scales)
        raw = deep_merge(raw, scales[scale] or {})
        schema.check(raw, f"{name_or_path} with --scale {scale}")
    for s in sets:
        apply_set(raw, s)
        schema.check(raw, f"{name_or_path} after --set {s}")
    name = raw.get("name") or schema.name_from_stem(Path(name_or_path).stem)
    seed_list = schema.check_seeds(seeds, "--seeds") if seeds is not None else raw.get(
        "seeds", [0])

    sweep = grid.suite_grid(raw, _label)  # strategies.<label>.<param> keys go to entries
    grid.check_keys(sweep, _grid_keys(raw, sweep), "suite grid")
    # (label, entry label, strategy, params, sections, combination): combinations of the
    # suite grid outermost, so each one reads like a small suite of its own
    resolved = []
    entries = _entries(raw["strategies"])  # the same for every combination but for labels
    memo: dict = {}  # a combination's sections, resolved once per distinct value
    for n, values in enumerate(grid.combinations(sweep)):
        sections = _sections(grid.assigned(raw, values), memo)
        resolved += [(grid.label(base, {**combo, **values}), base, sname, sparams, sections, n)
                     for base, combo, sname, sparams in entries]
    labels = [r[0] for r in resolved]
    for label in labels:  # a grid value is part of its label
        if schema.CONTROL.search(label):
            raise UserError(f"strategy label {schema.show(label)} holds a control character "
                            "(an ANSI escape or NUL); labels are printed and name folders")
    dup = sorted(x for x, k in collections.Counter(labels).items() if k > 1)
    if dup:
        raise UserError(f"duplicate strategy label(s) {', '.join(dup)}: give each a 'label'")
    if strategies:
        # an entry's label selects all its grid expansions; one expansion selects itself
        wanted = grid.rejoin(list(strategies))
        bases = list(dict.fromkeys(r[1] for r in resolved))
        for want in wanted:
            if want not in labels and want not in bases:
                raise unknown("strategy in this suite", want, list(dict.fromkeys(bases + labels)))
        resolved = [r for r in resolved if r[0] in wanted or r[1] in wanted]
    # only the selected entries: a deselected one that would be the same run blocks nothing
    same = {}
    for label, _, sname, sparams, _, n in resolved:
        key = json.dumps([n, sname, sparams], sort_keys=True, default=str)
        if key in same:  # one run id for two labels: they would share a result directory
            raise UserError(f"strategies '{same[key]}' and '{label}' are the same run "
                            f"({sname} with the same params); keep one")
        same[key] = label
    refs = raw.get("references") or {}
    runs = [
        RunSpec(suite=name, label=label, strategy={"name": sname, "params": sparams}, seed=seed,
                stream=stream, model=model, protocol=protocol, scale=scale,
                reference=refs.get(label))
        for label, _, sname, sparams, (stream, model, protocol), _ in resolved
        for seed in seed_list
    ]
    return SuiteSpec(name, raw.get("description", ""), runs, [r[0] for r in resolved],
                     list(seed_list), scale, sorted(scales))


def _sections(raw: dict, memo: dict | None = None) -> tuple[dict, dict, dict]:
    """The resolved stream, model and protocol of a suite (one grid combination's). ``memo``
    keeps each section resolved per distinct value: a grid of 10,000 points has only as many
    distinct sections as its values (runs then share those dicts; nothing edits them)."""
    memo = {} if memo is None else memo
    out = []
    for section, resolve in (("stream", _stream), ("model", _model), ("protocol", _protocol)):
        value = raw.get(section) or {}
        key = (section, json.dumps(value, sort_keys=True, default=repr))
        if key not in memo:
            memo[key] = resolve(dict(value))
        out.append(memo[key])
    return tuple(out)


def _stream(stream: dict) -> dict:
    split, source, params = split_and_source(stream)
    STREAMS.create(source, **params)  # validate now, load later
    return {"name": source, **dataclasses.asdict(split), **params,
            **({"seed": stream["seed"]} if "seed" in stream else {})}


def _model(model: dict) -> dict:
    if "name" not in model:
        raise UserError(f"model section needs a 'name'. Valid: {', '.join(MODELS.names())}")
    m_name = model.pop("name")
    # a model field in the class's later_params is recorded only when set (no run id moved)
    return {"name": m_name, **compose.resolved_params(MODELS.create(m_name, **model))}


def _protocol(protocol: dict) -> dict:
    return dataclasses.asdict(build_dataclass(Protocol, protocol, "protocol"))


def _entries(specs: list) -> list[tuple[str, dict, str, dict]]:
    """(entry label, its grid combination, strategy name, resolved params) of every entry
    and combination of its own grid; a run's label is the entry label named with the
    combination's values and the suite grid's (``grid.label``)."""
    out = []
    for s in specs:
        s = {"name": s} if isinstance(s, str) else dict(s)
        extra = sorted(set(s) - {"name", "label", "params", "grid"})
        if extra or "name" not in s:
            raise UserError(f"strategy entry {s!r}: keys are name, label, params, grid")
        if not isinstance(s.get("params") or {}, dict):
            raise UserError(f"strategy entry {s!r}: params must be a mapping")
        name = compose.canonical(s["name"])  # a list of parts is a composition: "a+b"
        base = s.get("label", name)
        own = grid.sweeps(s.get("grid"), f"strategy entry '{base}'")
        grid.check_keys(own, compose.param_keys(name), f"strategy '{name}'")
        for combo in grid.combinations(own):  # a grid value overrides the same param
            obj = compose.create(name, compose.merge(name, s.get("params") or {}, combo))
            out.append((base, combo, name, compose.resolved_params(obj)))
    return out


def _grid_keys(raw: dict, sweep: dict[str, list]) -> set[str]:
    """Dotted keys a suite grid may sweep: the fields of the protocol and of the stream and
    model named in the suite (or in the grid, when it sweeps their names)."""
    keys = {f"protocol.{f.name}" for f in dataclasses.fields(Protocol)}
    for section, registry, fixed in (("stream", STREAMS, SPLIT_KEYS | {"name", "seed"}),
                                     ("model", MODELS, {"name"})):
        names = sweep.get(f"{section}.name") or [(raw.get(section) or {}).get("name")]
        keys |= {f"{section}.{k}" for k in fixed}
        for n in names:
            if isinstance(n, str) and n in registry:
                keys |= {f"{section}.{k}" for k in registry.get(n).params()}
    return keys
