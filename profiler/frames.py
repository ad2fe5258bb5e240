"""The one answer to "is this frame the user's code?", for creation sites, holders and warnings.

The ledger records where a storage was created (the innermost user frames); the leak hunt
searches the locals of user frames for what holds leaked tensors and points its warning at the
innermost user frame. All three use :func:`is_user_file`, so a line the ledger calls the user's is
one the leak report can name.

A file is the user's unless it is

- in torch, transformers, accelerate, peft, the test runner (pytest, pluggy), or gpumem itself
  (``profiler/`` and ``tui/``): looked up in :data:`sys.modules` when asked, so a library
  imported after tracking started is still recognised, and nothing here imports it;
- in the standard library, except code installed in a site-packages directory (a system
  Python keeps site-packages inside the standard library's directory);
- generated code with a pseudo file name (``<string>``, ``<frozen ...>``, torch.fx's
  ``<eval_with_key>``), except interactive input (``<stdin>``, ``<console>``, IPython's
  ``<ipython-input-...>``), which is the user's.

Cost: the prefixes are computed once and again only when :data:`sys.modules` changes size, so
:func:`user_sites` (called per new storage during a leak hunt) is a walk up the stack with a
few ``str.startswith`` per frame. Nothing here imports torch or any other part of gpumem.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

__all__ = ["is_user_file", "user_frames", "user_sites", "user_stacklevel"]

#: Packages whose code is never the user's, found through ``sys.modules`` when loaded.
LIBRARY_MODULES = ("torch", "transformers", "accelerate", "peft", "pytest", "_pytest", "pluggy")
#: Pseudo file names of interactive input: the user's, though they start with ``<``.
INTERACTIVE = ("<stdin>", "<console>", "<ipython-input-")

_HERE = os.path.dirname(os.path.abspath(__file__))
#: gpumem's own code: this package and the Textual app next to it.
_OWN = (_HERE + os.sep, os.path.join(os.path.dirname(_HERE), "tui") + os.sep)


@dataclass(frozen=True, slots=True)
class _Prefixes:
    """Path prefixes that decide whose a file is, for one state of ``sys.modules``."""

    modules: tuple[int, ...]
    libraries: tuple[str, ...]
    site_packages: tuple[str, ...]
    stdlib: tuple[str, ...]


def _site_packages() -> tuple[str, ...]:
    getsitepackages = getattr(site, "getsitepackages", None)  # missing in old virtualenvs
    dirs = list(getsitepackages()) if callable(getsitepackages) else []
    getuser = getattr(site, "getusersitepackages", None)
    if callable(getuser):
        dirs.append(getuser())
    return tuple(d + os.sep for d in dirs if d)


_SITE_PACKAGES = _site_packages()
_STDLIB = tuple(
    {p + os.sep for p in (sysconfig.get_paths()["stdlib"], os.path.dirname(os.__file__))}
)


def _state() -> tuple[int, ...]:
    """What the prefixes depend on: how many modules are loaded, and which library modules."""
    modules = sys.modules
    return (len(modules), *(id(modules.get(name)) for name in LIBRARY_MODULES))


def _compute() -> _Prefixes:
    libraries = list(_OWN)
    for name in LIBRARY_MODULES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) if module is not None else None
        if isinstance(path, str):
            libraries.append(os.path.dirname(path) + os.sep)
    return _Prefixes(_state(), (*libraries, "<"), _SITE_PACKAGES, _STDLIB)


_prefixes = _compute()


def _current() -> _Prefixes:
    global _prefixes
    prefixes = _prefixes
    if prefixes.modules != _state():
        prefixes = _prefixes = _compute()
    return prefixes


def _is_user(filename: str, prefixes: _Prefixes) -> bool:
    if filename.startswith(prefixes.libraries):
        return filename.startswith(INTERACTIVE)
    if filename.startswith(prefixes.stdlib):
        return filename.startswith(prefixes.site_packages)
    return True


def is_user_file(filename: str) -> bool:
    """Whether code in ``filename`` is the user's: not a library's, not the standard library's."""
    return _is_user(filename, _current())


def user_frames(frame: FrameType | None) -> list[FrameType]:
    """The user's frames from ``frame`` outwards (innermost first)."""
    prefixes = _current()
    found = []
    while frame is not None:
        if _is_user(frame.f_code.co_filename, prefixes):
            found.append(frame)
        frame = frame.f_back
    return found


def user_sites(frame: FrameType | None, limit: int = 4) -> tuple[tuple[str, int], ...] | None:
    """Up to ``limit`` user frames from ``frame`` outwards as (file, line), ``None`` if none."""
    prefixes = _current()
    found: list[tuple[str, int]] = []
    while frame is not None and len(found) < limit:
        filename = frame.f_code.co_filename
        if _is_user(filename, prefixes):
            found.append((filename, frame.f_lineno))
        frame = frame.f_back
    return tuple(found) or None


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller that names the innermost user frame.

    Call it from the function that calls ``warnings.warn``; 2 (its caller) when no frame is the
    user's.
    """
    prefixes = _current()
    # level 1 is the caller's warnings.warn, level 2 the caller's caller: frame 2 from here
    frame: FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None:
        if _is_user(frame.f_code.co_filename, prefixes):
            return level
        frame = frame.f_back
        level += 1
    return 2
