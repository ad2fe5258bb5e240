"""OOM capture end to end on CPU with a simulated capacity: the error, the report, the advice."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch
from fakes_report import ScriptedTracker, session_info
from torch import nn

from profiler import SimulatedOutOfMemoryError, track_memory
from profiler.cli import main
from profiler.records import CATEGORIES, EventKind
from profiler.report import load_report
from profiler.report.reporter import handle_oom
from profiler.units import parse_bytes

WIDTH, HIDDEN, DEPTH, DATASET = 32, 128, 3, 4096
BATCH = 2048
#: Between the first step's peak (6705752 B) and the second's (6908896 B, with AdamW state).
CAPACITY = "6.8MB"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


_ALIVE: list[tuple[nn.Module, torch.optim.Optimizer]] = []


def train(batch: int, capacity: str | int | None, *, stream: bool = True, steps: int = 3):
    """Train a few AdamW steps; returns (tracker, the OOM error or None)."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters())
    data = torch.randn(DATASET, WIDTH)
    labels = torch.randint(0, 10, (DATASET,))
    mem = track_memory(model, optimizer, capacity=capacity, stream=stream, name="oomtest")
    _ALIVE.append((model, optimizer))  # the tracker holds them weakly; replays need them
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mem:
                for _ in range(steps):
                    loss = nn.functional.cross_entropy(model(data[:batch]), labels[:batch])
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
        except torch.OutOfMemoryError as exc:
            error = exc
    return mem, error


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "gpumem-home"
    monkeypatch.setenv("GPUMEM_HOME", str(root))
    return root


@pytest.fixture(scope="module")
def ahead():
    """The run without a limit: it fits, and its advice is computed ahead of any OOM."""
    mem, error = train(BATCH, None, stream=False)
    assert error is None
    return mem


def test_the_run_is_sized_so_the_second_step_dies(ahead):
    step0, step1 = ahead.steps[0].peak, ahead.steps[1].peak
    assert step0 < parse_bytes(CAPACITY) < step1


def test_error_reaches_the_user_unchanged_and_the_report_is_written(home):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters())
    data = torch.randn(DATASET, WIDTH)
    labels = torch.randint(0, 10, (DATASET,))
    raised = []
    tracker = track_memory(model, optimizer, capacity=CAPACITY, name="oomtest")
    with (
        pytest.warns(UserWarning) as caught,
        pytest.raises(SimulatedOutOfMemoryError) as info,
        tracker as mem,
    ):
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(data[:BATCH]), labels[:BATCH])
            try:
                loss.backward()
            except torch.OutOfMemoryError as exc:
                raised.append(exc)
                raise
            optimizer.step()
            optimizer.zero_grad()
    assert info.value is raised[0]  # the very object raised inside the block
    assert isinstance(info.value, torch.OutOfMemoryError)
    failure = mem.failure
    assert failure is not None
    assert (info.value.requested, info.value.capacity, info.value.total) == (
        failure.requested,
        parse_bytes(CAPACITY),
        failure.total,
    )
    messages = [str(w.message) for w in caught if "report written to" in str(w.message)]
    assert len(messages) == 1
    report = mem.oom_report
    assert report is not None and report.path is not None
    assert str(report.path.with_suffix(".html")) in messages[0]
    assert report.path.parent == Path(mem.session_dir)
    assert report.path.parent.parent.parent == home
    for suffix in (".json", ".md", ".html"):
        assert report.path.with_suffix(suffix).is_file()
    assert load_report(report.path) == report

    assert report.simulated is True
    assert report.capacity == parse_bytes(CAPACITY)
    assert report.requested == failure.requested
    assert report.total == failure.total
    assert report.free == parse_bytes(CAPACITY) - failure.total
    assert (report.phase, report.step) == ("backward", 1)
    assert report.run.batch == BATCH
    assert report.run.optimizer_class == "AdamW"
    at_failure = failure.sample
    assert at_failure in mem.samples and at_failure.total == failure.total
    assert tuple(r.current for r in report.breakdown) == at_failure.bytes
    assert [r.category for r in report.breakdown] == [str(c) for c in CATEGORIES]
    assert report.breakdown[3].current == report.breakdown[3].predicted  # optimizer state
    assert [r.gap for r in report.breakdown[:4]] == ["matches"] * 4

    largest = report.tensors[0]  # a ReLU output saved for backward: 2048 x 128 float32
    assert (largest.nbytes, largest.category, largest.shape, largest.dtype) == (
        BATCH * HIDDEN * 4,
        "activations",
        (BATCH, HIDDEN),
        "float32",
    )
    assert largest.module == "blocks.0.act"
    assert largest.site is not None and largest.site.rsplit(":", 1)[0] == __file__
    assert [t.nbytes for t in report.tensors] == sorted(
        (t.nbytes for t in report.tensors), reverse=True
    )
    assert report.timeline[-1].total == mem.samples[-1].total
    assert (
        report.suggestions
        and report.suggestions[0].saves_bytes >= report.suggestions[-1].saves_bytes
    )

    events = [e for e in mem.events if e.kind is EventKind.OOM]
    assert len(events) == 1
    assert events[0].data["path"] == str(report.path)
    assert events[0].data["requested"] == failure.requested


def test_the_report_renders_in_every_format_from_its_session(capsys):
    mem, error = train(BATCH, CAPACITY)
    assert isinstance(error, SimulatedOutOfMemoryError)
    session = str(mem.session_dir)
    assert main(["report", session, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requested"] == mem.failure.requested
    assert main(["report", session]) == 0
    assert capsys.readouterr().out.startswith("# gpumem OOM report: Simulated out of memory")
    assert main(["report", Path(session).name, "--format", "html"]) == 0
    assert 'id="chart-timeline"' in capsys.readouterr().out


def test_suggested_batch_fits_and_the_next_larger_does_not():
    mem, error = train(BATCH, CAPACITY, stream=False)
    assert error is not None
    batch = next(s for s in mem.oom_report.suggestions if s.kind == "batch_size")
    size = batch.params["batch_size"]
    assert 1 <= size < BATCH and batch.fits is True
    _, fits_error = train(size, CAPACITY, stream=False)
    assert fits_error is None
    _, next_error = train(size + 1, CAPACITY, stream=False)
    assert isinstance(next_error, SimulatedOutOfMemoryError)


def test_suggestions_are_the_same_at_the_oom_and_ahead_of_it(ahead):
    mem, error = train(BATCH, CAPACITY, stream=False)
    assert error is not None
    at_oom = list(mem.oom_report.suggestions)
    assert at_oom == ahead.suggestions(capacity=CAPACITY)
    assert at_oom == mem.suggestions()
    assert [s.kind for s in at_oom] == [
        "precision",
        "checkpointing",
        "offload",
        "optimizer",
        "batch_size",
    ]


def test_without_a_session_the_report_goes_to_the_home_reports_dir(home):
    mem, error = train(BATCH, CAPACITY, stream=False)
    assert error is not None and mem.session_dir is None
    path = mem.oom_report.path
    assert path.parent == home / "reports"
    assert path.name.startswith("oom-") and path.suffix == ".json"
    assert stat.S_IMODE(os.stat(home / "reports").st_mode) == 0o700


def test_suggestions_without_any_capacity_have_unknown_fit(ahead):
    found = ahead.suggestions()
    assert found and {s.fits for s in found} == {None}
    batch = next(s for s in found if s.kind == "batch_size")
    assert batch.params["batch_size"] == BATCH // 2


def test_handle_oom_never_raises(tmp_path: Path):
    blocked = tmp_path / "session"
    blocked.write_text("a file where the session directory should be")
    run = ScriptedTracker(info=session_info(session_dir=str(blocked)))
    with pytest.warns(UserWarning, match=r"could not write the OOM report \(FileExistsError: "):
        assert handle_oom(run, torch.OutOfMemoryError("boom")) is None
    assert run.events == []
