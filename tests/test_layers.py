"""The package's layers (docs/architecture.md): a module imports only from its own layer or
the layers below it, and no two modules import each other, directly or around a cycle. An AST
scan of every ``import`` in alma_bench/ (strategies/ and streams/ as alma_bench.strategies and
alma_bench.streams), the ones inside functions included. No module is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"alma_bench": ROOT / "alma_bench", "alma_bench.strategies": ROOT / "strategies",
           "alma_bench.streams": ROOT / "streams"}

#: Top to bottom; the same order as docs/architecture.md ("Layers"). A module belongs to the
#: layer of the longest prefix that names it (``alma_bench.cli``, ``alma_bench.run.runner``).
LAYERS = [
    ["alma_bench.cli"],
    ["alma_bench.perf"],
    ["alma_bench.execute", "alma_bench.analysis"],
    ["alma_bench.strategies"],
    ["alma_bench.rl"],
    ["alma_bench.sparsity", "alma_bench.streams"],
    ["alma_bench.run"],
    ["alma_bench.spec", "alma_bench.store"],
    ["alma_bench", "alma_bench.registry", "alma_bench.errors", "alma_bench.suites"],
]

#: The package's lazy re-exports (``alma_bench.make_benchmark``; the Python API
#: ``run_suite``/``trained_weights``), imported on first use: the imports that go up, from
#: the package itself, at the caller's request.
FACADE = {("alma_bench", "alma_bench.run.benchmark"), ("alma_bench", "alma_bench.execute.api")}

#: The run path: no function there longer than this many lines.
RUN_PATH, MAX_LINES = "alma_bench/run", 60


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """Module -> the alma_bench modules it imports, with the line, anywhere in its code."""
    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[tuple[str, int]]] = {}
    for mod, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {(known(a.name), node.lineno) for a in node.names
                          if a.name.split(".")[0] == "alma_bench"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the module's package
                    base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    name = f"{base}.{node.module}" if node.module else base
                else:
                    name = node.module or ""
                if name.split(".")[0] != "alma_bench":
                    continue
                for a in node.names:  # ``from pkg import module`` imports the module
                    full = f"{name}.{a.name}"
                    found.add((full if full in mods else known(name), node.lineno))
        edges[mod] = {(t, line) for t, line in found if t != mod}
    return edges


def layer(mod: str) -> int:
    best, where = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, where = len(p), i
    assert where is not None, f"{mod} is in no layer: add it to LAYERS and the doc"
    return where


def test_every_module_has_a_layer():
    for mod in modules():
        layer(mod)


def test_no_import_goes_up_a_layer():
    mods = modules()
    bad = [f"{mods[m].relative_to(ROOT)}:{line}: {m} (layer {layer(m)}) imports {t} "
           f"(layer {layer(t)})"
           for m, targets in imports(mods).items() for t, line in sorted(targets)
           if layer(t) < layer(m) and (m, t) not in FACADE]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle():
    edges = {m: {t for t, _ in ts} for m, ts in imports(modules()).items()}
    # A package's __init__ runs before its submodules: ``alma_bench.sparsity`` importing its
    # own submodules is how a package exposes them, not a cycle with them.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_at_most_six_modules_at_the_root():
    root = sorted(p.name for p in (ROOT / "alma_bench").glob("*.py"))
    assert len(root) <= 6, root


def test_no_long_function_in_the_run_path():
    long = []
    for path in sorted((ROOT / RUN_PATH).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_LINES} lines in {RUN_PATH}:\n" + "\n".join(long)


def test_the_doc_states_the_same_layers():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    rows = [re.findall(r"`([a-z_.]+)`", line.split(" — ")[0]) for line in block.splitlines()
            if re.match(r"\d+\. `", line)]
    assert rows == LAYERS
