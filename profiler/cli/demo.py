"""``gpumem demo``: train a small transformer for a few steps under track_memory and print the table."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from profiler.errors import UsageError
from profiler.text import printable

if TYPE_CHECKING:
    import torch

HELP = "train a small transformer for a few steps under track_memory and print the breakdown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length (default 64)")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when present, else cpu)"
    )
    parser.add_argument(
        "--mode", choices=("auto", "exact", "fast"), default="auto", help="measurement mode"
    )
    parser.add_argument("--no-stream", action="store_true", help="do not publish to gpumem top")


def _torch_only_model() -> torch.nn.Module:
    """The GPT-2 shape from torch alone: embedding, 4 encoder layers, the vocabulary head."""
    import torch

    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    return torch.nn.Sequential(torch.nn.Embedding(2000, 256), encoder, torch.nn.Linear(256, 2000))


def build_model(device: str) -> tuple[torch.nn.Module, bool]:
    """A GPT-2-shaped model: transformers' GPT-2 when installed, else a torch-only equivalent.

    Returns the model, built on ``device``, and whether it is transformers' (takes ``labels``).
    """
    import torch

    try:
        import transformers
    except ImportError:
        with torch.device(device):
            return _torch_only_model(), False
    config = transformers.GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        vocab_size=2000,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    config.use_cache = False  # training: no KV cache
    with torch.device(device):
        return transformers.GPT2LMHeadModel(config), True


#: The demo model's longest sequence (GPT-2's ``n_positions`` above).
MAX_SEQ = 256
#: The largest batch and step count the demo takes (a demo, not a benchmark).
MAX_BATCH = 1024
MAX_STEPS = 10_000
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]{1,3})?)$")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what the demo cannot run, before torch is imported.

    Raises:
        UsageError: a count out of range, or a device other than ``cpu``, ``cuda``, ``cuda:N``.
    """
    for option, value, high in (
        ("--steps", args.steps, MAX_STEPS),
        ("--batch", args.batch, MAX_BATCH),
        ("--seq", args.seq, MAX_SEQ),
    ):
        if not 0 < value <= high:
            raise UsageError(f"{option} must be between 1 and {high}, got {value}")
    if args.device is not None and not _DEVICE.match(args.device):
        raise UsageError(
            f"unknown device {printable(args.device, limit=40)!r}",
            hint="use cpu, cuda or cuda:N",
        )


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    import torch

    from profiler import track_memory

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but CUDA is not available here")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UsageError(f"no {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    torch.manual_seed(0)
    model, is_hf = build_model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = 2000
    with track_memory(
        model, optimizer, mode=args.mode, name="gpumem-demo", stream=not args.no_stream
    ) as mem:
        for _ in range(args.steps):
            ids = torch.randint(1, vocab, (args.batch, args.seq), device=device)
            if is_hf:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                logits = model(ids)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    print(mem)
    print()
    top = mem.modules().sort_values("activations", ascending=False).head(5)
    print("top modules by activations saved in their forward (bytes):")
    for name, value in top["activations"].items():
        print(f"  {name:<40} {int(value):>12,}")
    if mem.session_dir is not None:
        print(f"\nsession stream: {mem.session_dir}  (watch live with `gpumem top`)")
    return 0
