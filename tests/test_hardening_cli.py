"""Hostile arguments and files: every ``gpumem`` command answers with one line and exit 1 or 2.

The CLI's last-line guard would turn an escaped exception into ``internal error: ...``; these
tests assert that it never has to: each case is refused by the command itself.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from profiler.cli import main
from profiler.errors import UsageError
from profiler.units import MAX_SIZE, parse_bytes

GOOD_CONFIG = {
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1000,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
}


def one_line(capsys: pytest.CaptureFixture[str], *argv: str, code: int | None = None) -> str:
    """Run ``gpumem argv``; assert one line on stderr, our own (not the guard's), exit 1 or 2."""
    exit_code = main(list(argv))
    err = capsys.readouterr().err
    assert exit_code in ((1, 2) if code is None else (code,)), (exit_code, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "internal error" not in err, err
    assert "\x1b" not in err
    return err


def config_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(GOOD_CONFIG).replace("256", "NaN", 1),
        json.dumps(GOOD_CONFIG).replace("256", "Infinity", 1),
        json.dumps(GOOD_CONFIG).replace("256", "-Infinity", 1),
        json.dumps(GOOD_CONFIG).replace("256", "1e999", 1),
        json.dumps(GOOD_CONFIG).replace("256", "9" * 400, 1),
        json.dumps(GOOD_CONFIG).replace("256", "9" * 5000, 1),
        json.dumps(GOOD_CONFIG).replace("256", "256.5", 1),
        json.dumps(GOOD_CONFIG).replace("256", '"256"', 1),
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100 + "1" + "}" * 100,
        b"\xff\xfe\x00garbage",
        "",
        "[1, 2]",
    ],
)
def test_estimate_on_hostile_configs(tmp_path: Path, capsys, text) -> None:
    err = one_line(capsys, "estimate", config_file(tmp_path, text))
    assert err.startswith("gpumem estimate: error: ")


def test_estimate_reads_a_good_config_and_a_symlinked_one(tmp_path: Path, capsys) -> None:
    path = config_file(tmp_path, json.dumps(GOOD_CONFIG))
    assert main(["estimate", path, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    link = tmp_path / "snapshot-config.json"  # a Hugging Face cache's config.json is a link
    link.symlink_to(path)
    assert main(["estimate", str(link), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {**again, "model": None} == {**first, "model": None}


def test_estimate_on_a_fifo_never_blocks(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(one_line(capsys, "estimate", str(fifo))))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "gpumem estimate blocked on a FIFO"
    assert "a FIFO, not a regular file" in result[0]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_estimate_on_a_device_is_refused(capsys, device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    assert "a device, not a regular file" in one_line(capsys, "estimate", device)


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "1e999B"],
        ["estimate", "1e999"],
        ["estimate", "9" * 400 + "B"],
        ["estimate", "x" * 100_000],
        ["estimate", "llama-2-7b", "--batch", "1" * 5000],
        ["estimate", "llama-2-7b", "--batch", str(10**30)],
        ["estimate", "llama-2-7b", "--seq", "nan"],
        ["estimate", "llama-2-7b", "--seq", "1e9"],
        ["estimate", "llama-2-7b", "--lora-rank", "-1"],
        ["estimate", "llama-2-7b", "--gpu", "\x1b]0;pwned\x07"],
        ["estimate", "llama-2-7b", "--precision", "x\x00y"],
        ["estimate", "llama-2-7b\x00"],
        ["demo", "--seq", "100000"],
        ["demo", "--batch", "100000000"],
        ["demo", "--steps", "0"],
        ["demo", "--device", "xyz"],
        ["demo", "--device", "meta"],
        ["demo", "--device", "cuda:99999"],
        ["top", "--home", "~nobody_such_user_here/x", "--once"],
        ["top", "--home", "x\x00y", "--once"],
        ["top", "--once", "--width", "1" * 5000],
        ["top", "--once", "--width", str(10**12)],
        ["top", "--once", "--interval", "nan"],
        ["top", "--once", "--interval", "inf"],
        ["report", "~nobody_such_user_here/r.json"],
        ["report", "x" * 5000],
        ["report", "a\x00b"],
    ],
)
def test_hostile_arguments_are_one_line(tmp_path: Path, monkeypatch, capsys, argv) -> None:
    monkeypatch.setenv("GPUMEM_HOME", str(tmp_path / "home"))
    one_line(capsys, *argv)


def test_demo_refuses_before_importing_torch(capsys) -> None:
    from profiler.cli import demo

    args = type("A", (), {"steps": 1, "batch": 1, "seq": 257, "device": None})()
    with pytest.raises(UsageError, match="--seq must be between 1 and 256"):
        demo.check_arguments(args)


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-inf", "1e999B", "1e999GB", float("nan"), float("inf"), 10**400]
)
def test_non_finite_and_absurd_sizes_are_usage_errors(value) -> None:
    with pytest.raises(UsageError):
        parse_bytes(value)


def test_sizes_up_to_one_exbibyte() -> None:
    assert parse_bytes(MAX_SIZE) == 2**60
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("80 GiB") == 80 * 2**30
    with pytest.raises(UsageError):
        parse_bytes(MAX_SIZE + 1)


@pytest.mark.parametrize("capacity", ["inf", "nan", float("inf"), float("nan"), "1e999B"])
def test_track_memory_capacity_inf_or_nan_is_a_usage_error(capacity) -> None:
    import torch

    from profiler import track_memory

    with pytest.raises(UsageError):
        track_memory(torch.nn.Linear(2, 2), capacity=capacity, stream=False)


# -- report -o and --memory-viz --------------------------------------------------------------


@pytest.fixture
def written_report(tmp_path: Path, monkeypatch):
    from test_report_support import make_cuda_report

    from profiler.report import REPORT_STEM, write_report

    monkeypatch.setenv("GPUMEM_HOME", str(tmp_path / "home"))
    directory = tmp_path / "session"
    directory.mkdir()
    return write_report(make_cuda_report(), directory, REPORT_STEM)


def test_output_to_a_fifo_writes_through(tmp_path: Path, capsys, written_report) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read)
    reader.start()
    assert main(["report", str(written_report.path), "-o", str(fifo), "-f", "json"]) == 0
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not replaced by a file
    assert json.loads(received[0])["schema"] == 1


def test_output_to_dev_null_keeps_the_device(capsys, written_report) -> None:
    assert main(["report", str(written_report.path), "-o", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(
    tmp_path: Path, capsys, written_report
) -> None:
    target = tmp_path / "real.md"
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert main(["report", str(written_report.path), "-o", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("#")


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
def test_output_never_replaces_a_non_file(tmp_path: Path, capsys, written_report, kind) -> None:
    out = tmp_path / "out"
    if kind == "directory":
        out.mkdir()
    else:
        out.symlink_to(tmp_path / "nowhere")
    err = one_line(capsys, "report", str(written_report.path), "-o", str(out), code=1)
    assert "cannot write the report to" in err
    assert out.is_dir() if kind == "directory" else out.is_symlink()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "sub/../../x", ""])
def test_memory_viz_reads_only_beside_the_report(
    tmp_path: Path, capsys, written_report, name
) -> None:
    import dataclasses

    from profiler.report.model import report_to_json

    path = written_report.path
    path.write_text(report_to_json(dataclasses.replace(written_report, snapshot=name)))
    out = tmp_path / "viz.pickle"
    err = one_line(capsys, "report", str(path), "--memory-viz", str(out), code=1)
    assert ("outside its directory" in err) or ("no allocator snapshot" in err)
    assert not out.exists()


def test_memory_viz_refuses_a_symlinked_snapshot(tmp_path: Path, capsys, written_report) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret")
    (written_report.path.parent / written_report.snapshot).symlink_to(secret)
    out = tmp_path / "viz.pickle"
    err = one_line(capsys, "report", str(written_report.path), "--memory-viz", str(out), code=1)
    assert "cannot read the snapshot" in err or "outside its directory" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "edit",
    [lambda d: {**d, "created": float("nan")}, lambda d: {**d, "created": 1e300}],
)
def test_report_with_absurd_required_numbers_is_one_line(capsys, written_report, edit):
    data = json.loads(written_report.path.read_text())
    text = json.dumps(edit(data))  # NaN / Infinity written as the bare tokens
    written_report.path.write_text(text)
    one_line(capsys, "report", str(written_report.path), code=1)


@pytest.mark.parametrize(("field", "value"), [("capacity", 10**400), ("step", float("inf"))])
def test_report_with_an_absurd_optional_number_shows_it_unknown(
    capsys, written_report, field, value
):
    data = json.loads(written_report.path.read_text())
    assert data[field] is not None
    written_report.path.write_text(json.dumps({**data, field: value}))
    assert main(["report", str(written_report.path), "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[field] is None


def test_report_on_stdout_escapes_control_characters(tmp_path: Path, capsys, written_report):
    import dataclasses

    from profiler.report import write_report

    hostile = dataclasses.replace(written_report, device="cuda:0\x1b]0;pwned\x07\x1b[2J")
    again = write_report(hostile, tmp_path, "hostile")
    assert main(["report", str(again.path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;pwned\\x07" in out
