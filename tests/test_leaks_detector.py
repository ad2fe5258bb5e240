"""The leak detector on synthetic step records and ledgers, the classifier and the holder search."""

from __future__ import annotations

import inspect
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes_leaks import FakeTracker
from torch import nn

from profiler.leaks import (
    CreationSite,
    Holder,
    LeakDetector,
    LeakPattern,
    classify,
    creation_sites,
    find_holders,
    mutation_lines,
    suggestion_for,
)
from profiler.leaks.growth import GrowthTest
from profiler.records import CATEGORIES, Category, EventKind, LiveStorage, StepRecord
from profiler.units import MiB

WEIGHTS = 10 * MiB


def record(step: int, activations: int, *, kv: int = 0, duration: float = 0.5) -> StepRecord:
    """A step end with fixed weights and the given activations and KV cache."""
    values = dict.fromkeys(CATEGORIES, 0)
    values[Category.WEIGHTS] = WEIGHTS
    values[Category.ACTIVATIONS] = activations
    values[Category.KV_CACHE] = kv
    by_order = tuple(values[c] for c in CATEGORIES)
    total = sum(by_order)
    return StepRecord(step, 1000.0 + step, duration, by_order, total, total, by_order)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("import torch\n\n\nh = torch.relu(fc(x))\n")
    return path


def storage(
    step: int, site: str | None, *, nbytes: int = MiB, category: Category = Category.ACTIVATIONS
) -> LiveStorage:
    return LiveStorage(
        nbytes, category, "fc", step, site, (site,) if site else None, (256, 1024), "torch.float32"
    )


def run_leak(tracker: FakeTracker, detector: LeakDetector, site: str, steps: int) -> None:
    """Activations grow 1 MiB a step; every step's storage is created at ``site`` and stays."""
    for step in range(steps):
        tracker.storages.append(storage(step, site))
        detector.on_step(record(step, (step + 1) * MiB))


def test_leak_is_hunted_then_flagged_at_the_creation_site(user_file: Path) -> None:
    tracker = FakeTracker(mode="fast", capacity=100 * MiB)
    detector = LeakDetector(tracker, scan_objects=False)
    site = f"{user_file}:4"
    with pytest.warns(UserWarning, match="memory leak: activations grows 1.00 MiB per step"):
        run_leak(tracker, detector, site, 8)
    # suspicion at step 4 (post-warm-up steps 2, 3, 4): hunt asked for 3 steps + the current one
    assert tracker.hunt_calls == [4]
    assert len(detector.leaks) == 1
    leak = detector.leaks[0]
    assert leak.category == Category.ACTIVATIONS
    assert leak.bytes_per_step == MiB
    assert leak.site == site
    assert leak.source == "h = torch.relu(fc(x))"
    assert leak.pattern == LeakPattern.GRAPH_KEPT
    assert leak.suggestion == suggestion_for(LeakPattern.GRAPH_KEPT)
    assert leak.step == 7
    # 100 MiB capacity, 18 MiB in use at step 7, 1 MiB per step, 0.5 s per step
    assert leak.capacity == 100 * MiB
    assert leak.capacity_step == 7 + 82
    assert leak.capacity_time == 1007.0 + 41.0
    assert leak.describe() == (
        f"memory leak: activations grows 1.00 MiB per step, held at {site} "
        "`h = torch.relu(fc(x))` (graph kept). "
        + suggestion_for(LeakPattern.GRAPH_KEPT)
        + " At this rate 100.00 MiB is reached at step 89 (in 41 s)."
        " Found by a leak hunt (exact mode on for 3 steps)."
    )
    evidence = leak.evidence
    assert evidence.hunt == "exact mode on for 3 steps"
    assert evidence.hunt_steps == (5, 6, 7)
    assert evidence.growth.series == "activations"
    assert evidence.creation_sites == (
        CreationSite(site, "h = torch.relu(fc(x))", Category.ACTIVATIONS, "fc", MiB, 2, (5, 6)),
    )
    leak_events = [e for e in tracker.events if e.kind == EventKind.LEAK]
    assert len(leak_events) == 1
    assert leak_events[0].step == 7
    assert leak_events[0].data["site"] == site
    assert leak_events[0].data["bytes_per_step"] == MiB
    assert leak_events[0].data["pattern"] == "graph_kept"
    assert "leak hunt (exact mode on for 3 steps)" in leak_events[0].message


def test_exact_mode_hunt_says_sites_are_recorded(user_file: Path) -> None:
    tracker = FakeTracker(mode="exact")
    detector = LeakDetector(tracker, scan_objects=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_leak(tracker, detector, f"{user_file}:4", 8)
    assert detector.leaks[0].evidence.hunt == "creation sites recorded for 3 steps"
    assert detector.leaks[0].capacity_step is None


def test_warned_once_per_site_and_cleared_on_plateau(user_file: Path) -> None:
    tracker = FakeTracker(mode="exact")
    detector = LeakDetector(tracker, scan_objects=False)
    site = f"{user_file}:4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_leak(tracker, detector, site, 8)
        # flat from step 8: (7, 8, 8) still rises, (8, 8, 8) is a plateau at step 9
        detector.on_step(record(8, 8 * MiB))
        assert len(detector.leaks) == 1
        detector.on_step(record(9, 8 * MiB))
    assert [str(w.message).startswith("memory leak") for w in caught] == [True]
    assert detector.leaks == []
    assert len(detector.cleared) == 1
    cleared = [e for e in tracker.events if e.kind == EventKind.LEAK and e.data.get("cleared")]
    assert [e.step for e in cleared] == [9]


def test_fast_mode_leak_is_watched_on_the_fast_total_after_the_hunt(user_file: Path) -> None:
    tracker = FakeTracker(mode="fast")
    detector = LeakDetector(tracker, scan_objects=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_leak(tracker, detector, f"{user_file}:4", 8)
        # the hunt's steps 5-7 are exact figures, kept apart; the fast series restarts at 8
        for step in (8, 9):
            detector.on_step(record(step, 8 * MiB))
        assert len(detector.leaks) == 1  # two fast points: too few to judge
        detector.on_step(record(10, 8 * MiB))
    assert detector.leaks == []
    assert [leak.step for leak in detector.cleared] == [7]
    # growth the known leak explains starts no new hunt
    assert tracker.hunt_calls == [4]


def test_growth_that_plateaus_during_the_hunt_is_not_flagged() -> None:
    tracker = FakeTracker()
    detector = LeakDetector(tracker, scan_objects=False)
    # grows through step 4, flat after: the hunt starts at step 4, ends at 7 with a plateau
    for step in range(20):
        detector.on_step(record(step, min(step, 4) * MiB))
    assert tracker.hunt_calls == [4]
    assert detector.leaks == []
    assert [e for e in tracker.events if e.kind == EventKind.LEAK] == []


def test_steady_memory_never_hunts() -> None:
    tracker = FakeTracker()
    detector = LeakDetector(tracker, scan_objects=False)
    for step in range(50):
        detector.on_step(record(step, 3 * MiB if step else 5 * MiB))
    assert tracker.hunt_calls == []
    assert detector.leaks == []


def test_offline_detector_flags_growth_without_a_culprit() -> None:
    detector = LeakDetector(None, test=GrowthTest(window=6))
    with pytest.warns(UserWarning, match="held at an unknown line"):
        for step in range(8):
            detector.on_step(record(step, 0, kv=step * 2 * MiB))
    assert len(detector.leaks) == 1
    leak = detector.leaks[0]
    assert (leak.category, leak.bytes_per_step, leak.site, leak.step) == (
        Category.KV_CACHE,
        2 * MiB,
        None,
        7,
    )
    assert leak.pattern == LeakPattern.KV_CACHE_NOT_RESET
    assert leak.evidence.hunt is None


def test_kv_storages_replaced_as_they_grow_use_the_newest_site(user_file: Path) -> None:
    tracker = FakeTracker(mode="exact")
    detector = LeakDetector(tracker, scan_objects=False)
    site = f"{user_file}:4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(8):
            # the cache's storage is re-created each step, one step's size bigger
            tracker.storages = [
                storage(step, site, nbytes=(step + 1) * MiB, category=Category.KV_CACHE)
            ]
            detector.on_step(record(step, 0, kv=(step + 1) * MiB))
    leak = detector.leaks[0]
    assert leak.pattern == LeakPattern.KV_CACHE_NOT_RESET
    assert leak.site == site
    assert leak.bytes_per_step == MiB
    # the newest storage holds the whole cache (8 MiB); the site is charged the growth rate
    assert [(c.site, c.bytes_per_step, c.steps) for c in leak.evidence.creation_sites] == [
        (site, MiB, (7,))
    ]


# ---------------------------------------------------------------------- grouping and patterns


def test_creation_sites_group_old_storages_by_site_and_category() -> None:
    a, b = "train.py:10", "train.py:20"
    storages = [
        storage(3, a),
        storage(4, a),
        storage(4, a, nbytes=2 * MiB),
        storage(4, b, category=Category.TEMPORARIES),
        storage(2, a),  # before the range
        storage(6, a),  # after the range
    ]
    groups = creation_sites(storages, first_step=3, last_step=5)
    assert [(g.site, g.category, g.bytes_per_step, g.storages, g.steps) for g in groups] == [
        (a, Category.ACTIVATIONS, MiB * 4 // 3, 3, (3, 4)),
        (b, Category.TEMPORARIES, MiB // 3, 1, (4,)),
    ]
    only = creation_sites(storages, first_step=3, last_step=5, categories=[Category.TEMPORARIES])
    assert [g.site for g in only] == [b]


def holder(
    kind: str, *, graph: bool = False, in_hook: bool = False, module_owner: bool = False
) -> Holder:
    return Holder(
        kind, "kept", "main", "list", "train.py:9", None, 3, 3 * MiB, graph, in_hook, module_owner
    )


@pytest.mark.parametrize(
    ("category", "found", "pattern"),
    [
        (Category.KV_CACHE, None, LeakPattern.KV_CACHE_NOT_RESET),
        (Category.ACTIVATIONS, holder("closure"), LeakPattern.HOOK_CLOSURE),
        (Category.ACTIVATIONS, holder("global", in_hook=True), LeakPattern.HOOK_CLOSURE),
        (
            Category.ACTIVATIONS,
            holder("attribute", module_owner=True, graph=True),
            LeakPattern.MODULE_ATTRIBUTE,
        ),
        (Category.ACTIVATIONS, holder("attribute", graph=True), LeakPattern.GRAPH_KEPT),
        (Category.ACTIVATIONS, holder("local", graph=True), LeakPattern.GRAPH_KEPT),
        (Category.ACTIVATIONS, holder("local"), LeakPattern.ACCUMULATING_TENSORS),
        (Category.ACTIVATIONS, None, LeakPattern.GRAPH_KEPT),
        (Category.TEMPORARIES, None, LeakPattern.ACCUMULATING_TENSORS),
        (Category.WEIGHTS, None, LeakPattern.UNKNOWN),
    ],
)
def test_classify(category: Category, found: Holder | None, pattern: LeakPattern) -> None:
    assert classify(category, found) == pattern


def test_classify_site_inside_a_hook_without_holder(tmp_path: Path) -> None:
    def hook(module: Any, inputs: Any, output: Any) -> None:
        output.clone()  # creation site inside the hook

    code = hook.__code__
    line = code.co_firstlineno + 1
    site = CreationSite(
        f"{code.co_filename}:{line}", None, Category.TEMPORARIES, None, MiB, 1, (3,)
    )
    assert classify(Category.TEMPORARIES, None, [site], [code]) == LeakPattern.HOOK_CLOSURE


def test_every_pattern_has_a_fix_naming_the_holder() -> None:
    named = holder("local")
    for pattern in LeakPattern:
        text = suggestion_for(pattern, named)
        if pattern in (LeakPattern.KV_CACHE_NOT_RESET, LeakPattern.UNKNOWN):
            assert "`kept`" not in text
        else:
            assert "`kept`" in text
    assert "loss.item()" in suggestion_for(LeakPattern.GRAPH_KEPT)
    assert "DynamicCache()" in suggestion_for(LeakPattern.KV_CACHE_NOT_RESET)
    assert "handle.remove()" in suggestion_for(LeakPattern.HOOK_CLOSURE)


# ---------------------------------------------------------------------- source and holders


def test_mutation_lines_finds_every_way_of_adding(tmp_path: Path) -> None:
    path = tmp_path / "loop.py"
    path.write_text(
        textwrap.dedent("""\
        kept = []
        kept.append(x)
        kept[3] = x
        kept += [x]
        kept = kept + [x]
        kept = other
        other.append(kept)
        self.kept.append(x)
        self.kept = torch.cat([self.kept, x])
        store["a"].append(x)
        model(x, cache=kept)
        """)
    )
    assert mutation_lines(str(path), "kept") == [2, 3, 4, 5]
    assert mutation_lines(str(path), "kept", attribute=True) == [8, 9]
    assert mutation_lines(str(path), "store") == [10]
    assert mutation_lines(str(path), "kept", first=3, last=4) == [3, 4]
    assert mutation_lines(str(path), "kept", passed=True) == [7, 11]


def _marker_line(function: Any, marker: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, text in enumerate(lines) if marker in text)


_GLOBAL_KEPT: list[torch.Tensor] = []


def _keep_global(tensor: torch.Tensor) -> None:
    _GLOBAL_KEPT.append(tensor)  # GLOBAL


def test_find_holders_names_a_local_list_and_its_append_line() -> None:
    kept: list[torch.Tensor] = []
    tensor = torch.ones(256, requires_grad=True) * 2
    kept.append(tensor)  # LOCAL
    found = find_holders([tensor])
    assert len(found) == 1
    h = found[0]
    assert (h.kind, h.name, h.owner, h.container) == (
        "local",
        "kept",
        inspect.stack()[0].function,
        "list",
    )
    assert (
        h.site
        == f"{__file__}:{_marker_line(test_find_holders_names_a_local_list_and_its_append_line, '# LOCAL')}"
    )
    assert (h.tensors, h.nbytes, h.graph) == (1, 256 * 4, True)
    assert h.source == "kept.append(tensor)  # LOCAL"


def test_find_holders_names_a_global_through_a_dict_in_a_tuple() -> None:
    tensor = torch.zeros(64)
    _keep_global(({"x": tensor},))
    try:
        found = find_holders([tensor])
        assert [(h.kind, h.name, h.container, h.graph) for h in found] == [
            ("global", "_GLOBAL_KEPT", "list", False)
        ]
        assert found[0].site == f"{__file__}:{_marker_line(_keep_global, '# GLOBAL')}"
        assert found[0].nbytes == 64 * 4
    finally:
        _GLOBAL_KEPT.clear()


def test_find_holders_names_a_hook_closure() -> None:
    def capture(module: nn.Module) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []

        def keep(mod: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            features.append(output)  # HOOK

        module.register_forward_hook(keep)
        return features

    layer = nn.Linear(4, 8)
    capture(layer)
    layer(torch.ones(2, 4))
    del_me = None  # nothing else holds the output
    found = find_holders_without_locals(layer)
    assert del_me is None
    assert [(h.kind, h.name, h.in_hook, h.graph) for h in found] == [
        ("closure", "features", True, True)
    ]
    assert found[0].owner.endswith("capture.<locals>.keep")
    assert found[0].site == f"{__file__}:{_marker_line(capture, '# HOOK')}"


def find_holders_without_locals(layer: nn.Module) -> list[Holder]:
    """Find the holder of the tensors kept by ``layer``'s hook closure."""
    (hook,) = layer._forward_hooks.values()
    (cell,) = hook.__closure__
    return find_holders(list(cell.cell_contents), model=layer)


def test_find_holders_names_a_module_attribute() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            self.seen.append(h)  # ATTR
            return h

    net = Net()
    net(torch.ones(3, 4))
    tensors = list(net.seen)
    found = find_holders(tensors)
    del tensors
    attribute = [h for h in found if h.kind == "attribute"]
    assert [(h.name, h.module_owner, h.graph) for h in attribute] == [("Net.seen", True, True)]
    assert attribute[0].site == f"{__file__}:{_marker_line(Net.forward, '# ATTR')}"


def test_leak_that_starts_late_is_flagged_five_steps_in(user_file: Path) -> None:
    tracker = FakeTracker(mode="exact")
    detector = LeakDetector(tracker, scan_objects=False)
    site = f"{user_file}:4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(60):
            leaked = max(0, step - 49)  # steady for 50 steps, then 1 MiB a step
            if leaked:
                tracker.storages.append(storage(step, site))
            detector.on_step(record(step, 3 * MiB + leaked * MiB))
            if detector.leaks:
                break
    # growth from step 50: the window 46-51 (3, 3, 3, 3, 4, 5 MiB) has tau 0.6 and a rising
    # recent slope, so the hunt starts at step 51 and covers 52-54, when the window is all rise
    assert tracker.hunt_calls == [4]
    (leak,) = detector.leaks
    assert (leak.step, leak.bytes_per_step, leak.site) == (54, MiB, site)
    assert leak.evidence.hunt_steps == (52, 53, 54)
    assert leak.evidence.growth.first_step == 49


def test_hunt_still_running_at_close_is_finished(user_file: Path) -> None:
    tracker = FakeTracker(mode="exact")
    detector = LeakDetector(tracker, test=GrowthTest(window=5), scan_objects=False)
    site = f"{user_file}:4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_leak(tracker, detector, site, 7)  # hunt 5-7 started at step 4; the block ends at 6
        assert detector.leaks == []
        detector.on_close(tracker, None)
    (leak,) = detector.leaks
    assert (leak.step, leak.site, leak.evidence.hunt_steps) == (6, site, (5, 6))


def test_detector_made_unbound_reads_the_run_given_at_start(user_file: Path) -> None:
    # how the tracker attaches it: created without a run, bound by Observer.on_start
    tracker = FakeTracker(mode="exact", capacity=64 * MiB)
    detector = LeakDetector(scan_objects=False)
    detector.on_start(tracker)
    site = f"{user_file}:4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_leak(tracker, detector, site, 8)
    assert tracker.hunt_calls == [4]
    (leak,) = detector.leaks
    assert (leak.site, leak.bytes_per_step, leak.capacity) == (site, MiB, 64 * MiB)
    # 64 MiB capacity, 18 MiB in use at step 7, 1 MiB per step
    assert leak.capacity_step == 7 + 46


def test_kv_cache_growth_within_one_generation_is_left_out() -> None:
    tracker = FakeTracker(mode="exact", kv_cache_reused=False)
    detector = LeakDetector(tracker, scan_objects=False)
    for step in range(20):
        detector.on_step(record(step, 0, kv=step * 2 * MiB))
    assert tracker.hunt_calls == []
    assert detector.leaks == []
    # once a prompt is fed to a cache that was not reset, the same growth counts
    tracker.kv_cache_reused = True
    with pytest.warns(UserWarning, match="kv cache not reset"):
        for step in range(20, 28):
            detector.on_step(record(step, 0, kv=step * 2 * MiB))
    assert tracker.hunt_calls == [4]
    (leak,) = detector.leaks
    assert (leak.category, leak.bytes_per_step) == (Category.KV_CACHE, 2 * MiB)
    assert leak.pattern == LeakPattern.KV_CACHE_NOT_RESET
