"""Notebook HTML (tracker, Estimate, Leak, Suggestion, OOM report) and the notebook's name.

Every figure checked is exact bytes from shapes and dtypes (shown in units, exact on hover);
hostile names come from real objects (a module named with markup, a run named with it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from profiler import SimulatedOutOfMemoryError, Suggestion, estimate, track_memory
from profiler.notebook import _connection_session, estimate_html, notebook_name
from profiler.records import CATEGORIES
from profiler.units import format_bytes

HOSTILE = '<img src=x onerror="alert(1)">&<script>alert(2)</script>'
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "leaks"


class Cells(HTMLParser):
    """The tags and table rows of an HTML fragment (each cell's text and its ``title``)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: list[list[tuple[str, str | None]]] = []
        self._cell: list[str] | None = None
        self._title: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell, self._title = [], dict(attrs).get("title")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), self._title))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def row(self, first: str) -> list[tuple[str, str | None]]:
        (found,) = [r for r in self.rows if r and r[0][0] == first]
        return found


def exact(cell: tuple[str, str | None]) -> int:
    """The exact bytes of a byte cell (its hover title), checked against the shown units."""
    text, title = cell
    assert title is not None and title.endswith(" bytes"), cell
    value = int(title.removesuffix(" bytes"))
    assert text == format_bytes(value)
    return value


def no_markup_from(text: str, fragment: str) -> None:
    """The hostile text shows escaped and adds no tag."""
    assert "<script" not in fragment and "<img" not in fragment
    assert set(Cells(fragment).tags) <= {"div", "b", "span", "table", "tr", "th", "td", "ul", "li"}
    assert "&lt;script&gt;" in fragment


def test_the_tracker_shows_its_breakdown_with_exact_bytes() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    optimizer = torch.optim.Adam(model.parameters())
    with track_memory(model, optimizer, stream=False, name=HOSTILE) as mem:
        model(torch.randn(4, 16)).sum().backward()
        optimizer.step()
    fragment = mem._repr_html_()
    no_markup_from(HOSTILE, fragment)
    cells = Cells(fragment)
    weights = 4 * (16 * 32 + 32 + 32 * 8 + 8)
    assert exact(cells.row("weights")[1]) == weights
    assert exact(cells.row("gradients")[1]) == weights
    # Adam: exp_avg and exp_avg_sq like each of the 4 parameters, and a 4-byte step each
    assert exact(cells.row("optimizer")[1]) == 2 * weights + 4 * 4
    assert exact(cells.row("total")[3]) == mem.peak_bytes
    for i, category in enumerate(CATEGORIES):
        row = cells.row(str(category))
        assert [exact(c) for c in row[1:4]] == [
            mem.peaks.current[i],
            mem.peaks.by_category[i],
            mem.peaks.at_peak[i],
        ]
    widths = [float(w) for w in re.findall(r"width:([0-9.]+)%", fragment)]
    assert sum(widths) == pytest.approx(100.0, abs=0.01)  # no capacity: the peak fills the bar
    assert "1 step ·" in fragment


def test_with_a_capacity_the_bar_is_a_share_of_it() -> None:
    model = nn.Linear(256, 256)  # 263,168 bytes of weights
    with track_memory(model, stream=False, capacity=4 * 263_168) as mem:
        model(torch.randn(1, 256))
    widths = [float(w) for w in re.findall(r"width:([0-9.]+)%", mem._repr_html_())]
    assert sum(widths) == pytest.approx(100 * mem.peak_bytes / (4 * 263_168), abs=0.01)


def _load_recipe(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"nb_leak_recipe_{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_leak_shows_its_rate_site_and_fix() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (leak,) = _load_recipe("graph_kept").main(10).leaks()
    cells = Cells(leak._repr_html_())
    assert exact(cells.row("grows per step")[1]) == leak.bytes_per_step
    assert cells.row("held at")[1][0] == leak.site
    assert cells.row("category")[1][0] == str(leak.category)
    hostile = dataclasses.replace(leak, site=HOSTILE, suggestion=HOSTILE, source=HOSTILE)
    no_markup_from(HOSTILE, hostile._repr_html_())


def test_a_suggestion_shows_what_it_saves_and_whether_it_fits() -> None:
    suggestion = Suggestion(
        kind="batch_size",
        title=HOSTILE,
        saves_bytes=3 * 2**20,
        fits=True,
        params={"batch_size": 8, HOSTILE: HOSTILE},
        detail=HOSTILE,
        peak_after=5 * 2**20,
        verified=True,
        replayed_peak=5 * 2**20,
    )
    fragment = suggestion._repr_html_()
    no_markup_from(HOSTILE, fragment)
    cells = Cells(fragment)
    assert exact(cells.row("saves")[1]) == 3 * 2**20
    assert exact(cells.row("peak after")[1]) == 5 * 2**20
    assert cells.row("then")[1][0] == "fits"
    assert cells.row("measured")[1][0] == "replayed on fake tensors"
    unknown = dataclasses.replace(suggestion, fits=None, verified=False, peak_after=None)
    assert Cells(unknown._repr_html_()).row("then")[1][0] == "not known"


def test_the_oom_report_shows_the_breakdown_at_the_failure(tmp_path: Path) -> None:
    model = nn.Sequential()
    model.add_module(HOSTILE, nn.Linear(64, 64))  # a module name with markup
    with (
        warnings.catch_warnings(),
        pytest.raises(SimulatedOutOfMemoryError),
        track_memory(model, capacity=40_000, home=tmp_path) as mem,
    ):
        warnings.simplefilter("ignore")
        model(torch.randn(256, 64))  # a 64 KiB output into 40,000 bytes with 16,640 of weights
    report = mem.oom_report
    assert report is not None
    fragment = report._repr_html_()
    no_markup_from(HOSTILE, fragment)
    cells = Cells(fragment)
    assert exact(cells.row("weights")[1]) == 4 * (64 * 64 + 64)
    assert exact(cells.row("requested")[1]) == 256 * 64 * 4
    assert exact(cells.row("capacity")[1]) == 40_000
    for row in report.breakdown:
        assert exact(cells.row(str(row.category))[1]) == row.current
    # the request goes past the capacity: the bar holds both, a line marks where the device ends
    held = sum(row.current for row in report.breakdown) + 256 * 64 * 4
    (left,) = re.findall(r"left:([0-9.]+)%", fragment)
    assert float(left) == pytest.approx(100 * 40_000 / held, abs=0.001)


def test_an_estimate_shows_its_categories_overheads_and_total() -> None:
    result = estimate(params=1_000_000, precision="fp32", mode="inference")
    cells = Cells(estimate_html(result))
    for category, value in result.categories.items():
        assert exact(cells.row(str(category))[1]) == value
    for overhead in result.overheads:
        assert exact(cells.row(overhead.name)[1]) == overhead.bytes
    assert exact(cells.row("total")[1]) == result.total
    no_markup_from(HOSTILE, estimate_html(dataclasses.replace(result, model=HOSTILE)))


# ============================================================================ the notebook's name


def test_outside_a_kernel_there_is_no_notebook_name() -> None:
    assert notebook_name() is None  # pytest is not an ipykernel


@pytest.mark.parametrize(
    ("namespace", "environ", "name"),
    [
        ({"__vsc_ipynb_file__": "/home/me/work/analysis.ipynb"}, {}, "analysis"),
        ({"__session__": "work/train model.ipynb"}, {}, "train model"),
        ({}, {"JPY_SESSION_NAME": "/srv/notebooks/eval.ipynb"}, "eval"),
        ({}, {"JPY_SESSION_NAME": "C:\\Users\\me\\nb.ipynb"}, "nb"),
        ({"__vsc_ipynb_file__": "a.ipynb"}, {"JPY_SESSION_NAME": "b.ipynb"}, "a"),
        ({"__vsc_ipynb_file__": 3, "__session__": ""}, {"JPY_SESSION_NAME": "  "}, "notebook"),
        ({}, {}, "notebook"),
    ],
)
def test_the_notebook_name_comes_from_the_first_source_that_has_one(
    namespace: dict[str, object], environ: dict[str, str], name: str
) -> None:
    assert notebook_name(namespace, environ) == name


def test_the_connection_file_names_the_session_jupyter_client_started(tmp_path: Path) -> None:
    path = tmp_path / "kernel-1.json"
    path.write_text('{"shell_port": 1, "jupyter_session": "/srv/work/eval.ipynb", "key": "k"}')
    assert _connection_session(str(path)) == "/srv/work/eval.ipynb"
    for broken in ("", "[1, 2]", '{"jupyter_session": 3}', "{" * 100_000):
        path.write_text(broken)
        assert _connection_session(str(path)) is None
    assert _connection_session(str(tmp_path / "missing.json")) is None
    (tmp_path / "a directory").mkdir()
    assert _connection_session(str(tmp_path / "a directory")) is None
    os.mkfifo(tmp_path / "fifo")  # opening it would wait for a writer forever
    assert _connection_session(str(tmp_path / "fifo")) is None


@given(st.one_of(st.text(), st.none(), st.integers()), st.text())
def test_any_session_value_gives_a_plain_name(value: object, env_value: str) -> None:
    name = notebook_name({"__session__": value}, {"JPY_SESSION_NAME": env_value})
    assert name is not None and name.strip() == name and name
    assert "/" not in name and "\\" not in name
