"""fp32 master weights of a 16-bit model are optimizer state, in the tracker as in ``estimate``.

The recipe: the model is kept in bf16 (or fp16); the optimizer updates fp32 copies of its
parameters, whose gradients are the model's cast up, and the model takes the updated copies
back after each step. Sizes are exact bytes from the parameters' element counts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profiler import estimate, track_memory
from profiler.records import Category

F32 = 4


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).to(dtype)


def _mixed_precision_step(
    model: nn.Module, masters: list[torch.Tensor], opt: torch.optim.Optimizer
) -> None:
    model(torch.randn(16, 64, dtype=next(model.parameters()).dtype)).float().sum().backward()
    for master, param in zip(masters, model.parameters(), strict=True):
        master.grad = param.grad.float()
    opt.step()
    with torch.no_grad():
        for master, param in zip(masters, model.parameters(), strict=True):
            param.copy_(master)
    model.zero_grad(set_to_none=True)
    opt.zero_grad(set_to_none=False)  # fp32 gradients kept, as fp16 optimizers keep them


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("made_inside", [False, True], ids=["before", "inside"])
def test_fp32_master_copies_are_optimizer_state(
    mode: str, dtype: torch.dtype, made_inside: bool
) -> None:
    model = _model(dtype)
    numel = sum(p.numel() for p in model.parameters())
    half = torch.finfo(dtype).bits // 8

    def masters_and_optimizer() -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        masters = [p.detach().float() for p in model.parameters()]
        return masters, torch.optim.SGD(masters, lr=0.1, momentum=0.9)

    masters, opt = (None, None) if made_inside else masters_and_optimizer()
    with track_memory(model, opt, stream=False, mode=mode) as mem:
        if made_inside:
            masters, opt = masters_and_optimizer()
        assert masters is not None and opt is not None
        for _ in range(2):
            _mixed_precision_step(model, masters, opt)
    now = mem.breakdown()["current"]
    assert now["weights"] == numel * half  # the model's 16-bit parameters
    assert now["optimizer"] == numel * F32 + numel * F32  # master copies + momentum buffers
    assert now["gradients"] == numel * F32  # the master copies' fp32 gradients
    if mode == "fast":
        return  # the rest is fast mode's residual of the heap counter (other and temporaries)
    assert now["other"] == 0  # where master copies made before the block used to land
    assert now["temporaries"] == 0  # and those made inside it


def test_one_flat_fp32_master_buffer_is_optimizer_state() -> None:
    # DeepSpeed-style: all the master weights in one flat fp32 buffer
    model = _model(torch.bfloat16)
    numel = sum(p.numel() for p in model.parameters())
    with track_memory(model, stream=False, mode="exact") as mem:
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        opt = torch.optim.SGD([flat], lr=0.1)
        flat.grad = torch.zeros_like(flat)
        opt.step()
    now = mem.breakdown()["current"]
    assert now["optimizer"] == numel * F32
    assert now["gradients"] == numel * F32


def test_an_fp32_model_is_not_mistaken_for_master_weights() -> None:
    model = _model(torch.float32)
    numel = sum(p.numel() for p in model.parameters())
    copies = [p.detach().clone() for p in model.parameters()]  # fp32, but no 16-bit model
    opt = torch.optim.SGD(copies, lr=0.1)
    for copy in copies:
        copy.grad = torch.zeros_like(copy)
    with track_memory(model, opt, stream=False, mode="exact") as mem:
        opt.step()  # the copies existed before the block: other
    assert mem.breakdown().loc["other", "current"] == numel * F32
    assert mem.breakdown().loc["optimizer", "current"] == 0


def test_estimate_books_master_weights_as_optimizer_too() -> None:
    # profiler/predict/estimate.py: a 16-bit full fine-tune adds 4 bytes per trainable parameter
    # of fp32 master weights to the optimizer category
    params = 1_000_000
    kept = estimate(params=params, precision="bf16", mode="train", optimizer="sgd")
    without = estimate(
        params=params, precision="bf16", mode="train", optimizer="sgd", master_weights=False
    )
    gap = kept.categories[Category.OPTIMIZER] - without.categories[Category.OPTIMIZER]
    assert gap == params * F32
    assert kept.categories[Category.OTHER] == without.categories[Category.OTHER]
