"""The package's shape: no import cycles between clir's modules, function-level imports included (a cycle
hidden in a function still means two modules that cannot be understood, or changed, one without the other);
no module over 500 lines, no function over 80 lines unless a ``# long:`` comment says why."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "clir"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the clir modules it imports anywhere in its body. ``from pkg import sub`` counts as an
    import of the submodule only; ``from pkg import name`` as one of the package."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            else:
                continue
            graph[mod].update(t for t in targets if t in mods and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "clir.experiments.runner" in graph and graph["clir.experiments.runner"]  # the walk sees imports
    found = cycles(graph)
    detail = [
        f"{c}: " + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c) for c in found
    ]
    assert not found, "import cycles: " + "; ".join(detail)


# ---------------------------------------------------------------------- layers
#: docs/architecture.md's layers, top first: a module imports only modules of its own layer or below
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("clir", "clir.__main__", "clir.testing")),
    ("verbs", ("clir.cli",)),
    ("services", ("clir.serve", "clir.experiments", "clir.demo")),
    ("work", ("clir.index", "clir.search", "clir.train", "clir.metrics")),
    ("model + data", ("clir.model", "clir.data")),
    (
        "foundations",
        (
            "clir.config",
            "clir.errors",
            "clir.atomic",
            "clir.workdir",
            "clir.safe_load",
            "clir.progress",
            "clir.portable",
            "clir.version",
        ),
    ),
]


def layer_of(module: str) -> int:
    """The layer's position (0: top) of a module: the longest prefix named in LAYERS."""
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    if best < 0:
        raise AssertionError(
            f"{module} is in no layer of docs/architecture.md: add it to LAYERS (and the doc)"
        )
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer_of(b) < layer_of(a)
    ]


def test_the_layer_checker_sees_an_upward_import():
    assert upward_imports({"clir.index.build": {"clir.serve.app"}, "clir.serve.app": set()}) == [
        "clir.index.build (work) -> clir.serve.app (services)"
    ]
    assert upward_imports({"clir.serve.app": {"clir.index.build"}, "clir.index.build": set()}) == []


def test_the_version_is_the_packages():
    import tomllib

    from clir.version import __version__

    meta = tomllib.loads((PKG.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["version"] == __version__


def test_no_import_runs_up_a_layer():
    """Every module sits in one layer and imports only its own layer and those below (function-level
    imports included): e.g. nothing outside clir/cli imports the CLI."""
    found = upward_imports(import_graph())
    assert not found, "imports that run up a layer: " + "; ".join(found)


# ---------------------------------------------------------------------- sizes
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
#: a longer function says why on (or just above) its ``def`` line
LONG_REASON = "# long:"


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, line, length) of every function in ``source`` longer than MAX_FUNCTION_LINES (decorators and
    docstring included) without a ``# long:`` reason on its def line, or on a comment line just above it."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - start + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        header = lines[start - 1 : node.body[0].lineno - 1]  # decorators and the (maybe wrapped) signature
        above = start - 2
        while above >= 0 and lines[above].strip().startswith("#"):
            header.append(lines[above])
            above -= 1
        if not any(LONG_REASON in line for line in header):
            found.append((node.name, node.lineno, length))
    return found


def test_the_size_checker_sees_long_functions_and_their_reasons():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    plain = f"def f():\n{body}"
    assert long_functions(plain) == [("f", 1, MAX_FUNCTION_LINES + 1)]
    assert long_functions(f"def f():  {LONG_REASON} one table, read top to bottom\n{body}") == []
    assert long_functions(f"x = 1\n{LONG_REASON} one table, read top to bottom\ndef f():\n{body}") == []
    nested = "def outer():\n" + "".join("    " + line + "\n" for line in plain.splitlines())
    assert [name for name, _, _ in long_functions(nested)] == ["outer", "f"]
    short = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    assert long_functions(short) == []


def test_no_module_or_function_too_long():
    """Modules under MAX_MODULE_LINES lines; functions under MAX_FUNCTION_LINES unless they say why."""
    big, long = [], []
    for mod, path in sorted(_modules().items()):
        source = path.read_text(encoding="utf-8")
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            big.append(f"{mod} ({n} lines)")
        long += [
            f"{mod}.{name} (line {line}, {length} lines)" for name, line, length in long_functions(source)
        ]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(big)
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_REASON} <why>' comment: "
        + ", ".join(long)
    )


# ---------------------------------------------------------------------- layering
def test_no_module_outside_cli_imports_cli():
    """The verbs are the top layer: library code takes requests (clir.config), never a verb's parser."""
    graph = import_graph()
    cli = "clir.cli"
    up = sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod != cli and not mod.startswith(cli + ".") and mod != "clir.__main__"
        for dep in deps
        if dep == cli or dep.startswith(cli + ".")
    )
    assert not up, "imports of clir.cli from below it: " + ", ".join(up)


def test_the_layering_check_sees_function_level_imports():
    """The walk counts an import inside a function (how experiments/build.py once reached clir.cli)."""
    graph = import_graph()
    assert "clir.train.head_training" in graph["clir.experiments.build"]  # imported inside build()
    assert (
        "clir.cli.main" in graph["clir.__main__"]
    )  # the entry point is the one module outside cli/ that may
