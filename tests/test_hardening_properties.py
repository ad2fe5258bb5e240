"""Property tests: arbitrary bytes and JSON never raise anything but our errors, never hang.

Over the four doors hostile input comes through: a config file (``gpumem estimate``), a size
(``capacity=``, ``--gpu`` memory), a saved OOM report (``gpumem report``), and the session
stream (``gpumem top``). Each example runs under hypothesis' deadline, so a hang fails too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.errors import ConfigError, GpumemError, StreamError, UsageError
from profiler.predict.modelshape import load_config, shape_from_config
from profiler.report import load_report
from profiler.session import files
from profiler.session.reader import SessionReader
from profiler.text import printable
from profiler.units import MAX_SIZE, parse_bytes

SETTINGS = settings(
    max_examples=int(os.environ.get("GPUMEM_PROPERTY_EXAMPLES", "60")),
    deadline=2000,  # ms per example: a hang or a quadratic blow-up fails
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON values including the ones Python's json reads but no JSON should hold: NaN, Infinity,
# huge integers and floats, deep-ish nesting, odd strings (controls, surrogates, markup).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["\x1b[2J", "[/]", "\ud800", "²", "\u202e", "1e999"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)
config_keys = st.sampled_from(
    [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "intermediate_size",
        "max_position_embeddings",
        "head_dim",
        "model_type",
        "torch_dtype",
        "tie_word_embeddings",
        "num_local_experts",
        "num_experts_per_tok",
        "n_embd",
        "n_layer",
        "n_head",
    ]
)
configs = st.dictionaries(config_keys, scalars, max_size=12)


def _dump(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def scratch():
    path = Path(tempfile.mkdtemp(prefix="gpumem-prop-"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- sizes -----------------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.text(max_size=80), st.integers(), st.floats(), st.booleans()))
def test_parse_bytes_raises_only_usage_error(value) -> None:
    try:
        result = parse_bytes(value)
    except UsageError:
        return
    assert isinstance(result, int) and 0 < result <= MAX_SIZE


@SETTINGS
@given(
    st.floats(min_value=0, allow_nan=False, allow_infinity=False, max_value=1e6),
    st.sampled_from(["", "B", "KB", "MB", "GB", "KiB", "MiB", "GiB", "TB", "TiB"]),
)
def test_parse_bytes_of_a_number_and_a_unit(number: float, unit: str) -> None:
    scale = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}.get(unit)
    scale = scale or {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    text = f"{number!r}{unit}"
    try:
        result = parse_bytes(text)
    except UsageError:
        assert int(number * scale) <= 0 or "e" in text  # too small, or a form we do not take
        return
    assert result == int(float(repr(number)) * scale)


# -- configs ---------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=400))
def test_config_from_arbitrary_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "config.json"
    path.write_bytes(raw)
    try:
        data = load_config(path)
        shape_from_config(data)
    except ConfigError:
        pass


@SETTINGS
@given(configs)
def test_config_from_arbitrary_json(scratch: Path, config: dict) -> None:
    path = scratch / "config.json"
    path.write_bytes(_dump(config))
    try:
        shape = shape_from_config(load_config(path))
    except ConfigError:
        return
    for value in (shape.hidden_size, shape.num_layers, shape.num_heads, shape.vocab_size):
        assert isinstance(value, int) and value > 0


@SETTINGS
@given(configs)
def test_estimate_from_arbitrary_config_never_raises_a_non_gpumem_error(
    scratch: Path, config: dict
) -> None:
    from profiler.predict.estimate import estimate

    path = scratch / "config.json"
    path.write_bytes(_dump(config))
    try:
        est = estimate(str(path))
    except GpumemError:
        return
    assert est.total > 0


# -- JSON in general -----------------------------------------------------------------------


@SETTINGS
@given(json_values)
def test_defensive_loads_never_yields_non_finite_or_absurd_numbers(value) -> None:
    try:
        parsed = files.loads(_dump(value))
    except ValueError:
        return
    stack = [parsed]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            assert abs(item) <= files.MAX_INT
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


@SETTINGS
@given(st.binary(max_size=300))
def test_defensive_loads_of_bytes_raises_only_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        files.loads(raw)


@SETTINGS
@given(st.text(max_size=200))
def test_printable_leaves_no_control_character(text: str) -> None:
    out = printable(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)
    assert not any(0xD800 <= ord(c) <= 0xDFFF or 0x202A <= ord(c) <= 0x202E for c in out)
    out.encode("utf-8")  # a terminal can show it
    if text.isprintable() and text.isascii():
        assert out == text


# -- reports ---------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=400))
def test_report_from_arbitrary_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "r.json"
    path.write_bytes(raw)
    with contextlib.suppress(StreamError):
        load_report(path)


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_report_from_arbitrary_json_object(scratch: Path, data: dict) -> None:
    path = scratch / "r.json"
    path.write_bytes(_dump({"schema": 1, **data}))
    with contextlib.suppress(StreamError):
        load_report(path)


def _mutated_report() -> st.SearchStrategy[dict]:
    from test_report_support import make_cuda_report

    from profiler.report.model import report_to_dict

    base = report_to_dict(make_cuda_report())
    return st.builds(
        lambda key, value: {**base, key: value}, st.sampled_from(sorted(base)), json_values
    )


@SETTINGS
@given(_mutated_report(), st.sampled_from(["md", "html", "json"]))
def test_a_real_report_with_one_field_replaced_loads_and_renders_or_is_one_error(
    scratch: Path, data: dict, fmt: str
) -> None:
    from profiler.report import render

    path = scratch / "r.json"
    path.write_bytes(_dump(data))
    try:
        report = load_report(path)
    except StreamError:
        return
    with contextlib.suppress(ValueError, OverflowError):  # the CLI: one line, "out of range"
        render(report, fmt)


# -- the session stream ----------------------------------------------------------------------


def _session(home: Path) -> Path:
    directory = home / "sessions" / "20260101T000000.000000-host-1-prop"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["meta.json", "summary.json", "modules.json", "samples.jsonl", "events.jsonl"]
        ),
        st.binary(max_size=300),
        max_size=5,
    )
)
def test_stream_reader_on_arbitrary_bytes(scratch: Path, contents: dict[str, bytes]) -> None:
    home = scratch / "home-bytes"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    directory = _session(home)
    for name, raw in contents.items():
        (directory / name).write_bytes(raw)
    reader = SessionReader(home, pid_exists=lambda p: True, host="host", ended_for=1e12)
    (view,) = reader.poll()
    assert view.meta.name == "prop"


line_values = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, None]), "t": scalars, "step": scalars, "total": scalars},
    optional={
        "bytes": st.dictionaries(st.sampled_from(["weights", "gradients", "x"]), scalars),
        "kind": st.sampled_from(["step_end", "leak", "oom", "warning"]) | scalars,
        "message": scalars,
        "data": json_values,
        "module": scalars,
        "phase": scalars,
        "peak": scalars,
    },
)


@SETTINGS
@given(
    st.lists(line_values, max_size=8),
    st.lists(line_values, max_size=8),
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "name",
                "pid",
                "host",
                "start_time",
                "device",
                "predicted",
                "capacity",
                "pid_ns",
                "boot_id",
            ]
        ),
        json_values,
    ),
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["v", "end_time", "status", "session_peak", "summary"]), json_values
        ),
    ),
)
def test_stream_reader_on_arbitrary_json(
    scratch: Path, samples: list, events: list, meta: dict, summary: dict | None
) -> None:
    home = scratch / "home-json"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    directory = _session(home)
    (directory / "samples.jsonl").write_bytes(b"\n".join(_dump(s) for s in samples) + b"\n")
    (directory / "events.jsonl").write_bytes(b"\n".join(_dump(e) for e in events) + b"\n")
    (directory / "meta.json").write_bytes(_dump(meta))
    if summary is not None:
        (directory / "summary.json").write_bytes(_dump(summary))
    reader = SessionReader(home, pid_exists=lambda p: True, host="host", ended_for=1e12)
    views = reader.poll()
    assert len(views) == 1
    for view in views:
        for point in view.history:
            assert math.isfinite(point.time) and abs(point.total) <= 2**62
        for text in (view.meta.name, view.meta.host or "", *(e.message for e in view.events)):
            assert "\x1b" not in text


@SETTINGS
@given(st.lists(st.binary(max_size=80), max_size=10), st.integers(min_value=1, max_value=64))
def test_tail_reads_each_complete_line_once_whatever_the_chunks(
    scratch: Path, chunks: list[bytes], initial: int
) -> None:
    """Appending in arbitrary chunks: every complete JSON-object line is returned exactly once."""
    path = scratch / "tail.jsonl"
    path.write_bytes(b"")
    tail = files.JsonlTail(path, initial_bytes=1 << 20)
    got: list[dict] = []
    written = b""
    for i, chunk in enumerate(chunks):
        piece = chunk.replace(b"\n", b"") + (b'{"i":%d}\n' % i if i % 2 else b"")
        with open(path, "ab") as handle:
            handle.write(piece)
        written += piece
        got.extend(tail.read())
    tail.close()
    expected = []
    for line in written.split(b"\n")[:-1]:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            expected.append(value)
    assert got == expected
