"""A real notebook executed headless (``jupyter nbconvert --to notebook --execute``, a real
ipykernel): the tracker's HTML is the cell's output, with the categories and the exact bytes, and
the session is named after the notebook (jupyter-server >= 2 tells the kernel the notebook's path
in ``JPY_SESSION_NAME``; without it the session is ``notebook``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")

from test_notebook import Cells, exact  # noqa: E402

from profiler.records import CATEGORIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "gpumem-test"

TRAIN = """\
import torch
from torch import nn
from profiler import track_memory

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
optimizer = torch.optim.Adam(model.parameters())
with track_memory(model, optimizer) as mem:
    for _ in range(2):
        model(torch.randn(4, 16)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
mem"""

FACTS = """\
import json
print(json.dumps({"name": mem.name, "session_dir": str(mem.info.session_dir),
                  "peak": mem.peak_bytes}))"""


def execute(tmp_path: Path, stem: str, session_name: str | None) -> dict:  # type: ignore[type-arg]
    """Write ``stem.ipynb``, execute it in a fresh kernel, return the executed notebook."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(TRAIN), nbformat.v4.new_code_cell(FACTS)]
    # a kernel spec of this interpreter, first on Jupyter's path (a system "python3" spec could
    # point at another Python)
    spec = tmp_path / "data" / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    notebook.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL}
    path = tmp_path / f"{stem}.ipynb"
    nbformat.write(notebook, path)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GPUMEM_HOME": str(tmp_path / "home"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    env.pop("JPY_SESSION_NAME", None)
    if session_name is not None:
        env["JPY_SESSION_NAME"] = session_name
    command = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute"]
    command += ["--ExecutePreprocessor.timeout=240", "--output", f"{stem}.out", str(path)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / f"{stem}.out.ipynb").read_text())


def outputs(executed: dict) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The first cell's HTML and the facts the second cell printed."""
    first, second = executed["cells"]
    (result,) = [o for o in first["outputs"] if o["output_type"] == "execute_result"]
    html = "".join(result["data"]["text/html"])
    (printed,) = [o for o in second["outputs"] if o["output_type"] == "stream"]
    return html, json.loads("".join(printed["text"]))


@pytest.mark.slow
def test_an_executed_notebook_shows_the_html_and_is_named_after_the_notebook(
    tmp_path: Path,
) -> None:
    executed = execute(tmp_path, "memory study", str(tmp_path / "memory study.ipynb"))
    html, facts = outputs(executed)
    assert facts["name"] == "memory study"
    meta = json.loads((Path(facts["session_dir"]) / "meta.json").read_text())
    assert meta["name"] == "memory study"
    assert "<b>gpumem</b>: memory study · exact mode · cpu · 2 steps" in html
    cells = Cells(html)
    for category in CATEGORIES:
        assert cells.row(str(category))  # every category has its row
    weights = 4 * (16 * 32 + 32 + 32 * 8 + 8)
    assert exact(cells.row("weights")[1]) == weights
    # after zero_grad (set_to_none) no gradient is left; Adam holds 2 x weights + 4 steps
    assert exact(cells.row("gradients")[1]) == 0
    assert exact(cells.row("gradients")[2]) == weights
    assert exact(cells.row("optimizer")[1]) == 2 * weights + 4 * 4
    assert exact(cells.row("total")[3]) == facts["peak"]


@pytest.mark.slow
def test_a_kernel_that_cannot_tell_its_notebook_is_named_notebook(tmp_path: Path) -> None:
    _, facts = outputs(execute(tmp_path, "analysis", None))
    assert facts["name"] == "notebook"
