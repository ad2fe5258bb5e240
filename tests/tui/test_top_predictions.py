"""Predictions reach the dashboard live: a real tracked run, its real stream, reader and app.

A GPT-2 from transformers (built from a config, no download) trains with AdamW inside
``track_memory`` writing a session under a temporary ``GPUMEM_HOME``; the real
:class:`~profiler.session.reader.SessionReader` feeds the real ``gpumem top`` app, driven
headless. At entry the stream already carries the weights, gradients and optimizer state
(known from the model and optimizer); after the first step the activations too (the batch and
sequence were seen); after the block the ended session still shows them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from test_top_app import plain, settle

from profiler import track_memory
from profiler.session.reader import SessionReader, SessionView
from profiler.units import format_bytes
from tui.app import GpumemTopApp
from tui.snapshot import SnapshotBuilder
from tui.widgets.panels import CategoryComparePanel

transformers = pytest.importorskip("transformers")


def predicted_row(panel: CategoryComparePanel) -> dict[str, str]:
    """The panel's table: category → the predicted cell (cells stand 2+ spaces apart)."""
    lines = [line.strip() for line in plain(panel).splitlines() if "█" not in line]
    start = next(i for i, line in enumerate(lines) if line.startswith("weights"))
    names = re.split(r"\s{2,}", lines[start])
    cells = re.split(r"\s{2,}", lines[start + 2])
    assert cells[0] == "predicted"
    return dict(zip(names, cells[1:], strict=True))


async def wait_for(app: GpumemTopApp, pilot, basis: str) -> SessionView:  # type: ignore[no-untyped-def]
    """Refresh until the session's newest prediction has ``basis`` (the writer flushes every
    0.1 s on its own thread)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        app.fetch()
        await settle(pilot)
        (view,) = app.snapshot.sessions
        if view.prediction is not None and view.prediction.basis == basis:
            return view
        time.sleep(0.05)
    raise AssertionError(f"no {basis!r} prediction in the stream")


async def test_predictions_show_at_entry_after_the_first_step_and_after_the_end(
    tmp_path: Path,
) -> None:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params = list(model.parameters())  # the tied lm_head counted once
    weights = sum(p.numel() * p.element_size() for p in params)
    # AdamW: exp_avg and exp_avg_sq like each parameter, and a float32 0-d step each
    optimizer_state = 2 * weights + 4 * len(params)
    app = GpumemTopApp(SnapshotBuilder(None, SessionReader(tmp_path)), interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        with track_memory(model, optimizer, home=tmp_path, name="predict-live") as mem:
            view = await wait_for(app, pilot, "entry")
            figures = dict(view.predicted)
            assert (figures["weights"], figures["gradients"]) == (weights, weights)
            assert figures["optimizer"] == optimizer_state
            assert figures["activations"] is None  # no batch seen yet
            panel = app.query_one(CategoryComparePanel)
            assert "predicted at entry (model and optimizer)" in str(panel.border_title)
            shown = predicted_row(panel)
            assert shown["weights"] == format_bytes(weights)
            assert shown["optimizer"] == format_bytes(optimizer_state)

            ids = torch.randint(0, 128, (4, 16))
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            view = await wait_for(app, pilot, "step")
            assert view.live and (view.prediction.batch, view.prediction.seq) == (4, 16)  # type: ignore[union-attr]
            activations = dict(view.predicted)["activations"]
            assert isinstance(activations, int) and activations > 0
            assert "predicted at the first step end, batch 4 × seq 16" in str(panel.border_title)
            assert predicted_row(panel)["activations"] == format_bytes(activations)
        # the tracker's own figures are the ones the stream carried
        expected = mem.breakdown()["predicted"]
        assert int(expected["activations"]) == activations
        assert int(expected["weights"]) == weights
        deadline = time.monotonic() + 30
        while app.snapshot.sessions[0].live and time.monotonic() < deadline:
            app.fetch()
            await settle(pilot)
        (ended,) = app.snapshot.sessions
        assert not ended.live and ended.status == "ok"
        assert dict(ended.predicted)["activations"] == activations
        assert predicted_row(panel)["activations"] == format_bytes(activations)
