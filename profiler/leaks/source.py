"""Reading the user's source: "file:LINE" sites, their text, and the lines that add to a name.

A site is the string ``"path/to/file.py:LINE"`` (what the ledger records). This module turns it
into the line's text, a path relative to the working directory for display, and finds, with
:mod:`ast`, the statements that add to a container (``losses.append(loss)``) or pass it to a call
(``model(x, past_key_values=cache)``). Parsed files are cached by modification time.
"""

from __future__ import annotations

import ast
import linecache
import os
import types
from collections.abc import Iterable

__all__ = ["code_range", "display_site", "in_codes", "mutation_lines", "source_of", "split_site"]

#: Methods that add to the container they are called on.
MUTATORS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "add",
        "update",
        "setdefault",
        "appendleft",
        "extendleft",
        "put",
        "put_nowait",
        "__setitem__",
    }
)


def display_site(site: str | None) -> str | None:
    """``site`` with its path relative to the working directory when it lies inside it."""
    if not site:
        return site
    filename, _, line = site.rpartition(":")
    if os.path.isabs(filename):
        try:
            relative = os.path.relpath(filename)
        except ValueError:  # another drive on Windows
            return site
        if not relative.startswith(os.pardir):
            return f"{relative}:{line}"
    return site


def source_of(site: str | None) -> str | None:
    """The stripped source line of "file:LINE" (``None`` when unreadable)."""
    if not site:
        return None
    filename, _, line = site.rpartition(":")
    if not line.isdigit():
        return None
    text = linecache.getline(filename, int(line)).strip()
    return text or None


def split_site(site: str) -> tuple[str, int] | None:
    """``(file, line)`` of "file:LINE", ``None`` when it has no line number."""
    filename, _, line = site.rpartition(":")
    return (filename, int(line)) if line.isdigit() else None


def code_range(code: types.CodeType) -> tuple[int, int]:
    """The first and last line of a code object."""
    lines = [line for _, _, line in code.co_lines() if line is not None]
    return code.co_firstlineno, max(lines, default=code.co_firstlineno)


def in_codes(site: str | None, codes: Iterable[types.CodeType]) -> bool:
    """Whether the line ``site`` lies inside one of ``codes`` (a hook's body, say)."""
    if site is None:
        return False
    parts = split_site(site)
    if parts is None:
        return False
    filename, line = parts
    for code in codes:
        if os.path.abspath(code.co_filename) == os.path.abspath(filename):
            first, last = code_range(code)
            if first <= line <= last:
                return True
    return False


_AST_CACHE: dict[str, tuple[float, ast.AST | None]] = {}


def _parse(filename: str) -> ast.AST | None:
    """The parsed module at ``filename`` (cached by modification time), ``None`` if unreadable."""
    try:
        mtime = os.stat(filename).st_mtime
    except OSError:
        mtime = -1.0
    cached = _AST_CACHE.get(filename)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    text = "".join(linecache.getlines(filename))
    tree: ast.AST | None
    try:
        tree = ast.parse(text) if text else None
    except SyntaxError:
        tree = None
    _AST_CACHE[filename] = (mtime, tree)
    return tree


def _is_ref(node: ast.AST, name: str, attribute: bool) -> bool:
    while isinstance(node, ast.Subscript):  # name["key"].append(x) adds to name too
        node = node.value
    if attribute:
        return isinstance(node, ast.Attribute) and node.attr == name
    return isinstance(node, ast.Name) and node.id == name


def _mentions(node: ast.AST, name: str, attribute: bool) -> bool:
    return any(_is_ref(n, name, attribute) for n in ast.walk(node))


def _passes(node: ast.AST, name: str, attribute: bool) -> bool:
    """Whether ``node`` is a call that passes ``name`` as an argument (or in a dict argument)."""
    if not isinstance(node, ast.Call):
        return False
    values: list[ast.AST] = [*node.args, *(k.value for k in node.keywords)]
    values += [v for d in values if isinstance(d, ast.Dict) for v in d.values]
    return any(_is_ref(v, name, attribute) for v in values)


def _adds(node: ast.AST, name: str, attribute: bool) -> bool:
    """Whether ``node`` adds to ``name``: a mutator call, an item or augmented assignment, or
    an assignment whose value mentions it (``name = torch.cat([name, x])``)."""
    if isinstance(node, ast.Call):
        func = node.func
        return (
            isinstance(func, ast.Attribute)
            and func.attr in MUTATORS
            and _is_ref(func.value, name, attribute)
        )
    if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    value = node.value
    for target in targets:
        if isinstance(target, ast.Subscript) and _is_ref(target.value, name, attribute):
            return True
        if _is_ref(target, name, attribute) and (
            isinstance(node, ast.AugAssign)
            or (value is not None and _mentions(value, name, attribute))
        ):
            return True
    return False


def mutation_lines(
    filename: str,
    name: str,
    *,
    attribute: bool = False,
    first: int = 1,
    last: int | None = None,
    passed: bool = False,
) -> list[int]:
    """Lines between ``first`` and ``last`` that add to ``name`` (``self.name`` if ``attribute``).

    Recognised: ``name.append(x)`` (and extend, insert, add, update, setdefault, ...),
    ``name[k] = x``, ``name += ...`` and ``name = f(name, x)`` (``torch.cat([name, x])``).
    With ``passed``, the lines that pass ``name`` to a call instead (``model(x, cache=name)``):
    that is where an object that grows inside a library call (a KV cache) is fed.
    """
    tree = _parse(filename)
    if tree is None:
        return []
    end = last if last is not None else 1 << 30
    test = _passes if passed else _adds
    found: set[int] = set()
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is not None and first <= lineno <= end and test(node, name, attribute):
            found.add(lineno)
    return sorted(found)
