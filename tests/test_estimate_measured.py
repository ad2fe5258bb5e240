"""Estimates measured on the real transformers class, checked against real (CPU, tiny) models.

Parameters are checked against ``sum(p.numel())`` of the instantiated model; the KV cache and
SSM state against the storages of the cache a real ``generate`` leaves; Adafactor's state against
the state a real Adafactor step creates. No downloads: every model is built from a config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.errors import ConfigError
from profiler.predict.estimate import estimate
from profiler.predict.formats import find_format
from profiler.predict.formulas import weight_bytes
from profiler.predict.measured import measure_config
from profiler.predict.modelshape import shape_from_config
from profiler.predict.presets import load_preset
from profiler.predict.sources import APPROXIMATE
from profiler.records import Category as C

transformers = pytest.importorskip("transformers")

_BASE = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}

TINY = {
    "qwen2-moe (moe_intermediate_size, shared experts)": {
        **_BASE,
        "model_type": "qwen2_moe",
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    "deepseek-v3 (MLA, DeepSeekMoE)": {
        **_BASE,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 32,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "kv_lora_rank": 16,
        "q_lora_rank": 24,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    },
    "gemma2 (alternating sliding window, tied by default)": {
        **_BASE,
        "model_type": "gemma2",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 8,
    },
    "falcon (multi-query)": {
        "model_type": "falcon",
        "vocab_size": 128,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "multi_query": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    "mamba (SSM)": {
        "model_type": "mamba",
        "vocab_size": 128,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "state_size": 8,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    },
    "jamba (attention/Mamba hybrid, MoE)": {
        **_BASE,
        "model_type": "jamba",
        "num_experts": 2,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "mamba_d_state": 8,
    },
}


def _real(config: dict) -> torch.nn.Module:
    cfg = dict(config)
    built = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(built).eval()


def _unique_numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _real_cache_bytes(cache) -> tuple[int, int]:
    """Key/value bytes and state bytes of a real cache, storages counted once by address."""
    seen: set[int] = set()
    kv = state = 0
    for layer in cache.layers:
        for attr in ("keys", "values", "conv_states", "recurrent_states"):
            value = getattr(layer, attr, None)
            items = value.values() if isinstance(value, dict) else [value]
            for t in items:
                if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in seen:
                    continue
                seen.add(t.untyped_storage().data_ptr())
                if attr in ("keys", "values"):
                    kv += t.untyped_storage().nbytes()
                else:
                    state += t.untyped_storage().nbytes()
    return kv, state


def _generate(model: torch.nn.Module, prompt: int, new: int):
    ids = torch.ones(1, prompt, dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
        )
    return out.past_key_values


@pytest.mark.parametrize("name", list(TINY))
def test_parameters_and_cache_equal_the_real_model(name: str) -> None:
    config = TINY[name]
    model = _real(config)
    est = estimate(config, precision="fp32", seq=5)
    assert est.source.startswith("measured on the real class (" + type(model).__name__)
    assert est.parameters == _unique_numel(model)
    assert est.categories[C.WEIGHTS] == 4 * _unique_numel(model)
    # prompt 5, 3 new tokens: the cache holds 5 + 3 - 1 = 7 positions (below the window of 8)
    kv, state = _real_cache_bytes(_generate(model, 5, 3))
    at_seven = estimate(config, precision="fp32", seq=7)
    assert at_seven.categories[C.KV_CACHE] == kv
    assert at_seven.ssm_state == state
    # a prompt of 12 (past the window): transformers keeps the whole prompt after the prefill
    kv, state = _real_cache_bytes(_generate(model, 12, 1))
    at_twelve = estimate(config, precision="fp32", seq=12)
    assert (at_twelve.categories[C.KV_CACHE], at_twelve.ssm_state) == (kv, state)


def test_hand_figures_for_mla_mqa_and_ssm() -> None:
    # MLA caches the compressed latent: kv_lora_rank + qk_rope_head_dim per layer and token
    mla = estimate(TINY["deepseek-v3 (MLA, DeepSeekMoE)"], precision="bf16", seq=10)
    assert mla.kv_bytes_per_token == 4 * (16 + 8) * 2
    assert mla.categories[C.KV_CACHE] == 10 * mla.kv_bytes_per_token
    mqa = estimate(TINY["falcon (multi-query)"], precision="fp16", seq=10)
    assert mqa.kv_bytes_per_token == 2 * 2 * 1 * 16 * 2  # 2 layers, K and V, 1 head of 16
    ssm = estimate(TINY["mamba (SSM)"], precision="fp16", seq=10, batch=3)
    assert ssm.categories[C.KV_CACHE] == 0 and ssm.kv_bytes_per_token == 0
    # per layer: conv state (2 x hidden) x conv kernel 4, ssm state (2 x hidden) x state size 8
    assert ssm.ssm_state == 3 * 2 * (128 * 4 + 128 * 8) * 2
    assert ssm.to_dict([])["ssm_state_bytes"] == ssm.ssm_state
    assert ssm.total == ssm.allocated + sum(o.bytes for o in ssm.overheads)


def test_gemma_and_falcon_tie_as_their_classes_do() -> None:
    for name in ("gemma2 (alternating sliding window, tied by default)", "falcon (multi-query)"):
        config = TINY[name]
        assert "tie_word_embeddings" not in config
        model = _real(config)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert estimate(config).parameters == _unique_numel(model)


def test_presets_measure_their_published_parameter_counts() -> None:
    for name in ("llama-3-8b", "gemma-2-9b", "mixtral-8x7b", "gpt2"):
        facts = load_preset(name)
        assert measure_config(facts).parameters == facts["parameters"], name


def test_quantised_weights_from_the_module_tree_equal_the_layouts() -> None:
    # a dense Llama: the formulas' per-layout arithmetic (checked against published files in
    # test_predict_formulas) and the module-tree walk are two derivations of the same bytes
    facts = load_preset("llama-2-7b")
    measured, shape = measure_config(facts), shape_from_config(facts)
    for precision in ("gptq", "awq", "nf4", "nf4-dq", "llm-int8", "q8_0", "q4_k_m", "q5_k_m"):
        fmt = find_format(precision)
        assert measured.weight_bytes(fmt) == weight_bytes(shape, fmt), precision
    # GPTQ keeps embeddings and lm_head in fp16: 2 x 32000 x 4096 x 2 bytes of the total
    assert measured.embeddings == ((32000, 4096),) and measured.head == (32000, 4096)


def test_tied_gguf_table_is_stored_once_as_the_output_type() -> None:
    # llama.cpp: a model with no output tensor stores token_embd in the output's type (Q6_K in
    # the _M mixes); the formulas store it in the base type (Q4_K): that is the only difference
    facts = load_preset("gemma-2-9b")
    measured, shape = measure_config(facts), shape_from_config(facts)
    assert measured.tied and measured.head is None
    rows, cols = measured.embeddings[0]
    blocks = -(-rows * cols // 256)
    q4 = find_format("q4_k_m")
    assert measured.weight_bytes(q4) - weight_bytes(shape, q4) == blocks * (210 - 144)
    q8 = find_format("q8_0")  # no mix: the table keeps the base type
    assert measured.weight_bytes(q8) == weight_bytes(shape, q8)


def test_adafactor_state_equals_a_real_adafactor_step() -> None:
    from transformers.optimization import Adafactor

    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2}
    model = _real(config)
    opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=False)
    ids = torch.ones(2, 6, dtype=torch.long)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    state = sum(
        t.numel()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    est = estimate(config, precision="fp32", mode="train", optimizer="adafactor")
    assert est.categories[C.OPTIMIZER] == state * 4  # fp32 training: no master copy


def test_peft_adapters_present_give_gradients_and_optimizer() -> None:
    peft = pytest.importorskip("peft")
    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2}
    lora = peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = peft.get_peft_model(_real(config), lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r=8 on q (64->64), k, v (64->32), o (64->64) in 4 layers
    assert trainable == 4 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64))
    est = estimate(model, mode="lora", optimizer="adamw")
    assert est.trainable_parameters == trainable
    assert est.categories[C.GRADIENTS] == trainable * 4
    assert est.categories[C.OPTIMIZER] == trainable * 4 * 2
    assert est.parameters == _unique_numel(model)
    assert est.categories[C.WEIGHTS] == 4 * _unique_numel(model)  # fp32 as the module is


def test_a_live_adapter_model_s_step_is_its_own() -> None:
    """estimate(PeftModel): activations and temporaries from a dry run of a fake copy of the
    module itself (its adapters and frozen base), checked against a real tracked CPU run of
    the same step at the same rounding."""
    peft = pytest.importorskip("peft")
    from profiler import track_memory

    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2}
    lora = peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = peft.get_peft_model(_real(config), lora)
    est = estimate(model, mode="lora", optimizer="adamw", batch=2, seq=32)
    assert est.category_sources[C.ACTIVATIONS].startswith("measured")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.zeros(2, 32, dtype=torch.long)
    with track_memory(model, opt, stream=False, leaks=False, rounding=512) as mem:
        for _ in range(2):
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    real = mem.breakdown()
    assert est.categories[C.ACTIVATIONS] == int(real.loc["activations", "peak"])
    # the dry run makes its ids inside the step (a temporary); here they exist before the block
    assert est.categories[C.TEMPORARIES] - int(real.loc["temporaries", "peak"]) == 512


def test_partly_frozen_model_trains_only_what_requires_grad() -> None:
    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2}
    model = _real(config)
    for p in model.model.layers[:2].parameters():
        p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    est = estimate(model, mode="train", precision="fp32", optimizer="sgd")
    assert est.trainable_parameters == trainable < est.parameters
    assert est.categories[C.GRADIENTS] == trainable * 4
    assert est.categories[C.OPTIMIZER] == trainable * 4  # SGD momentum, fp32, no master copy


def test_unknown_model_type_falls_back_to_labelled_formulas() -> None:
    config = {**_BASE, "model_type": "not_a_transformers_type"}
    est = estimate(config, seq=16)
    assert est.source == APPROXIMATE
    assert set(est.category_sources.values()) == {APPROXIMATE}
    assert est.to_dict([])["source"] == APPROXIMATE
    assert est.parameters == _unique_numel(_real({**config, "model_type": "llama"}))


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("moe_intermediate_size", 32, "expert width"),
        ("kv_lora_rank", 16, "MLA"),
        ("state_size", 8, "SSM"),
        ("attn_layer_period", 2, "hybrid"),
    ],
)
def test_fallback_refuses_what_it_cannot_size(key: str, value: int, what: str) -> None:
    config = {**_BASE, "model_type": "not_a_transformers_type", key: value}
    with pytest.raises(ConfigError) as info:
        estimate(config)
    assert what in info.value.message and "transformers" in (info.value.hint or "")


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    full = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "profiler", "estimate", *argv],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        check=False,
    )


def test_hub_id_offline_from_a_cache_the_test_writes(tmp_path: Path) -> None:
    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    done = _cli("tiny-org/tiny-llama", "--json", env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["parameters"] == _unique_numel(_real(config))
    assert data["source"].startswith("measured on the real class (LlamaForCausalLM")
    missing = _cli("tiny-org/not-cached", env=env)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) <= 2 and "Traceback" not in missing.stderr
    assert "not-cached" in missing.stderr


def test_gpu_limit_respects_max_positions_on_a_config_path(tmp_path: Path) -> None:
    from profiler.cli.estimate import limits
    from profiler.predict.gpus import find_gpu

    path = tmp_path / "config.json"
    path.write_text(json.dumps(load_preset("phi-3-mini")))
    gpu = find_gpu("h100")
    found = limits(str(path), {"gpu": gpu}, gpu)
    assert found["seq_limit"] == 4096 and found["max_seq"] == 4096
    assert found["max_batch"] is not None


@pytest.mark.parametrize(
    "config",
    [
        {**_BASE, "model_type": "llama", "num_key_value_heads": 2, "num_hidden_layers": 10},
        {
            **_BASE,
            "model_type": "gemma2",
            "num_key_value_heads": 2,
            "head_dim": 16,
            "sliding_window": 8,
            "num_hidden_layers": 12,
            "layer_types": ["sliding_attention", "full_attention"] * 6,
        },
        {**_BASE, "model_type": "mixtral", "num_local_experts": 4, "num_hidden_layers": 9},
    ],
    ids=["llama", "gemma2-alternating", "mixtral"],
)
def test_scaling_by_layer_count_equals_the_full_build(config: dict) -> None:
    from profiler.predict import measured

    scaled = measured._measure_scaled(dict(config))
    assert scaled is not None
    assert scaled == measured._measure_full(dict(config))
    assert scaled.parameters == _unique_numel(_real(config))


def test_layers_placed_by_index_are_built_whole() -> None:
    from profiler.predict import measured

    config = {**TINY["deepseek-v3 (MLA, DeepSeekMoE)"], "num_hidden_layers": 12}
    assert measured._measure_scaled(dict(config)) is None
    assert measure_config(config).parameters == _unique_numel(_real(config))


def test_adamw_8bit_state_follows_bitsandbytes_per_real_tensor() -> None:
    config = {**_BASE, "model_type": "llama", "num_key_value_heads": 2, "num_hidden_layers": 2}
    model = _real(config)
    expected = 2 * 256 * 4  # the shared signed and unsigned maps
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes: below min_8bit_size (4096) two fp32 moments; else two uint8 moments
        # and one fp32 absmax per 256-element block for each
        expected += 8 * n if n < 4096 else 2 * n + 2 * 4 * -(-n // 256)
    est = estimate(config, precision="bf16", mode="train", optimizer="adamw-8bit")
    assert est.categories[C.OPTIMIZER] == expected + 4 * est.parameters  # + fp32 master weights
    # the norms (64 elements) keep fp32 state: more than the flat 2 x (1 + 4/256) bytes
    assert expected > est.parameters * 2 * (1 + 4 / 256)


_DEEP_LLAMA = {**_BASE, "model_type": "llama", "num_key_value_heads": 2, "num_hidden_layers": 10}


@pytest.mark.parametrize(
    ("mode", "optimizer", "checkpointing"),
    [
        ("train", "adamw", False),
        ("train", "sgd", True),
        ("lora", "adamw", False),
        ("inference", "adamw", False),
    ],
)
def test_measured_step_equals_a_dry_run_of_the_whole_model(
    mode: str, optimizer: str, checkpointing: bool
) -> None:
    from profiler.dryrun import dry_run
    from profiler.predict.stepmeasure import STEP_SOURCE

    est = estimate(
        _DEEP_LLAMA,
        mode=mode,
        optimizer=optimizer,
        precision="bf16",
        batch=2,
        seq=16,
        gradient_checkpointing=checkpointing,
        measure_step=True,
    )
    assert est.category_sources[C.ACTIVATIONS] == STEP_SOURCE
    # the whole 10-layer model dry-run directly (the estimate dry-runs 1, 2 and 3 layers)
    model = _real(_DEEP_LLAMA)

    def build():
        m = transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16)
        if mode == "inference":
            return m.eval(), None
        m.train()
        if checkpointing:
            m.gradient_checkpointing_enable()
        if mode == "lora":
            import peft

            lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
            m = peft.get_peft_model(m, lora)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = (
            torch.optim.SGD(params, lr=1e-3, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.AdamW(params, lr=1e-3)
        )
        return m, opt

    def step(m, opt):
        ids = torch.zeros(2, 16, dtype=torch.long)
        if opt is None:
            with torch.no_grad():
                m(input_ids=ids, use_cache=True)
            return
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    frame = dry_run(build, step, steps=2, device="cuda").breakdown()
    assert est.categories[C.ACTIVATIONS] == int(frame.loc["activations", "peak"])
    assert est.categories[C.TEMPORARIES] == int(frame.loc["temporaries", "peak"])


def test_a_step_fake_tensors_cannot_run_keeps_the_formulas_and_says_why() -> None:
    moe = {**_BASE, "model_type": "mixtral", "num_local_experts": 4}
    est = estimate(moe, mode="train", precision="bf16", batch=1, seq=8, measure_step=True)
    assert est.category_sources[C.ACTIVATIONS] == APPROXIMATE
    assert any(note.startswith("step not measured") for note in est.notes)


def test_a_multimodal_config_with_text_config_is_measured_on_its_class() -> None:
    # Gemma 3's published configs nest the decoder in text_config (the formulas could not
    # parse them); the real class builds the whole model, vision tower included
    config = {
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "sliding_window": 8,
            "vocab_size": 300,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
        },
        "mm_tokens_per_image": 4,
    }
    est = estimate(config, precision="fp32", seq=6)
    model = _real(config)
    assert est.source.startswith(f"measured on the real class ({type(model).__name__}")
    assert est.parameters == _unique_numel(model)
    # 2 layers, K and V, 2 KV heads of 16, 6 tokens, fp32
    assert est.categories[C.KV_CACHE] == 2 * 2 * 2 * 16 * 6 * 4
