"""The reader's parts for the live dashboard: prediction events, the sample lines kept unparsed
(:mod:`profiler.session.history`) and a job's ranks read from their step ends; property tests
of their parsers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from test_hardening_properties import SETTINGS, json_values
from test_stream import T0, reader, sample, step_record, writer

from profiler.records import CATEGORIES, Event, EventKind
from profiler.session.fields import Prediction, predicted_pairs
from profiler.session.files import parse_line
from profiler.session.history import SampleLog, highest_total, latest_sample
from profiler.session.reader import SessionReader
from profiler.session.writer import SessionWriter

NAMES = [str(c) for c in CATEGORIES]
figures = st.dictionaries(st.sampled_from([*NAMES, "new_category", ""]), json_values, max_size=10)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["predicted", "basis", "batch", "seq", "x"]), json_values)
       | st.fixed_dictionaries({"predicted": figures, "basis": json_values}))  # fmt: skip
def test_a_prediction_event_reads_whatever_its_data(data: dict) -> None:  # type: ignore[type-arg]
    prediction = Prediction.from_event(1.0, 2, data)
    if not isinstance(data.get("predicted"), dict):
        assert prediction is None
        return
    assert prediction is not None
    assert [name for name, _ in prediction.figures] == [n for n in NAMES if n in data["predicted"]]
    for _, value in prediction.figures:
        assert value is None or (isinstance(value, int) and abs(value) <= 2**62)
    assert isinstance(prediction.basis, str) and len(prediction.basis) <= 32
    assert predicted_pairs(data["predicted"]) == prediction.figures


@SETTINGS
@given(st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()),
                max_size=8))  # fmt: skip
def test_sample_lines_never_break_the_reader(lines: list[bytes]) -> None:
    lines = [line.replace(b"\n", b" ") for line in lines]
    total = highest_total(lines)
    assert total is None or 0 <= total <= 2**62
    found = latest_sample(lines)
    log = SampleLog(4)
    log.add(lines)
    points = log.history()
    assert len(points) + points.skipped == len(lines) or len(lines) > 4
    assert len(points) <= 4
    for point in points:
        assert math.isfinite(point.time) and abs(point.total) <= 2**62
    if found is not None:  # the newest line that is a sample and not a window's peak
        record, point = found
        assert not point.peak and record in [parse_line(line) for line in lines]


def test_the_newest_prediction_event_supersedes_the_meta(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    w.update_meta(predicted={"weights": 100, "optimizer": None})
    w.flush()
    r = reader(tmp_path, {4321})
    (view,) = r.poll()  # a stream without prediction events (older gpumem): the meta's
    assert view.prediction is None and view.predicted == (("weights", 100), ("optimizer", None))
    for basis, acts in (("entry", None), ("step", 4096)):
        data = {"basis": basis, "predicted": {"weights": 100, "activations": acts},
                "batch": 4 if acts else None, "seq": 16 if acts else None}  # fmt: skip
        w.on_event(Event(T0 + 1, 1, EventKind.PREDICTION, "", data))
        w.flush()
        (view,) = r.poll()
        assert view.prediction is not None and view.prediction.basis == basis
        assert view.predicted == (("weights", 100), ("activations", acts))
    assert (view.prediction.batch, view.prediction.seq) == (4, 16)
    assert view.events == ()  # predictions are not alerts
    w.close()


def test_history_is_frozen_at_its_poll_and_parsed_once(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    r = reader(tmp_path, {4321})
    w.on_sample(sample(T0 + 1))
    w.flush()
    (first,) = r.poll()
    w.on_sample(sample(T0 + 2))
    w.flush()
    (second,) = r.poll()
    # read after the second poll, the first poll's history still ends at its own sample
    assert [p.time for p in first.history] == [T0 + 1]
    assert [p.time for p in second.history] == [T0 + 1, T0 + 2]
    (third,) = r.poll()  # nothing new: the same view
    assert third is second
    with open(w.directory / "samples.jsonl", "a") as handle:
        handle.write("not json\n")
    (fourth,) = r.poll()
    assert len(fourth.history) == 2 and fourth.skipped == 1
    w.close()


def test_ranks_by_step_reads_a_job_from_its_step_ends_until_focused(tmp_path: Path) -> None:
    w = SessionWriter.create(
        home=tmp_path, name="rank", pid=4321, host="node-a", start_time=T0, interval=0.0,
        flush_thread=False, prune=False, rank=1, world_size=2, job_id="j1",
    )  # fmt: skip
    r = SessionReader(
        tmp_path, clock=lambda: T0 + 10, pid_exists=lambda p: True, host="node-a",
        ranks_by_step=True,
    )  # fmt: skip
    w.on_sample(sample(T0 + 1, total_scale=2))  # 72,000 B: the step's peak, between step ends
    w.on_step(step_record(3, T0 + 2, 50_000))
    w.on_sample(sample(T0 + 3))  # 36,000 B
    w.flush()
    (view,) = r.poll()
    # its step end only: no samples read, the writer's session peak covers the one before
    assert (view.step, view.current, view.peak, len(view.history)) == (3, 50_000, 72_000, 0)
    r.focus(jobs=["j1"])
    (view,) = r.poll()  # focused: the end of its samples read at once
    assert [p.total for p in view.history] == [72_000, 36_000]
    assert (view.current, view.phase) == (36_000, "forward")
    r.focus()
    (view,) = r.poll()
    assert len(view.history) == 0 and view.current == 50_000
    w.close()


def test_a_live_pid_is_checked_by_start_time_then_by_signal_0(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    now = [time.time()]
    writers = [
        SessionWriter.create(
            home=tmp_path, name=name, pid=pid, start_time=now[0], interval=0.0,
            flush_thread=False, prune=False,
        )
        for name, pid in (("me", os.getpid()), ("gone", int(gone.stdout)))
    ]  # fmt: skip
    r = SessionReader(tmp_path, clock=lambda: now[0])
    assert {v.meta.name: v.live for v in r.poll()} == {"me": True, "gone": False}
    (me,) = [s for s in r._states.values() if s.meta.name == "me"]
    checked = me.verified_at
    assert checked == now[0]  # its start time was checked
    now[0] += 10  # within 30 s: a signal-0 probe only, the check's time kept
    assert [v.meta.name for v in r.poll() if v.live] == ["me"] and me.verified_at == checked
    now[0] += 30  # then checked again
    assert [v.meta.name for v in r.poll() if v.live] == ["me"] and me.verified_at == now[0]
    r.close()
    for writer_ in writers:
        writer_.close()
