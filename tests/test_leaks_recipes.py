"""End to end: every leak recipe is flagged within 10 steps at its ``# LEAK`` line, in exact and in
fast mode; the non-leak recipes are not flagged (tiny GPT-2 training: test_leaks_gpt2.py)."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from profiler.leaks import LeakPattern
from profiler.records import Category

EITHER = {Category.ACTIVATIONS, Category.TEMPORARIES}
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "leaks"


def load(name: str) -> ModuleType:
    path = RECIPES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"leak_recipe_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def marker_line(name: str) -> int:
    lines = (RECIPES / f"{name}.py").read_text().splitlines()
    (line,) = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith("# LEAK")]
    return line


def same_site(site: str | None, name: str) -> bool:
    assert site is not None
    filename, _, line = site.rpartition(":")
    return os.path.samefile(filename, RECIPES / f"{name}.py") and int(line) == marker_line(name)


@pytest.mark.parametrize(
    ("name", "pattern", "category", "bytes_per_step"),
    [
        # the validation graph: 256x256 input kept + 256x512 + 256x256 ReLU outputs, float32
        # the validation graph is never run backward: its saved tensors stay activations
        ("graph_kept", LeakPattern.GRAPH_KEPT, {Category.ACTIVATIONS}, None),
        (
            "accumulating_tensors",
            LeakPattern.ACCUMULATING_TENSORS,
            EITHER,
            256 * 256 * 4,
        ),
        ("hook_closure", LeakPattern.HOOK_CLOSURE, EITHER, 256 * 512 * 4),
        ("module_attribute", LeakPattern.MODULE_ATTRIBUTE, EITHER, 256 * 512 * 4),
        # 2 layers x (keys + values) x batch 4 x 32 tokens x 128 features, float32
        (
            "kv_cache_not_reset",
            LeakPattern.KV_CACHE_NOT_RESET,
            {Category.KV_CACHE},
            2 * 2 * 4 * 32 * 128 * 4,
        ),
    ],
)
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_leak_recipe_is_flagged_within_ten_steps_at_its_line(
    name: str,
    pattern: LeakPattern,
    category: set[Category],
    bytes_per_step: int | None,
    mode: str,
) -> None:
    if name == "kv_cache_not_reset":
        pytest.importorskip("transformers")
    recipe = load(name)
    with pytest.warns(UserWarning, match="memory leak"):
        mem = recipe.main(10, mode)
    assert mem.mode == mode
    leaks = mem.leaks()
    assert len(leaks) == 1, [leak.describe() for leak in leaks]
    leak = leaks[0]
    assert same_site(leak.site, name), leak.site
    assert leak.source is not None and leak.source.endswith("# LEAK")
    assert leak.pattern == pattern
    # a kept output is an activation while its graph saves it and a temporary once backward has
    # freed that graph: the ledger decides, the leak follows the storages' category
    assert leak.category in category
    assert leak.category == leak.evidence.creation_sites[0].category
    assert leak.step <= 9
    if bytes_per_step is not None:
        assert leak.bytes_per_step == bytes_per_step
    # exact mode records sites for the hunt; fast mode switches the exact ledger on for it
    assert leak.evidence.hunt == (
        "exact mode on for 3 steps" if mode == "fast" else "creation sites recorded for 3 steps"
    )
    assert leak.evidence.hunt_steps == (5, 6, 7)
    events = [e for e in mem.events if e.kind == "leak"]
    assert [e.data["site"] for e in events] == [leak.site]


def test_graph_kept_rate_is_the_saved_validation_graph() -> None:
    recipe = load("graph_kept")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (leak,) = recipe.main(10).leaks()
    # what autograd saves for Linear-ReLU-Linear-ReLU-Linear on a 256-row batch, float32:
    # the input (256x256), first hidden (256x512) and its ReLU mask/output, second hidden
    # (256x256) ... measured by the exact ledger; the leak is the whole graph, not the loss
    assert leak.bytes_per_step == leak.evidence.growth.bytes_per_step
    assert leak.evidence.holder is not None and leak.evidence.holder.graph
    assert leak.evidence.holder.name == "val_losses"


@pytest.mark.parametrize(("name", "steps"), [("steady_training", 40), ("capped_cache", 30)])
def test_non_leak_recipe_is_not_flagged(name: str, steps: int) -> None:
    recipe = load(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mem = recipe.main(steps)
    assert mem.leaks() == []
    assert len(mem.steps) == steps
    assert [w for w in caught if "memory leak" in str(w.message)] == []


def test_leak_alert_reaches_the_session_stream(tmp_path: Path) -> None:
    import json

    import torch
    from torch import nn

    from profiler.tracker import track_memory

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 64), torch.randn(256, 256)
    outputs = []
    warns = pytest.warns(UserWarning, match="memory leak")
    with warns, track_memory(model, optimizer, home=tmp_path, name="leaky") as mem:
        for _ in range(9):
            out = model(x)
            nn.functional.mse_loss(out, y).backward()
            optimizer.step()
            optimizer.zero_grad()
            outputs.append(out)  # STREAMED LEAK
    (leak,) = mem.leaks()
    (events_file,) = tmp_path.glob("sessions/*/events.jsonl")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    kinds = [(e["step"], e["kind"]) for e in events if e["kind"] in ("leak", "leak_hunt")]
    # the hunt is announced when it starts (step 5), the leak at the hunt's end (step 7)
    assert kinds == [(5, "leak_hunt"), (7, "leak")]
    (alert,) = [e for e in events if e["kind"] == "leak"]
    assert alert["message"] == leak.describe()
    assert alert["data"]["site"] == leak.site
    assert leak.site is not None and leak.site.endswith(f":{_line_of('# STREAMED LEAK')}")
    assert alert["data"]["pattern"] == "graph_kept"
    # each step's 256 x 256 float32 output (backward freed the rest of its graph)
    assert leak.bytes_per_step == 256 * 256 * 4
    assert alert["data"]["bytes_per_step"] == leak.bytes_per_step
    assert alert["data"]["evidence"]["holder"]["name"] == "outputs"


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    (line,) = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(marker)]
    return line
