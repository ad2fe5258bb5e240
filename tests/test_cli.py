"""``gpumem`` itself: ``--version``, the distribution's name, and commands other packages register."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import profiler.cli
from profiler.cli import BUILTIN, COMMAND_GROUP, DISTRIBUTION, main, registered_commands, version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_distribution_name_is_the_one_pyproject_publishes() -> None:
    assert DISTRIBUTION == PROJECT["name"] == "torch-gpumem"
    assert PROJECT["scripts"] == {"gpumem": "profiler.cli:main"}
    assert PROJECT["entry-points"][COMMAND_GROUP] == {"top": "tui.top"}


def test_version_prints_the_distribution_and_its_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    try:
        installed = metadata.version("torch-gpumem")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH
        assert capsys.readouterr().out == (
            f"torch-gpumem {PROJECT['version']} (source tree, not installed)\n"
        )
    else:
        assert installed == PROJECT["version"]
        assert capsys.readouterr().out == f"torch-gpumem {installed}\n"


def test_version_of_a_source_tree_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert version() == f"torch-gpumem {PROJECT['version']} (source tree, not installed)"


def test_top_joins_through_the_entry_point_group() -> None:
    import tui.top

    commands = registered_commands()
    assert commands.get("top") is tui.top, (
        "gpumem top is not registered: the installed metadata is stale; "
        "run ./scripts/setup.sh (pip install -e .)"
    )
    assert set(BUILTIN) == {"demo", "estimate", "devices", "report", "run", "export", "job"}


def _fake_group(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    points = [metadata.EntryPoint(name, value, COMMAND_GROUP) for name, value in values.items()]
    real = metadata.entry_points

    def entry_points(*, group: str) -> Any:
        return points if group == COMMAND_GROUP else real(group=group)  # torch reads its own

    monkeypatch.setattr(profiler.cli.metadata, "entry_points", entry_points)


def test_a_registered_command_gets_its_options_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gpumem_hello.py").write_text(
        "HELP = 'say hello'\n"
        "def add_arguments(parser):\n"
        "    parser.add_argument('--name', default='world')\n"
        "def run(args):\n"
        "    print(f'hello {args.name}')\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # a plugin cannot take a built-in command's name
    _fake_group(monkeypatch, hello="gpumem_hello", estimate="gpumem_hello")
    assert main(["hello", "--name", "gpumem"]) == 3
    assert capsys.readouterr().out == "hello gpumem\n"
    assert sorted(registered_commands()) == ["hello"]
    assert main(["estimate", "--list", "--json"]) == 0
    assert '"presets"' in capsys.readouterr().out


def test_a_built_in_command_does_not_scan_the_entry_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_scan(*, group: str) -> Any:
        raise AssertionError(f"scanned {group}")

    monkeypatch.setattr(profiler.cli.metadata, "entry_points", no_scan)
    assert main(["devices", "--demo"]) == 0
    assert capsys.readouterr().out.startswith("GPU 0  NVIDIA H100 80GB HBM3")
    with pytest.raises(AssertionError, match="scanned gpumem.commands"):
        main(["top", "--once"])


def test_a_plugin_that_fails_to_load_breaks_only_its_own_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_group(monkeypatch, broken="gpumem_no_such_module_here")
    assert main(["devices", "--demo", "--json"]) == 0
    assert '"devices"' in capsys.readouterr().out
    assert main(["broken", "--any", "option"]) == 1  # one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("gpumem broken: error: internal error: ModuleNotFoundError: ")
    assert "gpumem_no_such_module_here" in err and err.count("\n") == 1
    monkeypatch.setenv("GPUMEM_DEBUG", "1")  # for a bug report: the traceback
    with pytest.raises(ModuleNotFoundError, match="gpumem_no_such_module_here"):
        main(["broken", "--any", "option"])


def test_without_a_command_is_usage_error_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_run_command_runs_one_module_without_the_registry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from profiler.cli import devices, run_command

    assert run_command("devices", devices, ["--demo"]) == 0
    assert capsys.readouterr().out.startswith("GPU 0  NVIDIA H100 80GB HBM3")
    parser = argparse.ArgumentParser()
    devices.add_arguments(parser)
    assert parser.parse_args(["--json"]).json is True


def test_python_dash_m_runs_gpumem() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "profiler.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.startswith(f"torch-gpumem {PROJECT['version']}")
