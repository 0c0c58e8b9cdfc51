"""Property: ``run --dry-run`` on any suite document ends in exit 0, or in one line and exit 2
(3 for a path), never in a traceback (issue 27).

Documents are made by mutating valid ones (the tiny test suite and every shipped suite) with a
seeded generator: at a random place at any depth, a key is deleted, a value replaced by one of
another type or an odd one (NaN, huge, negative, empty, control characters, a path), wrapped
in a list or a mapping, or an unknown key added. The loader runs in this process (500
documents in the default run, 5,000 under ``slow``); a few run as real subprocesses too.
"""

from __future__ import annotations

import copy
import io
import random
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from conftest import TINY

from alma_bench.cli import main
from alma_bench.spec.config import read_suite_file, suite_names

ODD = [None, 0, -1, 1, 2**40, 10**20, 1e-300, 1e300, float("nan"), float("inf"), -0.0, True,
       "", "x", "dense", "../../escaped", "/abs", "\x1b[31mred", "a\x00b", "x" * 300, [], {},
       [1, 2], [[]], {"a": 1}, {"name": 5}, ["dense", 5], 0.5, "0.5", "1e-4"]


def places(node, path=()):
    """Every (path, value) in a document: each mapping key and list item, at every depth."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from places(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from places(v, (*path, i))


def mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path, value = rng.choice(list(places(doc)))
        if not path:
            doc[rng.choice(["bogus", "seeds", "grid", "scales", "references"])] = rng.choice(ODD)
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        op = rng.randrange(6)
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = copy.deepcopy(rng.choice(ODD))
        elif op == 2:
            parent[key] = [value]
        elif op == 3:
            parent[key] = {"name": value} if rng.random() < 0.5 else {rng.choice(ODD[12:17]):
                                                                       value}
        elif op == 4 and isinstance(value, dict):
            value[rng.choice(["bogus", "name", "label", "params", "grid", "seed"])] = \
                copy.deepcopy(rng.choice(ODD))
        elif op == 5 and isinstance(value, list):
            value.append(copy.deepcopy(rng.choice(value) if value else rng.choice(ODD)))
        else:
            parent[key] = copy.deepcopy(rng.choice(ODD))
        if not doc:
            break
    return doc


def valid_documents() -> list[dict]:
    return [copy.deepcopy(TINY)] + [read_suite_file(n) for n in suite_names()]


def dry_run(path, out) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["run", str(path), "--dry-run", "--threads", "1", "--out", str(out),
                     "--quiet"])
    return code, err.getvalue()


def check(docs: int, seed: int, tmp_path) -> None:
    rng = random.Random(seed)
    bases = valid_documents()
    codes: dict[int, int] = {}
    for n in range(docs):
        doc = mutate(rng.choice(bases), rng)
        path = tmp_path / f"doc{n % 10}.yaml"
        try:
            path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=False))
        except yaml.YAMLError:
            continue
        try:
            code, err = dry_run(path, tmp_path / "out")
        except Exception as e:  # the property: never a traceback
            raise AssertionError(f"document {n} (seed {seed}) raised {e!r}:\n"
                                 f"{path.read_text()}") from e
        assert code in (0, 2, 3), (n, code, err)
        if code:
            assert err.count("\n") == 1 and err.startswith("alma-bench: error: "), (n, err)
        codes[code] = codes.get(code, 0) + 1
    # the generator must reach both outcomes, or it tests nothing
    assert codes.get(2, 0) > docs // 4 and codes.get(0, 0) > 0, codes


def test_mutated_suites_never_end_in_a_traceback(tmp_path):
    check(500, seed=27, tmp_path=tmp_path)


@pytest.mark.slow
def test_mutated_suites_never_end_in_a_traceback_many(tmp_path):
    for seed in range(10):
        check(500, seed=1000 + seed, tmp_path=tmp_path)


def test_mutated_suites_in_a_subprocess(tmp_path):
    """The real command line, for a few documents: exit code and one line, no traceback."""
    rng = random.Random(2727)
    for n in range(3):
        doc = mutate(copy.deepcopy(TINY), rng)
        path = tmp_path / f"doc{n}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "alma_bench.cli", "run", str(path),
                               "--dry-run", "--threads", "1", "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 2), done.stderr
        assert "Traceback" not in done.stderr
        if done.returncode:
            assert done.stderr.count("\n") == 1, done.stderr
