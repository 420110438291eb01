"""The package's shape: no import cycles between clir's modules, function-level imports included (a cycle
hidden in a function still means two modules that cannot be understood, or changed, one without the other);
across clir/ and eval/, no module over 500 lines and no function over 80 lines; eval/ uses clir through its
public names only."""

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
#: the benchmarks and other evaluation scripts: held to clir's sizes, and to clir's public names
EVAL = PKG.parent / "eval"


def _sources() -> dict[str, Path]:
    """Every module of clir/ and eval/, by dotted name."""
    return {
        **_modules(),
        **{".".join(p.relative_to(EVAL.parent).with_suffix("").parts): p for p in sorted(EVAL.rglob("*.py"))},
    }


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, line, length) of every function in ``source`` longer than MAX_FUNCTION_LINES, decorators and
    docstring included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - start + 1
        if length > MAX_FUNCTION_LINES:
            found.append((node.name, node.lineno, length))
    return found


def test_the_size_checker_sees_long_functions():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    plain = f"def f():\n{body}"
    assert long_functions(plain) == [("f", 1, MAX_FUNCTION_LINES + 1)]
    # a reason in a comment exempts nothing any more (the `# long:` exemption is gone)
    assert long_functions(f"def f():  # long: one table, read top to bottom\n{body}") == [
        ("f", 1, MAX_FUNCTION_LINES + 1)
    ]
    decorated = f"@functools.cache\nasync def f():\n{body[: -len(body.splitlines(True)[-1])]}"
    assert long_functions(decorated) == [("f", 2, MAX_FUNCTION_LINES + 1)]  # the decorator counts
    nested = "def outer():\n" + "".join("    " + line + "\n" for line in plain.splitlines())
    assert [name for name, _, _ in long_functions(nested)] == ["outer", "f"]
    short = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    assert long_functions(short) == []


def test_no_module_or_function_too_long():
    """clir/ and eval/: modules of at most MAX_MODULE_LINES lines, functions of at most MAX_FUNCTION_LINES."""
    sources = _sources()
    assert "eval.bench.serve_load" in sources and "clir.model.encoder" in sources  # both trees walked
    big, long = [], []
    for mod, path in sorted(sources.items()):
        source = path.read_text(encoding="utf-8")
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            big.append(f"{mod} ({n} lines)")
        long += [
            f"{mod}.{name} (line {line}, {length} lines)" for name, line, length in long_functions(source)
        ]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(big)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


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


# ---------------------------------------------------------------------- clir's public names
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_clir(module: str) -> bool:
    return module == "clir" or module.startswith("clir.")


def private_reaches(source: str) -> list[tuple[int, str]]:
    """(line, what) of every reach into clir's private names in ``source``: an import of an underscore name
    (or module) of clir, and ``obj._name`` on anything but ``self``/``cls`` or a module imported from outside
    clir (objects a script gets from clir are plain names, so every such name is checked)."""
    tree = ast.parse(source)
    outside: set[str] = set()  # names bound to modules and objects imported from elsewhere than clir
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if not _is_clir(node.module):
                outside.update(a.asname or a.name for a in node.names)
                continue
            found += [
                (node.lineno, f"from {node.module} import {a.name}")
                for a in node.names
                if _private(a.name) or any(_private(part) for part in node.module.split("."))
            ]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if not _is_clir(a.name):
                    outside.add((a.asname or a.name).split(".")[0])
                elif any(_private(part) for part in a.name.split(".")):
                    found.append((node.lineno, f"import {a.name}"))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if not (isinstance(base, ast.Name) and base.id in outside):
            found.append((node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return sorted(found)


def test_the_private_name_checker():
    snippet = """
import sys
import clir.model._hidden
from clir.train.trainer import _seed_everything, train
from eval.bench import common

def f(enc, torch):
    enc._packs.update({})
    enc.config._x = 1
    del enc._cast_params
    self._ok = sys._getframe() and common._split_sections
    return enc.__class__, train, self.enc._packs, cls._ok
"""
    assert private_reaches(snippet) == [
        (3, "import clir.model._hidden"),
        (4, "from clir.train.trainer import _seed_everything"),
        (8, "enc._packs"),
        (9, "enc.config._x"),
        (10, "enc._cast_params"),
        (12, "self.enc._packs"),
    ]
    assert private_reaches("from clir.model import load_encoder\nload_encoder('x').encode([])\n") == []


def test_eval_uses_only_public_names_of_clir():
    """The benchmarks use clir as a user would: what they need to switch is a public, documented option."""
    found = [
        f"{path.relative_to(EVAL.parent)}:{line}: {what}"
        for path in sorted(EVAL.rglob("*.py"))
        for line, what in private_reaches(path.read_text(encoding="utf-8"))
    ]
    assert not found, "private reaches into clir: " + "; ".join(found)
