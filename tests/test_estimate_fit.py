"""The step fit behind the ``--gpu`` searches, checked against direct dry runs of the real class.

The fit (:func:`profiler.predict.stepmeasure.fit_step`) solves six dry runs for the terms in
(batch, seq); each figure here is compared with a dry run of the whole model at that size (the
independent measurement), and the searches' answers with direct dry runs at the answer and one
above. At sequence lengths that are whole multiples of 256 every tensor is a whole number of
512-byte CUDA blocks, so the fit is exact there; elsewhere each live tensor's rounding (under 512
bytes) is what the polynomial cannot carry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.cli.estimate import limits
from profiler.predict.estimate import estimate
from profiler.predict.gpus import GpuSpec
from profiler.predict.stepmeasure import fit_step, measure_step
from profiler.records import Category as C

transformers = pytest.importorskip("transformers")

CONFIG = {
    "model_type": "llama",
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}


def _whole_model_step(
    mode: str, optimizer: str, batch: int, seq: int, config: dict = CONFIG
) -> tuple[int, int]:
    """Activations and temporaries of a dry run of the whole model (no depth scaling)."""
    from profiler.dryrun import dry_run
    from profiler.replay import Adam8bitLayout

    cfg = dict(config)
    built = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)

    def build():
        m = transformers.AutoModelForCausalLM.from_config(built, dtype=torch.bfloat16)
        if mode == "inference":
            return m.eval(), None
        params = list(m.train().parameters())
        if optimizer == "sgd":
            return m, torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        if optimizer == "adamw-8bit":
            return m, Adam8bitLayout(params)
        if optimizer == "adafactor":
            from transformers.optimization import Adafactor

            return m, Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False)
        return m, torch.optim.AdamW(params, lr=1e-3)

    def step(m, opt):
        ids = torch.zeros(batch, seq, dtype=torch.long)
        if opt is None:
            with torch.no_grad():
                m(input_ids=ids, use_cache=True)
            return
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    frame = dry_run(build, step, steps=2, device="cuda").breakdown()
    return int(frame.loc["activations", "peak"]), int(frame.loc["temporaries", "peak"])


@pytest.mark.parametrize(("mode", "optimizer"), [("inference", "adamw"), ("train", "adamw")])
def test_fit_equals_whole_model_dry_runs_at_the_check_and_another_point(
    mode: str, optimizer: str
) -> None:
    step = {"mode": mode, "optimizer": optimizer, "precision": "bf16", "checkpointing": False}
    fit = fit_step(CONFIG, limit=2048, **step)
    # six points: two batches at a third, two thirds and all of the limit (whole 256 blocks)
    assert fit.points == ((4, 512), (8, 512), (4, 1280), (8, 1280), (4, 2048), (8, 2048))
    assert fit.check == (6, 768) and fit.holds
    # exact where every tensor is whole 512-byte blocks: the check point and a larger one
    for batch, seq in ((6, 768), (12, 2048)):
        assert fit.at(batch, seq) == _whole_model_step(mode, optimizer, batch, seq)
    # at seq 1000 each live tensor's rounding is under 512 bytes: the fit stays within 0.1%
    fitted, direct = fit.at(5, 1000), measure_step(CONFIG, batch=5, seq=1000, **step)
    assert direct == _whole_model_step(mode, optimizer, 5, 1000)
    for f, d in zip(fitted, direct, strict=True):
        assert abs(f - d) <= d // 1000
    assert fitted != direct  # the rounding is real: were this equal the bound would be idle


def test_a_sliding_window_splits_the_fit_at_the_window() -> None:
    # transformers masks from a sequence as long as the window on: each side is fitted apart
    windowed = {**CONFIG, "model_type": "mistral", "sliding_window": 1024}
    step = {"mode": "train", "optimizer": "adamw", "precision": "bf16", "checkpointing": False}
    fit = fit_step(windowed, limit=2048, window=1024, **step)
    assert [p.upto for p in fit.pieces] == [1023, None]
    assert fit.pieces[0].points[-1] == (8, 768) and fit.pieces[1].points[-1] == (8, 2048)
    assert fit.holds
    for batch, seq in ((6, 512), (3, 1024), (12, 2048)):
        assert fit.at(batch, seq) == _whole_model_step("train", "adamw", batch, seq, windowed)


@pytest.mark.parametrize("optimizer", ["adamw-8bit", "adafactor", "sgd"])
def test_each_optimizer_step_is_the_real_one(optimizer: str) -> None:
    est = estimate(CONFIG, mode="train", optimizer=optimizer, precision="bf16", batch=3, seq=512)
    got = (est.categories[C.ACTIVATIONS], est.categories[C.TEMPORARIES])
    assert got == _whole_model_step("train", optimizer, 3, 512)


def test_the_optimizer_peak_past_three_layers_is_kept() -> None:
    # 1-3 layers peak in backward (the head's transient), the whole model in the AdamW step
    # (its scratch grows with depth): the depth-scaled step alone would miss it
    from profiler.predict import stepmeasure

    deep = {**CONFIG, "num_hidden_layers": 24, "vocab_size": 8192, "hidden_size": 256}
    step = {"mode": "train", "optimizer": "adamw", "precision": "bf16", "checkpointing": False}
    direct = measure_step(deep, batch=1, seq=256, **step)
    key = stepmeasure.json.dumps(deep, sort_keys=True)
    scaled = stepmeasure._cached(
        key, ("train", "adamw", 1, 256, "bf16", False, 16, "all-linear", None)
    )
    assert scaled[1] < direct[1]
    assert direct == _whole_model_step("train", "adamw", 1, 256, deep)


def test_gpu_largest_batch_from_the_fit_is_confirmed_by_direct_dry_runs() -> None:
    options = {"mode": "train", "precision": "bf16", "seq": 512}
    at_ten = estimate(CONFIG, batch=10, **options)
    gpu = GpuSpec("test GPU", memory_bytes=at_ten.total + (1 << 20), marketing_gb=1)
    found = limits(CONFIG, options, gpu)
    best = found["max_batch"]
    assert best is not None and best >= 10
    # direct dry runs (the default estimate): the answer fits, one more does not
    assert estimate(CONFIG, batch=best, **options).fits(gpu)
    assert not estimate(CONFIG, batch=best + 1, **options).fits(gpu)
    assert found["search"].startswith("fitted from dry runs at (batch,seq) (4,512)")
    assert found["search"].endswith("answers confirmed by direct dry runs")
    # the context is capped by the config's max_position_embeddings
    big = GpuSpec("big GPU", memory_bytes=1 << 40, marketing_gb=1024)
    assert limits(CONFIG, options, big)["max_seq"] == 2048


def test_formulas_on_request_search_with_formulas() -> None:
    options = {"mode": "train", "precision": "bf16", "seq": 512, "measure_step": False}
    gpu = GpuSpec("test GPU", memory_bytes=1 << 30, marketing_gb=1)
    found = limits(CONFIG, options, gpu)
    assert found["search"] == "approximate (formulas)"
    best = found["max_batch"]
    assert estimate(CONFIG, batch=best, **options).fits(gpu)
    assert not estimate(CONFIG, batch=best + 1, **options).fits(gpu)


def test_moe_keeps_the_formulas_with_the_reason() -> None:
    moe = {**CONFIG, "model_type": "mixtral", "num_local_experts": 4}
    est = estimate(moe, mode="train", precision="bf16", batch=1, seq=64)
    assert est.category_sources[C.ACTIVATIONS] == "approximate (formulas)"
    assert any("MoE routing" in note for note in est.notes)
    gpu = GpuSpec("test GPU", memory_bytes=1 << 30, marketing_gb=1)
    assert limits(moe, {"mode": "train", "precision": "bf16"}, gpu)["search"] == (
        "approximate (formulas)"
    )


def test_an_unreachable_hub_fails_in_one_line_without_retries(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(PYTHONPATH=str(root), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path))
    # huggingface_hub alone retries for about 25 s: the timeout fails the test if it does
    done = subprocess.run(
        [sys.executable, "-m", "profiler", "estimate", "tiny-org/tiny-llama"],
        capture_output=True,
        text=True,
        env=env,
        timeout=15,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "tiny-org/tiny-llama" in done.stderr and "ConnectError" in done.stderr


@pytest.mark.parametrize("answer", [None, 1, 2, 7, 33, 64])
@pytest.mark.parametrize("guess", [None, 1, 5, 33, 40, 64])
def test_confirming_walks_from_any_guess_to_the_answer(answer: int | None, guess: int | None):
    from profiler.cli.estimate import _confirmed

    probed: list[int] = []

    def fits(n: int) -> bool:
        assert 1 <= n <= 64
        probed.append(n)
        return answer is not None and n <= answer

    assert _confirmed(fits, guess, 1, 64) == answer
    if guess is not None and answer is not None and abs(guess - answer) <= 1:
        assert len(set(probed)) <= 4  # a near guess costs a few sizes
