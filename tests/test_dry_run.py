"""dry_run(): fake-tensor steps through the exact ledger, against real measured runs."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import tiny as _tiny

from profiler.dryrun import dry_run
from profiler.errors import DryRunError, UsageError
from profiler.tracker import track_memory

transformers.logging.set_verbosity_error()
ORIGINAL_TO = torch.nn.Module.to


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, 1000, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_dry_run_matches_a_real_run(kind: str) -> None:
    def build():
        model = _tiny(kind)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    result = dry_run(build, _step, steps=2, device="cpu")
    model, opt = build()
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        for _ in range(2):
            _step(model, opt)
            mem.step()
    assert abs(result.peak_bytes - mem.peak_bytes) / mem.peak_bytes < 0.01
    params = sum(p.numel() for p in model.parameters())
    dry = result.breakdown()
    assert dry.loc["weights", "peak"] == params * 4
    assert dry.loc["optimizer", "peak"] == mem.breakdown().loc["optimizer", "peak"]
    assert dry.loc["gradients", "peak"] == params * 4
    modules = result.modules()
    assert modules.index.name == "module"
    assert len(modules) > 0


def test_cuda_target_rounds_every_tensor_to_512() -> None:
    def build():
        return _tiny("llama")

    def step(model, _opt):
        ids = torch.randint(0, 1000, (1, 16), device="cuda")
        with torch.no_grad():
            model(input_ids=ids)

    result = dry_run(build, step, steps=1, device="cuda")
    assert result.rounding == 512
    reference = _tiny("llama")
    rounded = sum(-(-p.numel() * 4 // 512) * 512 for p in reference.parameters())
    assert result.breakdown().loc["weights", "peak"] == rounded
    assert result.fits("rtx4090")


def test_device_moves_and_dtype_conversions_in_build_and_step() -> None:
    def build():
        model = _tiny("gpt2").cuda().to("cuda", torch.bfloat16)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(model, opt):
        ids = torch.randint(0, 1000, (2, 8)).to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()

    result = dry_run(build, step, steps=1, device="cuda", rounding=1)
    params = sum(p.numel() for p in _tiny("gpt2").parameters())
    frame = result.breakdown()
    assert frame.loc["weights", "peak"] == params * 2  # tied embedding counted once
    assert frame.loc["optimizer", "peak"] == params * 2  # one momentum buffer in bf16
    assert torch.nn.Module.to is ORIGINAL_TO


def test_models_that_deepcopy_their_layers() -> None:
    def build():
        layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        return model, torch.optim.Adam(model.parameters())

    def step(model, opt):
        model(torch.randn(2, 5, 16)).sum().backward()
        opt.step()

    result = dry_run(build, step, steps=1, device="cpu")
    layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    per_layer = sum(p.numel() for p in layer.parameters())
    assert result.breakdown().loc["weights", "peak"] == 2 * per_layer * 4


def test_ops_that_need_real_data_give_a_clear_error() -> None:
    def step(model, _opt):
        loss = model(torch.randn(2, 4)).sum()
        if loss.item() > 0:
            loss.backward()

    with pytest.raises(DryRunError, match="reads tensor values") as info:
        dry_run(lambda: torch.nn.Linear(4, 4), step, steps=1)
    assert info.value.exit_code == 1
    assert "item()" in info.value.hint
    assert torch.nn.Module.to is ORIGINAL_TO


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="steps"):
        dry_run(lambda: torch.nn.Linear(2, 2), lambda m, o: None, steps=0)
    with pytest.raises(UsageError, match="nn.Module"):
        dry_run(lambda: 42, lambda m, o: None)
    with pytest.raises(DryRunError, match="build"):
        dry_run(lambda: 1 / 0, lambda m, o: None)


def test_cuda_target_takes_the_foreach_optimizer_path() -> None:
    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
    )

    def build():
        model = transformers.LlamaForCausalLM(config)
        return model, torch.optim.AdamW(model.parameters())

    def step(model, opt):
        ids = torch.randint(0, 1000, (1, 16))
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()

    params = sum(p.numel() for p in transformers.LlamaForCausalLM(config).parameters()) * 4
    cuda = dry_run(build, step, device="cuda", rounding=1).peak_bytes
    cpu = dry_run(build, step, device="cpu").peak_bytes
    # weights + gradients + two Adam moments + foreach's sqrt scratch, one parameter-size each
    assert abs(cuda - 5 * params) < 0.001 * params
    assert cpu < 4.5 * params  # the per-parameter loop's scratch is one tensor at a time
