"""The HTML report in a real headless browser: its script draws every chart with no network.

Needs Chromium from the system packages (``apt-get install -y chromium``; .ci/run installs it);
skipped where no Chromium is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report_support import make_cuda_report, make_report

from profiler.report import write_report
from profiler.report.render_html import CHART_IDS

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if p and Path(p).exists()
    ),
    None,
)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def _dump_dom(page: Path, profile: Path) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _svg(dom: str, chart: str) -> str:
    match = re.search(rf'<svg id="{chart}"[^>]*>(.*?)</svg>', dom, re.S)
    assert match is not None, f"{chart} missing from the DOM"
    return match.group(0)


@pytest.mark.parametrize("factory", [make_report, make_cuda_report])
def test_every_chart_is_drawn_by_the_page_script(tmp_path: Path, factory):
    report = write_report(factory(), tmp_path, "report")
    assert report.path is not None
    dom = _dump_dom(report.path.with_suffix(".html"), tmp_path / "profile")

    body = re.search(r"<body[^>]*>", dom)
    assert body is not None
    assert 'data-charts-rendered="5"' in body.group(0)
    assert "data-chart-error" not in body.group(0)
    for chart in CHART_IDS:
        assert 'data-rendered="true"' in _svg(dom, chart)

    breakdown = _svg(dom, "chart-breakdown")
    categories = re.findall(r'class="segment" data-category="(\w+)"', breakdown)
    assert categories == [
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "temporaries",
        "other",
    ]
    assert breakdown.count('class="capacity"') == 1
    assert breakdown.count('class="requested"') == 1

    timeline = _svg(dom, "chart-timeline")
    areas = re.findall(r'<path d="M[^"]+Z"[^>]*class="area" data-category="(\w+)"', timeline)
    assert areas == ["weights", "gradients", "optimizer", "activations", "temporaries", "other"]
    assert timeline.count('class="failure"') == 1

    assert _svg(dom, "chart-waterfall").count('class="bar"') == 4
    # measured and predicted bars: 6 measured (non-zero or forecast) + 3 forecasts
    assert _svg(dom, "chart-predicted").count('class="bar"') == 9
    suggestions = _svg(dom, "chart-suggestions")
    assert suggestions.count('class="bar"') == 2
    assert suggestions.count('class="capacity"') == 1


def test_without_the_script_nothing_is_drawn(tmp_path: Path):
    """The check above can fail: the same page with its drawing script removed draws nothing."""
    report = write_report(make_report(), tmp_path, "report")
    assert report.path is not None
    page = report.path.with_suffix(".html")
    html = page.read_text()
    stripped, count = re.subn(r"<script>.*?</script>", "<script></script>", html, flags=re.S)
    assert count == 1
    page.write_text(stripped)
    dom = _dump_dom(page, tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None and 'data-charts-rendered="0"' in body.group(0)
    assert 'data-rendered="true"' not in _svg(dom, "chart-timeline")
