"""Reading JSON and YAML within limits, in one place: every file clir parses (documents, triples, manifests,
checkpoints, configs) goes through here, so a crafted or damaged file is a one-line :class:`ClirError`
naming it, never a RecursionError, a hang or an allocation of the machine's memory.

Limits: nesting depth (:data:`MAX_DEPTH`), bytes per document, integers of at most int64's size, no
NaN/Infinity in JSON (not JSON, and no clir field means them), and YAML aliases expanded into at most
:data:`MAX_YAML_NODES` nodes (a 563-byte "billion laughs" file names 10^9 of them). Text is UTF-8; a leading
byte-order mark is dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clir.errors import ClirError

#: the deepest nesting of lists/mappings any clir file has use for (its own files nest 5 deep at most)
MAX_DEPTH = 64
#: a whole JSON file (manifests, checkpoint states, markers, upstream dataset files) is read into memory
MAX_JSON_BYTES = 256 << 20
#: a config file is a page of settings (the largest shipped is 4 KB); parsing is linear, and a megabyte of
#: YAML parses in about a second with libyaml
MAX_YAML_BYTES = 1 << 20
#: nodes of a YAML document with every alias expanded (a config has a few hundred)
MAX_YAML_NODES = 100_000
#: JSON integers fit in int64: no field of a clir file needs more, and numpy/numba cannot take more
_MAX_INT_DIGITS = 19
BOM = "\ufeff"


def depth(obj: Any) -> int:
    """Deepest nesting of lists and dicts in a parsed document (iterative: no recursion limit to hit)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or abs(value := int(text)) >= 1 << 63:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is too large")
    return value


def loads_json(
    text: str | bytes, where: str, *, allow_nan: bool = False, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """Parse one JSON document; ``where`` (``file`` or ``file:line``) names it in errors."""
    if len(text) > max_bytes:
        raise ClirError(f"{where}: {len(text)} bytes of JSON, more than the {max_bytes >> 20} MiB clir reads")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ClirError(f"{where}: not UTF-8 (byte 0x{text[e.start]:02x} at {e.start + 1})") from None
    text = text.removeprefix(BOM)
    too_deep = ClirError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        # json's C parser gives up at Python's recursion limit (~1000 levels) with a RecursionError, fast
        obj = json.loads(text, parse_int=_bounded_int, parse_constant=None if allow_nan else _no_constant)
    except json.JSONDecodeError as e:
        raise ClirError(f"{where}: malformed JSON ({e.msg}: character {e.pos + 1})") from None
    except RecursionError:
        raise too_deep from None
    except ValueError as e:
        raise ClirError(f"{where}: malformed JSON ({e})") from None
    # brackets bound the depth from above: only a document with many of them is measured
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(obj) > MAX_DEPTH:
        raise too_deep
    return obj


def read_json(path: Path, *, what: str = "", allow_nan: bool = False, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A whole JSON file (its size checked before it is read)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ClirError(
            f"{path}: {size} bytes, more than the {max_bytes >> 20} MiB clir reads as {what or 'JSON'}"
        )
    with open(path, "rb") as f:
        return loads_json(f.read(max_bytes + 1), str(path), allow_nan=allow_nan, max_bytes=max_bytes)


# ---------------------------------------------------------------------- YAML
def _check_nodes(root: Any, where: str) -> None:
    """Refuse a YAML node graph whose expansion (every alias copied where it is used) exceeds
    :data:`MAX_YAML_NODES` nodes or :data:`MAX_DEPTH` levels. Sizes are memoised per node, so a bomb is
    measured in the time its few distinct nodes take, not in the 10^9 it expands to."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    # iterative post-order walk: a deep document must not exhaust Python's stack here either
    stack: list[tuple[Any, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            size[key], depth[key] = 1, 0
            continue
        if not done:
            if key in active:
                raise ClirError(f"{where}: a YAML alias refers to a node that contains it")
            active.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        active.discard(key)
        size[key] = 1 + sum(size[id(c)] for c in children)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[key] > MAX_YAML_NODES:
            raise ClirError(
                f"{where}: the YAML expands to more than {MAX_YAML_NODES} values (aliases copied where they "
                "are used): not a config"
            )
        if depth[key] > MAX_DEPTH:
            raise ClirError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels")


def loads_yaml(text: str | bytes, where: str) -> Any:
    """Parse one YAML document with PyYAML's safe loader (libyaml's parser when installed), its expanded
    size checked between composing the node graph and constructing Python objects from it."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ClirError(
            f"{where}: {len(text)} bytes, more than the {MAX_YAML_BYTES >> 20} MiB a config may have"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ClirError(f"{where}: not UTF-8 (byte 0x{text[e.start]:02x} at {e.start + 1})") from None
    # libyaml's parser where PyYAML has it: the pure-Python one takes ~15 s a megabyte
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text.removeprefix(BOM))
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own limit (1000 levels)
            raise ClirError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels") from None
        raise ClirError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:  # PyYAML's pure-Python composer
        raise ClirError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ClirError(f"{path}: {size} bytes, more than the {MAX_YAML_BYTES >> 20} MiB a config may have")
    with open(path, "rb") as f:
        return loads_yaml(f.read(MAX_YAML_BYTES + 1), str(path))
