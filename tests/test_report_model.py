"""The OOM report data model: JSON round trip, schema checks, torn and corrupt files, renderers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_support import AT_FAILURE, MiB, make_cuda_report, make_report

from profiler.errors import StreamError, UnknownNameError
from profiler.report import load_report, render, write_report
from profiler.report.model import (
    SCHEMA_VERSION,
    report_from_dict,
    report_from_json,
    report_to_dict,
    report_to_json,
)
from profiler.report.render_html import CHART_IDS, render_html
from profiler.report.render_md import render_markdown


@pytest.mark.parametrize("factory", [make_report, make_cuda_report])
def test_json_round_trip_is_exact(factory):
    report = factory()
    again = report_from_json(report_to_json(report))
    assert again == report
    assert again.tensors[0].shape == (64, 1024, 256)
    assert again.suggestions[0].params == {"batch_size": 56, "accumulation_steps": 2}
    assert report_to_dict(again)["schema"] == SCHEMA_VERSION


def test_json_has_no_path_and_keeps_ints():
    data = report_to_dict(make_report())
    assert "path" not in data
    assert data["total"] == sum(AT_FAILURE)
    assert data["breakdown"][4] == {
        "category": "activations",
        "current": 600 * MiB,
        "peak": 600 * MiB,
        "at_peak": 600 * MiB,
        "predicted": None,
        "gap": None,
    }


def test_unknown_fields_are_ignored():
    data = report_to_dict(make_report())
    data["from_the_future"] = {"x": 1}
    data["run"]["new_fact"] = 3
    assert report_from_dict(data) == make_report()


def test_write_then_load(tmp_path: Path):
    written = write_report(make_report(), tmp_path, "r")
    assert written.path == tmp_path / "r.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r.md"]
    loaded = load_report(tmp_path / "r.json")
    assert loaded == make_report()
    assert loaded.path == tmp_path / "r.json"
    assert loaded.paths() == {
        "json": tmp_path / "r.json",
        "md": tmp_path / "r.md",
        "html": tmp_path / "r.html",
    }
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        (
            '{"schema": 1, "created": 1',
            "is not valid JSON (torn or corrupt: Expecting ',' delimiter at line 1 column 27)",
        ),
        ("[1, 2]", "is not a gpumem OOM report (not a JSON object)"),
        ('{"created": 1.0}', "is not a gpumem OOM report (no schema version)"),
        ('{"schema": 99}', "has report schema 99, newer than this gpumem reads (1)"),
        ('{"schema": 1, "created": 1.0}', "is incomplete or corrupt (report.simulated: missing)"),
    ],
)
def test_bad_text_gives_one_line_stream_error(text, message):
    with pytest.raises(StreamError) as info:
        report_from_json(text, source="r.json")
    assert info.value.message == "r.json " + message
    assert "\n" not in info.value.one_line()


def test_wrong_type_deep_inside_is_named():
    data = report_to_dict(make_report())
    data["tensors"][0]["nbytes"] = "lots"
    with pytest.raises(StreamError) as info:
        report_from_dict(data, source="r.json")
    assert info.value.message == (
        "r.json is incomplete or corrupt (report.tensors[0].nbytes: expected an integer, got 'lots')"
    )


def test_truncated_file_on_disk(tmp_path: Path):
    text = report_to_json(make_report())
    path = tmp_path / "torn.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(StreamError, match=r"torn\.json is not valid JSON \(torn or corrupt"):
        load_report(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StreamError, match="not UTF-8"):
        load_report(path)
    with pytest.raises(StreamError, match="no report at"):
        load_report(tmp_path / "missing.json")


def test_markdown_has_every_section_with_figures():
    text = render_markdown(make_report())
    for heading in (
        "# gpumem OOM report: Simulated out of memory",
        "## Suggestions (most bytes saved first)",
        "## Memory by category",
        "## Waterfall at the failure",
        "## Largest live tensors",
        "## Fragmentation",
        "## Other processes on the GPU",
        "## Timeline leading up to the failure",
    ):
        assert heading in text
    assert "| capacity | 1.00 GiB |" in text
    assert "| requested | 64.00 MiB |" in text
    assert "| module | blocks.3.fc2 |" in text
    assert (
        "| 1 | batch_size | Reduce the batch size from 64 to 56 (the largest that fits) "
        "| 75.00 MiB | 702.00 MiB | yes |"
    ) in text
    assert (
        "| 64.00 MiB | activations | 64×1024×256 | float32 | blocks.3.fc1 | train.py:42 |" in text
    )
    assert "| activations | 600.00 MiB | 600.00 MiB | 600.00 MiB | - | - |" in text
    assert "| weights | 40.00 MiB | 40.00 MiB | 40.00 MiB | 40.00 MiB | matches |" in text
    assert "Predicted vs measured (categories with a forecast): 160.00 MiB predicted" in text


def test_markdown_of_a_cuda_report_shows_fragmentation_and_processes():
    text = render_markdown(make_cuda_report())
    assert "| cached but free | 123.00 MiB |" in text
    assert "| 4242 | python | 512.00 MiB |" in text
    assert "`oom_report.snapshot.pickle`" in text


def test_html_is_self_contained_and_escaped():
    page = render_html(make_report())
    assert page.startswith("<!DOCTYPE html>")
    for chart in CHART_IDS:
        assert f'<svg id="{chart}"' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert "<script src" not in page and "<link" not in page
    assert "a note &lt;with&gt; markup &amp; ampersand" in page
    payload = page.split('<script type="application/json" id="gpumem-data">')[1].split("</script>")[
        0
    ]
    data = json.loads(payload)
    assert data["breakdown"]["capacity"] == 1024 * MiB
    assert [s["name"] for s in data["breakdown"]["segments"]] == [
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "temporaries",
        "other",
    ]
    assert data["breakdown"]["ticks"][:3] == [
        [0, "0 B"],
        [256 * MiB, "256.00 MiB"],
        [512 * MiB, "512.00 MiB"],
    ]
    assert len(data["timeline"]["points"]) == 8


def test_render_dispatches_and_rejects_unknown_format():
    report = make_report()
    assert render(report, "md") == render_markdown(report)
    assert json.loads(render(report, "json"))["requested"] == 64 * MiB
    with pytest.raises(UnknownNameError):
        render(report, "pdf")


def test_reading_and_rendering_a_saved_report_never_imports_torch(tmp_path: Path):
    path = write_report(make_report(), tmp_path).path
    code = (
        "import sys\n"
        "from profiler.report import find_report, load_report, render\n"
        f"report = load_report(find_report({str(tmp_path)!r}))\n"
        "assert render(report, 'html').startswith('<!DOCTYPE html>')\n"
        "print(report.path, sorted(m for m in ('torch', 'pandas', 'textual') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"{path} []"
