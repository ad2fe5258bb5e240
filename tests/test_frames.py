"""The one "is this frame user code?" rule (profiler/frames.py), as the ledger and leaks use it."""

from __future__ import annotations

import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from profiler import frames
from profiler.ledger import Ledger
from profiler.records import CATEGORIES, Category


def _line() -> int:
    frame = sys._getframe(1)
    return frame.f_lineno


def test_libraries_the_standard_library_and_generated_code_are_not_the_users(
    tmp_path: Path,
) -> None:
    assert frames.is_user_file(str(tmp_path / "train.py"))
    assert frames.is_user_file(__file__)  # tests are user code
    assert not frames.is_user_file(torch.__file__)
    assert not frames.is_user_file(os.path.join(os.path.dirname(torch.__file__), "nn", "x.py"))
    assert not frames.is_user_file(frames.__file__)  # gpumem itself
    assert not frames.is_user_file(pytest.__file__)  # the test runner
    assert not frames.is_user_file(sys.modules["_pytest"].__file__ or "")
    assert not frames.is_user_file(os.__file__)
    assert not frames.is_user_file("<string>")
    assert not frames.is_user_file("<frozen importlib._bootstrap>")
    assert not frames.is_user_file("<eval_with_key>.3")
    # interactive input is the user's
    assert frames.is_user_file("<stdin>")
    assert frames.is_user_file("<ipython-input-3-0123456789ab>")


def test_a_library_imported_later_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "peft"
    inside = str(package / "tuners.py")
    monkeypatch.delitem(sys.modules, "peft", raising=False)  # a dev dependency other tests import
    assert frames.is_user_file(inside)
    fake = types.ModuleType("peft")
    fake.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "peft", fake)
    assert not frames.is_user_file(inside)


def test_user_sites_skip_gpumem_and_the_test_runner() -> None:
    line = _line()
    assert frames.user_sites(sys._getframe()) == ((__file__, line + 1),)
    assert frames.user_sites(None) is None


def test_the_ledger_records_user_frames_only() -> None:
    ledger = Ledger()
    ledger.record_sites = True
    tensor = torch.zeros(256)
    line = _line()
    ledger.add_tensor(tensor, CATEGORIES.index(Category.TEMPORARIES))  # + 1
    (storage,) = ledger.live_storages()
    # the ledger's own frames and pytest's are left out: the test is the whole stack
    assert storage.stack == (f"{__file__}:{line + 1}",)
    assert storage.site == f"{__file__}:{line + 1}"
    assert storage.nbytes == 256 * 4


def _warn_from_the_library() -> None:
    warnings.warn("from inside", stacklevel=frames.user_stacklevel())


def test_user_stacklevel_points_at_the_innermost_user_frame() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line()
        _warn_from_the_library()
    (warning,) = caught
    # this test file is user code, so the caller of the warning function is named
    assert (warning.filename, warning.lineno) == (__file__, line + 1)
