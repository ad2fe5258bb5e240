"""The Hugging Face Trainer callback: real Trainer, real TensorBoard event file, a simulated OOM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tensorboard")

from tiny_models import tiny_gpt2  # noqa: E402

from profiler import SimulatedOutOfMemoryError  # noqa: E402
from profiler.integrations.hf import GpumemCallback  # noqa: E402
from profiler.integrations.unwrap import unwrap_model, unwrap_optimizer  # noqa: E402


class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Eight random 16-token sequences, labels equal to the inputs."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 1000, (8, 16), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        **overrides,
    )
    return transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens())


def scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for path in log_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return values


def test_metrics_reach_tensorboard_through_the_trainers_own_logs(tmp_path: Path) -> None:
    run = trainer(tmp_path)
    callback = GpumemCallback.attach(run, home=tmp_path / "home")
    run.train()
    mem = callback.mem
    assert mem is not None and mem.model is run.model
    params = list(run.model.parameters())  # unique: the tied head is the embedding
    weights = sum(p.nbytes for p in params)
    # AdamW: exp_avg and exp_avg_sq like each parameter, and a 4-byte step tensor each
    assert mem.metrics()["gpumem/optimizer"] == 2 * weights + 4 * len(params)
    # the TensorBoard callback logs under output_dir/runs, prefixing training logs with "train/"
    written = scalars(tmp_path / "out")
    assert "train/gpumem/weights" in written, sorted(written)
    written = {tag.removeprefix("train/"): values for tag, values in written.items()}
    assert written["gpumem/weights"][0] == weights  # tied embeddings counted once
    assert written["gpumem/peak"][-1] == mem.peak_bytes
    assert written["gpumem/predicted_weights"][-1] == weights
    assert len(written["gpumem/optimizer"]) == 4  # 3 logging steps and the final summary
    assert mem.info.optimizer_class == "AdamW"
    assert not mem._engine.state.active


def test_an_oom_inside_train_writes_the_post_mortem_and_leaves_no_hook(tmp_path: Path) -> None:
    from torch.nn.modules import module as module_mod

    hooks_before = len(module_mod._global_forward_hooks)
    run = trainer(tmp_path)
    callback = GpumemCallback.attach(run, capacity="3MB", home=tmp_path / "home")
    with pytest.raises(SimulatedOutOfMemoryError), pytest.warns(UserWarning, match="report"):
        run.train()
    mem = callback.mem
    assert mem is not None and mem.failure is not None
    assert mem.oom_report is not None and mem.oom_report.path.is_file()
    assert len(module_mod._global_forward_hooks) == hooks_before
    assert not mem._engine.state.active


def test_wrappers_are_unwrapped() -> None:
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model, backend="eager")
    parallel = torch.nn.DataParallel(compiled)
    assert unwrap_model(parallel) is model
    assert unwrap_model(model) is model

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    assert unwrap_optimizer(Wrapper(inner)) is inner
    assert unwrap_optimizer(inner) is inner
