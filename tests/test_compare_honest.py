"""mem.compare() stays honest: predictions replayed on fake tensors, checked against a reference
computed from the live tensors' local sizes, and no clean match for a shared wrong input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import transformers
from tiny_models import tiny_gpt2

from profiler import MemoryTracker, dry_run, track_memory
from profiler.ledger import Ledger
from profiler.predict.compare import CHECKS, check
from profiler.records import CATEGORIES

transformers.logging.set_verbosity_error()
NAMES = [str(c) for c in CATEGORIES]


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> MemoryTracker:
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        for _ in range(steps):
            x = torch.randn(8, 32)  # made inside the step, as the replay makes it
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
            mem.step()
            del x
    return mem


def _local(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_mlp_adamw_replay_equals_measured_and_reference_to_the_byte() -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters())
    mem = _train(model, opt)
    rng = torch.get_rng_state()
    table = mem.compare()
    assert torch.equal(rng, torch.get_rng_state())  # the replay drew nothing from the program's
    assert list(table.columns) == [
        "measured", "predicted", "source", "reference", "gap", "gap_pct", "check", "cause"
    ]  # fmt: skip
    assert list(table.index) == NAMES
    assert table.attrs["replay_problem"] is None
    assert table.attrs["replay_seconds"] > 0 and table.attrs["replay_cached"] is False
    peaks = mem.breakdown()["peak"]
    for name in NAMES:  # the replay of the step on fake tensors, category by category
        assert table.loc[name, "source"] == "replay"
        assert table.loc[name, "predicted"] == table.loc[name, "measured"] == peaks[name]
        assert table.loc[name, "gap"] == 0
    params = list(model.parameters())
    weights = _local(params)
    assert weights == (32 * 64 + 64 + 64 * 10 + 10) * 4
    state = [v for s in opt.state.values() for v in s.values()]
    assert _local(state) == 2 * weights + 4 * len(params)  # exp_avg, exp_avg_sq, a float32 step
    expected = {"weights": weights, "gradients": weights, "optimizer": 2 * weights + 16}
    for name, nbytes in expected.items():
        assert table.loc[name, "measured"] == table.loc[name, "reference"] == nbytes
        assert table.loc[name, "check"] == "ok"
        assert table.loc[name, "gap_pct"] == 0.0
    assert table.loc["buffers", "reference"] == 0 and table.loc["buffers", "check"] == "ok"
    for name in ("activations", "temporaries", "other"):
        assert table.loc[name, "reference"] is pd.NA
        assert table.loc[name, "check"] == "ok, no reference"
    again = mem.compare()  # the run did not change: the replay is not run again
    assert again.attrs["replay_cached"] is True
    assert again.attrs["replay_seconds"] == table.attrs["replay_seconds"]
    pd.testing.assert_frame_equal(again, table)


def test_gpt2_temporaries_are_predicted_by_replay() -> None:
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters())
    batch, seq, vocab = 2, 32, 1000
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        for _ in range(2):
            ids = torch.randint(0, vocab, (batch, seq))
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            mem.step()
            del ids
    table = mem.compare()
    frame = mem.breakdown()
    tokens = batch * seq
    # the formulas' figure: logits, the loss's fp32 gradient and the logits' gradient
    assert frame.loc["temporaries", "predicted"] == 3 * tokens * vocab * 4
    row = table.loc["temporaries"]
    assert row["source"] == "replay"
    assert row["predicted"] == row["measured"] == frame.loc["temporaries", "peak"]
    # two logits-sized tensors at the peak, not three; the input ids (int64) and 8 B of scalars
    assert row["measured"] == 2 * tokens * vocab * 4 + tokens * 8 + 8
    assert row["check"] == "ok, no reference"
    for name in NAMES:
        assert table.loc[name, "source"] == "replay"
        assert table.loc[name, "predicted"] == table.loc[name, "measured"], name
    params = list(model.parameters())
    assert table.loc["weights", "reference"] == _local(params) == table.loc["weights", "measured"]
    assert table.loc["optimizer", "reference"] == 2 * _local(params) + 4 * len(params)


def test_shared_wrong_size_source_is_flagged_not_a_clean_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the ledger's size source charges every storage twice its size: the live measurement and
    # the replay (the same ledger on fake tensors) agree with each other, and both are wrong
    size_of = Ledger.size_of
    monkeypatch.setattr(Ledger, "size_of", lambda self, storage: 2 * size_of(self, storage))
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters())
    mem = _train(model, opt)
    table = mem.compare()
    weights = _local(list(model.parameters()))
    for name, local in (("weights", weights), ("gradients", weights)):
        row = table.loc[name]
        assert row["source"] == "replay"
        assert row["measured"] == row["predicted"] == 2 * local
        assert row["reference"] == local
        assert row["check"] == "reference differs"
        assert math.isnan(row["gap_pct"])  # never a clean +0.0%
        assert "shared wrong input" in row["cause"]
    assert table.loc["optimizer", "check"] == "reference differs"


class _ViewNet(torch.nn.Module):
    """A parameter that is a view into a storage four times its size."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(64, 256)[:16])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w).sum()


def _view_run(inside: bool) -> tuple[pd.DataFrame, _ViewNet]:
    model = _ViewNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        for _ in range(2):
            model(torch.randn(4, 16)).backward()
            opt.step()
            opt.zero_grad()
            mem.step()
        if inside:
            return mem.compare(), model
    return mem.compare(), model


def test_storage_larger_than_its_tensor_formulas_share_the_input() -> None:
    # inside the block the formulas stand in; they read the storage's size, as the ledger does
    table, model = _view_run(inside=True)
    assert "still running" in table.attrs["replay_problem"]
    row = table.loc["weights"]
    storage = 64 * 256 * 4
    assert model.w.untyped_storage().nbytes() == storage
    assert row["source"] == "formulas"
    assert row["measured"] == row["predicted"] == storage
    assert row["reference"] == _local([model.w]) == 16 * 256 * 4
    assert row["check"] == "reference differs"
    assert math.isnan(row["gap_pct"])


def test_storage_larger_than_its_tensor_replay_sides_with_the_reference() -> None:
    # the replay re-creates the parameter at its own size: measured is the odd one out
    table, model = _view_run(inside=False)
    row = table.loc["weights"]
    assert row["source"] == "replay"
    assert row["measured"] == 64 * 256 * 4
    assert row["predicted"] == row["reference"] == 16 * 256 * 4
    assert row["check"] == "measured differs"
    assert row["gap_pct"] == pytest.approx(300.0)
    assert "view into a larger storage" in row["cause"]


def test_fallback_to_formulas_without_a_recorded_forward() -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters())
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        x = model[2](model[1](model[0](torch.randn(8, 32))))
        x.sum().backward()
        opt.step()
        mem.step()
        del x
    table = mem.compare()  # the root module's forward was never called, only its layers'
    assert table.attrs["replay_problem"] == "the model's forward was not called"
    assert table.attrs["replay_seconds"] is None
    frame = mem.breakdown()
    for name in NAMES:
        formula = frame.loc[name, "predicted"]
        expected = "none" if math.isnan(formula) else "formulas"
        assert table.loc[name, "source"] == expected, name
    assert table.loc["weights", "predicted"] == table.loc["weights", "reference"] == 11048
    assert table.loc["weights", "check"] == "ok"


def test_fallback_when_the_replay_cannot_run() -> None:
    class ReadsValues(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(x)
            return y * float(y.sum().item() > 0)  # needs a value: no fake tensor has one

    model = ReadsValues()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        mem.step()
    table = mem.compare()
    assert table.attrs["replay_problem"].startswith("the replay failed (DryRunError: ")
    assert "reads tensor values" in table.attrs["replay_problem"]
    assert table.loc["weights", "source"] == "formulas"


def test_a_dry_run_is_not_replayed_against_itself() -> None:
    kept: list[torch.nn.Module] = []  # the tracker holds its model weakly: keep it alive

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        kept.append(_mlp())
        return kept[0], torch.optim.AdamW(kept[0].parameters())

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        model(torch.randn(8, 32)).sum().backward()
        opt.step()
        opt.zero_grad()

    table = dry_run(build, step, device="cpu").compare()
    assert "itself on fake tensors" in table.attrs["replay_problem"]
    assert set(table["source"]) <= {"formulas", "none"}
    assert table.loc["weights", "reference"] == table.loc["weights", "measured"] == 11048


@pytest.mark.parametrize(
    ("figures", "verdict"),
    [
        ((100_000, 100_000, 100_000), "ok"),
        ((100_000, 100_000, None), "ok, no reference"),
        ((100_000, 200_000, 100_000), "predicted differs"),
        ((100_000, 200_000, None), "predicted differs"),
        ((300_000, 100_000, 100_000), "measured differs"),
        ((100_000, 100_000, 50_000), "reference differs"),
        ((100_000, 200_000, 300_000), "all differ"),
        ((100_000, None, None), "no prediction"),
        ((100_000, None, 100_000), "no prediction, reference agrees"),
        ((100_000, None, 10_000), "no prediction, reference differs"),
    ],
)
def test_check_names_the_one_that_disagrees(figures: tuple, verdict: str) -> None:
    assert verdict in CHECKS
    assert check(*figures) == verdict


def test_the_replay_follows_the_run_and_needs_a_model() -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters())
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        model(torch.randn(8, 32)).sum().backward()
        opt.step()
        mem.step()
        during = mem.compare()
    after = mem.compare()  # the run changed (the block exited): replayed now, not the old frame
    assert during.loc["weights", "source"] == "formulas"
    assert after.attrs["replay_problem"] is None and after.attrs["replay_cached"] is False
    assert after.loc["weights", "source"] == "replay"

    with track_memory(None, mode="exact", stream=False) as mem:
        torch.ones(1000).sum()
    table = mem.compare()
    assert table.attrs["replay_problem"].startswith("no model to replay")
    assert table["reference"].isna().all() and table["predicted"].isna().all()
    assert set(table["source"]) == {"none"} and set(table["check"]) == {"no prediction"}
    assert table.loc["temporaries", "measured"] == 1000 * 4 + 4  # the ones and their sum


def test_no_replay_inside_another_trackers_block() -> None:
    # the replay's fake tensors would be charged to the outer ledger: the formulas stand in
    with track_memory(torch.nn.Linear(4, 4), mode="exact", stream=False) as outer:
        model = _mlp()
        mem = _train(model, torch.optim.AdamW(model.parameters()))
        before = outer.peaks
        table = mem.compare()
        assert outer.peaks == before
    assert "dispatch mode is active" in table.attrs["replay_problem"]
    assert table.loc["weights", "source"] == "formulas"
