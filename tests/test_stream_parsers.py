"""Property tests of the stream parsers added for the live dashboard: prediction events and the
sample lines read without parsing them all (:mod:`profiler.session.history`)."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st
from test_hardening_properties import SETTINGS, json_values

from profiler.records import CATEGORIES
from profiler.session.fields import Prediction, predicted_pairs
from profiler.session.files import parse_line
from profiler.session.history import SampleLog, highest_total, latest_sample

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
