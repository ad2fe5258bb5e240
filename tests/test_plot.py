"""mem.plot(): one band per category that held bytes, the capacity and peak lines (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from profiler import track_memory  # noqa: E402


def test_the_plot_shows_each_category_the_capacity_and_the_peak(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with track_memory(model, optimizer, stream=False, capacity="4MB") as mem:
        for _ in range(2):
            model(torch.randn(32, 64)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    ax = mem.plot()
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    held = [c for c in mem.breakdown().index if mem.breakdown().loc[c, "peak"] > 0]
    assert labels == held  # one stacked band per category that ever held bytes, in order
    lines = {line.get_linestyle(): line.get_ydata()[0] for line in ax.get_lines()}
    mib = 1024**2
    assert lines["--"] == pytest.approx(4_000_000 / mib)  # the capacity, dashed
    assert lines[":"] == pytest.approx(mem.peak_bytes / mib)  # the peak, dotted
    path = tmp_path / "timeline.png"
    ax.figure.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(ax.figure)


def test_the_readme_picture_recipe_writes_a_png(tmp_path: Path) -> None:
    import importlib.util

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "plot_timeline.py"
    spec = importlib.util.spec_from_file_location("plot_timeline", recipe)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.main(steps=2, out=str(tmp_path / "timeline.png"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
