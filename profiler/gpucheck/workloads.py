"""The GPU kit's workloads: MLP training, GPT-2 training and GPT-2 generation, each with what
it must measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BUDGET_SECONDS", "TOLERANCE", "WORKLOAD_NAMES", "Workload", "mlp_workload", "workloads"]

#: Exact mode must agree with torch's own allocated counter within this fraction.
TOLERANCE = 0.01
#: Sections start only while the kit has run less than this many seconds.
BUDGET_SECONDS = 240.0
MiB = 1024**2
GiB = 1024**3
#: The workloads by name, in the order they run.
WORKLOAD_NAMES = ("mlp_train", "gpt2_train", "gpt2_generate")


# -- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """A model, its optimizer and one step; ``expected`` gives exact bytes per category if known."""

    name: str
    build: Callable[[torch.device], tuple[torch.nn.Module, torch.optim.Optimizer | None]]
    step: Callable[[torch.nn.Module, torch.optim.Optimizer | None, torch.device], Any]
    steps: int
    expected: Callable[[], dict[str, int]] | None = None


def mlp_workload(tiny: bool) -> Workload:
    width, layers, batch = (64, 2, 8) if tiny else (4096, 4, 512)

    def build(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        with torch.device(device):
            blocks: list[torch.nn.Module] = []
            for _ in range(layers):
                blocks += [
                    torch.nn.Linear(width, 2 * width),
                    torch.nn.GELU(),
                    torch.nn.Linear(2 * width, width),
                ]
            model = torch.nn.Sequential(*blocks)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> None:
        x = torch.randn(batch, width, device=device)
        model(x).square().mean().backward()
        assert opt is not None
        opt.step()
        opt.zero_grad(set_to_none=True)

    weights = layers * (2 * width * width + 2 * width + 2 * width * width + width) * 4

    def expected() -> dict[str, int]:
        return {"weights": weights, "gradients": weights, "optimizer": 2 * weights}

    return Workload("mlp_train", build, step, 3, expected)


def _gpt2_config(tiny: bool) -> Any:
    from transformers import GPT2Config

    if tiny:
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=128,
                          bos_token_id=0, eos_token_id=0)  # fmt: skip
    return GPT2Config(n_layer=8, n_embd=1024, n_head=16, vocab_size=8192, n_positions=1024,
                      bos_token_id=0, eos_token_id=0)  # fmt: skip


def _gpt2_train(tiny: bool) -> Workload:
    batch, seq = (2, 16) if tiny else (8, 512)
    config = _gpt2_config(tiny)

    def build(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        from transformers import GPT2LMHeadModel

        with torch.device(device):
            model = GPT2LMHeadModel(config)
        model.train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> None:
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        model(input_ids=ids, labels=ids).loss.backward()
        assert opt is not None
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Workload("gpt2_train", build, step, 3)


def _gpt2_generate(tiny: bool) -> Workload:
    batch, prompt, new = (2, 8, 4) if tiny else (8, 128, 64)
    config = _gpt2_config(tiny)

    def build(device: torch.device) -> tuple[torch.nn.Module, None]:
        from transformers import GPT2LMHeadModel

        with torch.device(device):
            model = GPT2LMHeadModel(config)
        model.eval()
        return model, None

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> Any:
        ids = torch.randint(1, config.vocab_size, (batch, prompt), device=device)
        with torch.no_grad():
            generate: Callable[..., Any] = getattr(model, "generate")  # noqa: B009
            return generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    def expected() -> dict[str, int]:
        # keys and values, per layer: batch × (prompt + new − 1) positions × n_embd, float32
        return {"kv_cache": 2 * config.n_layer * batch * (prompt + new - 1) * config.n_embd * 4}

    return Workload("gpt2_generate", build, step, 1, expected)


def workloads(tiny: bool = False) -> list[Workload]:
    """The kit's workloads (the transformer ones only where transformers is installed)."""
    out = [mlp_workload(tiny)]
    try:
        import transformers  # noqa: F401
    except ImportError:
        return out
    return out + [_gpt2_train(tiny), _gpt2_generate(tiny)]


# -- helpers ---------------------------------------------------------------------------------
