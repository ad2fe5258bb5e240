"""The Lightning callback: a real ``lightning.Trainer`` on CPU, a CSVLogger's file read back, a
simulated OOM, and a real two-process DDP run (gloo) launched the way Lightning launches it.

Run as a script (``python test_integrations_lightning.py OUT``), this file is that DDP job:
Lightning's launcher starts the second rank by running the same command again.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

from profiler import SimulatedOutOfMemoryError  # noqa: E402
from profiler.integrations.lightning import GpumemCallback  # noqa: E402

GROUP = "GpumemCallback.on_train_batch_end/"
FINAL = "GpumemCallback.on_train_end/"
ROOT = Path(__file__).resolve().parents[1]


class Classifier(L.LightningModule):
    """32 → 64 → 128 → 10 with Adam: 11,722 float32 weights (46,888 bytes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 128),
            torch.nn.Linear(128, 10),
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(self.net(inputs), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader() -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(64, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    return torch.utils.data.DataLoader(data, batch_size=8)


def trainer(out: Path, callback: GpumemCallback, **overrides: object) -> L.Trainer:
    options: dict[str, object] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 3,
        "log_every_n_steps": 1,
        "logger": L.pytorch.loggers.CSVLogger(str(out), name="logs", version=0),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [callback],
    }
    options.update(overrides)
    return L.Trainer(**options)


def logged(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "version_0" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], key: str) -> list[int]:
    return [int(float(row[key])) for row in rows if row.get(key)]


def expected(module: torch.nn.Module) -> tuple[int, int]:
    """Weights, and Adam's state (exp_avg, exp_avg_sq like each parameter, a 4-byte step)."""
    params = list(module.parameters())
    weights = sum(p.nbytes for p in params)
    return weights, 2 * weights + 4 * len(params)


def test_metrics_reach_the_loggers_in_device_stats_monitor_style(tmp_path: Path) -> None:
    callback = GpumemCallback(home=tmp_path / "home")
    module = Classifier()
    run = trainer(tmp_path, callback)
    run.fit(module, loader())
    mem = callback.mem
    assert mem is not None and mem.model is module
    assert mem.info.optimizer_class == "Adam"
    assert not mem._engine.state.active
    weights, optimizer = expected(module)
    assert weights == 4 * (32 * 64 + 64 + 64 * 128 + 128 + 128 * 10 + 10)
    rows = logged(tmp_path)
    assert column(rows, GROUP + "weights") == [weights] * 3  # one row per logged batch
    assert column(rows, GROUP + "gradients") == [weights] * 3
    assert column(rows, GROUP + "optimizer") == [optimizer] * 3
    assert column(rows, GROUP + "step") == [1, 2, 3]
    assert column(rows, FINAL + "peak") == [mem.peak_bytes]
    assert column(rows, FINAL + "predicted_optimizer") == [optimizer]
    assert column(rows, FINAL + "leaks") == [0]
    # logged at the step DeviceStatsMonitor logs at: the optimizer steps taken
    assert [int(row["step"]) for row in rows if row.get(GROUP + "step")] == [0, 1, 2]


def test_log_every_n_steps_is_followed(tmp_path: Path) -> None:
    callback = GpumemCallback(stream=False)
    trainer(tmp_path, callback, max_steps=4, log_every_n_steps=2).fit(Classifier(), loader())
    assert column(logged(tmp_path), GROUP + "step") == [2, 4]


def test_an_oom_closes_in_on_exception_with_the_post_mortem_and_no_hook(tmp_path: Path) -> None:
    from torch.nn.modules import module as module_mod

    hooks_before = len(module_mod._global_forward_hooks)
    callback = GpumemCallback(capacity="100KB", home=tmp_path / "home")
    run = trainer(tmp_path, callback)
    with pytest.raises(SimulatedOutOfMemoryError), pytest.warns(UserWarning, match="report"):
        run.fit(Classifier(), loader())
    mem = callback.mem
    assert mem is not None and mem.failure is not None
    assert mem.oom_report is not None and mem.oom_report.path is not None
    assert mem.oom_report.path.is_file()
    assert mem.oom_report.capacity == 100_000
    assert len(module_mod._global_forward_hooks) == hooks_before
    assert not mem._engine.state.active


def test_a_fault_in_gpumem_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from profiler import views

    def broken(*args: object, **kwargs: object) -> dict[str, int]:
        raise RuntimeError("metrics broke")

    monkeypatch.setattr(views, "metrics", broken)
    callback = GpumemCallback(stream=False)
    run = trainer(tmp_path, callback)
    with pytest.warns(UserWarning, match="no figures logged") as caught:
        run.fit(Classifier(), loader())
    assert len([w for w in caught if "gpumem" in str(w.message)]) == 1
    assert run.global_step == 3
    assert callback.mem is not None and not callback.mem._engine.state.active


def test_without_lightning_the_import_is_one_clear_error() -> None:
    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "import profiler\n"
        "assert 'lightning' not in sys.modules or sys.modules['lightning'] is None\n"
        "try:\n"
        "    import profiler.integrations.lightning\n"
        "except profiler.BackendUnavailable as error:\n"
        "    print(error.one_line())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "needs lightning" in done.stdout and "pip install lightning" in done.stdout


def test_import_profiler_does_not_import_lightning() -> None:
    code = "import sys, profiler; print('lightning' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.slow
def test_ddp_two_ranks_on_gloo_each_rank_tracked_rank_zero_logs_both(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no gloo backend for a CPU DDP run")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPUMEM_HOME": str(tmp_path / "home")}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights, optimizer = expected(Classifier())
    rows = logged(tmp_path)
    for rank in (0, 1):
        assert column(rows, f"{GROUP}rank{rank}/weights") == [weights] * 3
        assert column(rows, f"{GROUP}rank{rank}/optimizer") == [optimizer] * 3
        # DDP's default buckets copy the gradients: predicted twice, once in the buckets
        assert column(rows, f"{FINAL}rank{rank}/predicted_gradients") == [2 * weights]
    assert not any(key.startswith(GROUP + "weights") for key in rows[0])
    # each rank wrote its own session, with its rank in the metadata
    metas = sorted((tmp_path / "home").rglob("meta.json"))
    ranks = sorted(__import__("json").loads(p.read_text())["rank"] for p in metas)
    assert ranks == [0, 1], metas


def _ddp_main(out: Path) -> None:
    """The DDP job the test above launches (rank 1 is this same command, started by Lightning)."""
    callback = GpumemCallback()
    run = trainer(out, callback, strategy="ddp", devices=2)
    run.fit(Classifier(), loader())
    assert callback.mem is not None and not callback.mem._engine.state.active


if __name__ == "__main__":
    _ddp_main(Path(sys.argv[1]))
