"""The public API: every name ``clir`` exports is what its name says (a class, a function, an error type),
not a same-named module that shadows it."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import clir

KINDS = {
    "ClirError": "exception",
    "DualEncoder": "class",
    "ModelConfig": "class",
    "Searcher": "class",
    "build_index": "function",
    "evaluate": "function",
    "load_collection": "function",
    "load_encoder": "function",
    "merge_indexes": "function",
    "__version__": "str",
}


def _kind(obj: object) -> str:
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return "exception"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj):
        return "function"
    if isinstance(obj, types.ModuleType):
        return "module"
    return type(obj).__name__


def test_every_public_name_has_its_kind():
    assert sorted(clir.__all__) == sorted(KINDS)
    for name, kind in KINDS.items():
        obj = getattr(clir, name)
        assert _kind(obj) == kind, f"clir.{name} is a {_kind(obj)}, not a {kind}"
        if kind != "str":
            assert obj.__name__ == name


def test_from_import_gives_the_function_whatever_was_imported_before():
    # a subpackage named like an exported function would replace it once imported (clir.evaluate did)
    code = (
        "import clir.cli.evaluate, clir.experiments.scoring, clir.metrics\n"
        "from clir import evaluate\n"
        "import inspect; assert inspect.isfunction(evaluate), evaluate\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clir.nope  # noqa: B018
