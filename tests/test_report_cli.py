"""``gpumem report``: every format, every way to name a report, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_report_support import MiB, make_cuda_report, make_report

from profiler.cli import main
from profiler.report import REPORT_STEM, write_report
from profiler.report.model import report_to_json
from profiler.report.render_html import render_html
from profiler.report.render_md import render_markdown


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "home"
    monkeypatch.setenv("GPUMEM_HOME", str(root))
    return root


def _session(home: Path, name: str, report=None) -> Path:
    directory = home / "sessions" / name
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text("{}")
    if report is not None:
        write_report(report, directory, REPORT_STEM)
    return directory


def test_renders_each_format_to_stdout(tmp_path: Path, capsys, home):
    written = write_report(make_report(), tmp_path, "r")
    assert main(["report", str(written.path)]) == 0
    assert capsys.readouterr().out == render_markdown(written)
    assert main(["report", str(written.path), "--format", "html"]) == 0
    assert capsys.readouterr().out == render_html(written)
    assert main(["report", str(written.path), "-f", "json"]) == 0
    out = capsys.readouterr().out
    assert out == report_to_json(written) + "\n"
    assert json.loads(out)["capacity"] == 1024 * MiB


def test_output_file_takes_format_from_extension(tmp_path: Path, capsys, home):
    written = write_report(make_report(), tmp_path, "r")
    target = tmp_path / "out" / "page.html"
    target.parent.mkdir()
    assert main(["report", str(written.path), "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    assert target.read_text() == render_html(written)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_finds_reports_by_sibling_directory_session_and_latest(tmp_path: Path, capsys, home):
    older = _session(home, "20260101T000000.000000-host-1-train", make_report(step=7))
    os.utime(older / f"{REPORT_STEM}.json", (1_000, 1_000))
    _session(home, "20260102T000000.000000-host-2-infer", make_report(step=9))
    _session(home, "20260103T000000.000000-host-3-fine")  # no report

    def step_of(*target: str) -> int:
        assert main(["report", *target, "-f", "json"]) == 0
        return json.loads(capsys.readouterr().out)["step"]

    assert step_of(str(older / f"{REPORT_STEM}.html")) == 7
    assert step_of(str(older)) == 7
    assert step_of("train") == 7
    assert step_of("20260102T000000.000000-host-2-infer") == 9
    assert step_of("latest") == 9


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("nosuch", "gpumem report: error: no report file or session named 'nosuch'"),
        ("fine", "gpumem report: error: session 'fine' has no OOM report"),
    ],
)
def test_missing_reports_are_one_line_errors(target, expected, capsys, home):
    _session(home, "20260103T000000.000000-host-3-fine")
    assert main(["report", target]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected)
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b'{"schema": 1, "simulated": tr', "is not valid JSON (torn or corrupt"),
        (b'{"schema": 1, "created": 1.0}', "is incomplete or corrupt (report.simulated: missing)"),
        (b"\x00\xff\xfe", "is not a gpumem report (not UTF-8 text)"),
    ],
)
def test_corrupt_or_partial_report_is_one_line(tmp_path: Path, capsys, content, expected, home):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gpumem report: error: {path} {expected}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_half_written_report_on_disk_is_one_line(tmp_path: Path, capsys, home):
    text = report_to_json(make_report())
    for cut in (1, len(text) // 3, len(text) - 3):
        path = tmp_path / "half.json"
        path.write_text(text[:cut])
        assert main(["report", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_memory_viz_without_a_snapshot_exits_1(tmp_path: Path, capsys, home):
    written = write_report(make_report(), tmp_path, "r")
    assert main(["report", str(written.path), "--memory-viz", str(tmp_path / "s.pickle")]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"gpumem report: error: {written.path} has no allocator snapshot (captured on cpu, "
        "not CUDA) (hint: --memory-viz needs a report captured on a CUDA device)\n"
    )
    assert captured.out == ""
    assert not (tmp_path / "s.pickle").exists()


def test_memory_viz_copies_the_saved_snapshot(tmp_path: Path, capsys, home):
    written = write_report(make_cuda_report(), tmp_path, REPORT_STEM)
    (tmp_path / "oom_report.snapshot.pickle").write_bytes(b"\x80\x04snapshot-bytes")
    out = tmp_path / "viz.pickle"
    assert (
        main(["report", str(written.path), "--memory-viz", str(out), "-o", str(tmp_path / "r.md")])
        == 0
    )
    assert out.read_bytes() == b"\x80\x04snapshot-bytes"
    assert capsys.readouterr().err == f"wrote {out}: drag it onto https://pytorch.org/memory_viz\n"


def test_bad_format_is_usage_error(tmp_path: Path, capsys, home):
    written = write_report(make_report(), tmp_path, "r")
    with pytest.raises(SystemExit) as info:
        main(["report", str(written.path), "--format", "pdf"])
    assert info.value.code == 2
    assert "invalid choice: 'pdf'" in capsys.readouterr().err


def test_unwritable_output_is_one_line(tmp_path: Path, capsys, home):
    written = write_report(make_report(), tmp_path, "r")
    assert main(["report", str(written.path), "-o", str(tmp_path / "no" / "dir" / "x.md")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpumem report: error: cannot write the report to ")
    assert err.count("\n") == 1
