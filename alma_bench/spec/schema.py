"""The shape of a suite document, checked in one place when it is read.

``check(raw)`` walks a suite's mapping (as read, and again after ``--scale`` and ``--set``)
and raises one ``UserError`` naming the key, the value and what is valid, before any other
code indexes into it: the loader below it may then assume mappings are mappings and names
are strings. What a section's fields mean (a protocol's ``lr``, a strategy's ``density``) is
checked by their dataclasses through ``registry.build_dataclass``; this module checks only
what holds them together. Hand-written rather than pydantic: the CLI's ``list`` and errors
stay fast, and every message has the same form.
"""

from __future__ import annotations

import re
from typing import Any

from alma_bench.errors import UserError

SUITE_KEYS = {"name", "description", "stream", "model", "protocol", "strategies", "seeds",
              "scales", "references", "grid"}
ENTRY_KEYS = {"name", "label", "params", "grid"}

#: A suite name is a results folder's name: one path component, so nothing is ever written
#: outside ``--out`` (no ``/``, no leading dot, so no ``..``).
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")
NAME_RULE = "letters, digits and _ . + -, not starting with . + -, at most 100 characters"
#: C0 and C1 control characters (ANSI escapes start with ESC) and DEL: a label is printed in
#: tables and named in folders, where they would repaint the terminal or cut the path.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_LABEL = 200
#: Seeds go to numpy's and torch's generators as 32-bit values.
SEED_RANGE = (0, 2**32 - 1)
#: Nodes of the document with every alias expanded: a "billion laughs" document is a few
#: lines of YAML that expand to millions of nodes when deep-copied or hashed.
MAX_NODES = 200_000


def show(value: Any, width: int = 60) -> str:
    """``repr`` cut to one short line (a repr never holds a newline or a raw escape)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def bad(key: str, value: Any, want: str) -> UserError:
    """``suite key 'KEY' must be WANT, got VALUE`` (a command-line option is named as is)."""
    where = key if key.startswith("--") else f"suite key '{key}'"
    return UserError(f"{where} must be {want}, got {show(value)}")


def safe_name(name: str) -> str:
    """A suite name that is safe as a folder name, or a UserError."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise bad("name", name, f"a folder name ({NAME_RULE})")
    return name


def name_from_stem(stem: str) -> str:
    """A file's stem made a safe suite name (a suite without ``name:``)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]", "-", stem)[:100].lstrip(".+-")
    return name or "suite"


def check_label(key: str, label: Any) -> None:
    if not isinstance(label, str) or not label.strip():
        raise bad(key, label, "a non-empty string")
    if CONTROL.search(label):
        raise bad(key, label, "a string without control characters (ANSI escapes, NUL)")
    if len(label) > MAX_LABEL:
        raise bad(key, label, f"a string of at most {MAX_LABEL} characters")


def check_seeds(seeds: Any, key: str = "seeds") -> list[int]:
    """A non-empty list of distinct seeds in SEED_RANGE."""
    lo, hi = SEED_RANGE
    if not isinstance(seeds, list) or not seeds:
        raise bad(key, seeds, "a non-empty list of integers")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not lo <= s <= hi:
            raise bad(key, seeds, f"a list of integers in [{lo}, {hi}]")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise bad(key, seeds, f"a list of distinct seeds ({', '.join(map(str, dup))} repeated)")
    return seeds


def check_size(raw: Any) -> None:
    """Reject a document that refers to itself or expands (aliases resolved) past MAX_NODES.

    Counted over the object graph with a memo per object, so an alias bomb costs one visit
    per distinct node, not per expanded one."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any, key: str) -> int:
        if not isinstance(node, dict | list):
            return 1
        i = id(node)
        if i in sizes:
            return sizes[i]
        if i in open_:
            raise UserError(f"suite key '{key}' refers to itself (a recursive YAML alias)")
        open_.add(i)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        n = 1 + sum(size(v, f"{key}.{k}" if key else str(k)) for k, v in items)
        open_.discard(i)
        if n > MAX_NODES:
            raise UserError(f"suite key '{key or '(document)'}' expands to more than "
                            f"{MAX_NODES} values (YAML aliases repeated inside aliases?)")
        sizes[i] = n
        return n

    size(raw, "")


def _mapping(raw: dict, key: str, required: bool = False) -> dict:
    value = raw.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise bad(key, value, "a mapping")
    return value


def _section(raw: dict, key: str) -> None:
    section = _mapping(raw, key)
    if key in ("stream", "model") and "name" in section and not isinstance(section["name"], str):
        raise bad(f"{key}.name", section["name"], f"a string (the {key}'s registered name)")
    if key == "stream" and section.get("seed") is not None:
        lo, hi = SEED_RANGE
        s = section["seed"]
        if isinstance(s, bool) or not isinstance(s, int) or not lo <= s <= hi:
            raise bad("stream.seed", s, f"an integer in [{lo}, {hi}] or null")
    for k in section:
        if not isinstance(k, str):
            raise bad(f"{key}.{k}", k, "a string key")


def _entry(n: int, entry: Any) -> None:
    key = f"strategies[{n}]"
    if isinstance(entry, str):
        return
    if not isinstance(entry, dict):
        raise bad(key, entry, "a strategy name or a mapping of name, label, params, grid")
    extra = sorted(map(str, set(entry) - ENTRY_KEYS))
    if extra:
        raise bad(f"{key}.{extra[0]}", entry[extra[0]] if extra[0] in entry else extra[0],
                  f"absent (an entry's keys are {', '.join(sorted(ENTRY_KEYS))})")
    name = entry.get("name")
    if not (isinstance(name, str) or isinstance(name, list) and name
            and all(isinstance(p, str) for p in name)):
        raise bad(f"{key}.name", name, "a strategy name or a non-empty list of names")
    if "label" in entry:
        check_label(f"{key}.label", entry["label"])
    for sub in ("params", "grid"):
        if entry.get(sub) is not None and not isinstance(entry[sub], dict):
            raise bad(f"{key}.{sub}", entry[sub], "a mapping")


def check(raw: Any, where: str = "suite") -> None:
    """One UserError for the first thing wrong with the shape of suite document ``raw``."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a YAML mapping of {', '.join(sorted(SUITE_KEYS))}, "
                        f"got {show(raw)}")
    check_size(raw)
    extra = sorted(map(str, set(raw) - SUITE_KEYS))
    if extra:
        raise UserError(f"unknown suite key(s) {', '.join(extra)} in {where}. "
                        f"Valid: {', '.join(sorted(SUITE_KEYS))}")
    if raw.get("name") is not None:
        safe_name(raw["name"])
    if raw.get("description") is not None and not isinstance(raw["description"], str):
        raise bad("description", raw["description"], "a string")
    for section in ("stream", "model", "protocol", "grid"):
        _section(raw, section)
    entries = raw.get("strategies")
    if not isinstance(entries, list) or not entries:
        raise bad("strategies", entries, "a non-empty list of strategy entries")
    for n, entry in enumerate(entries):
        _entry(n, entry)
    if "seeds" in raw:
        check_seeds(raw["seeds"])
    for key in ("scales", "references"):
        for name, value in _mapping(raw, key).items():
            if not isinstance(name, str):
                raise bad(f"{key}.{name}", name, "a string key")
            if value is not None and not isinstance(value, dict):
                raise bad(f"{key}.{name}", value, "a mapping" + (
                    " of suite keys to override" if key == "scales" else " of metrics"))
