"""The engine on real transformers models (random weights from configs, no downloads)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from profiler import track_memory

transformers = pytest.importorskip("transformers")

F32 = 4


def kv_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int) -> int:
    return 2 * layers * kv_heads * head_dim * tokens * batch * F32


@pytest.mark.parametrize(
    ("build", "layers", "kv_heads", "head_dim"),
    [(tiny_gpt2, 2, 4, 16), (tiny_llama, 2, 2, 16)],  # Llama: GQA, 2 KV heads for 4 query heads
    ids=["gpt2", "llama-gqa"],
)
def test_generation_kv_cache_is_exact(build, layers: int, kv_heads: int, head_dim: int) -> None:  # type: ignore[no-untyped-def]
    model = build().eval()
    batch, prompt, new = 2, 5, 7
    ids = torch.randint(1, 1000, (batch, prompt))
    with track_memory(model, stream=False) as mem, torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
        )
        mem.step()
    tokens = prompt + new - 1  # the last token's keys and values are never computed
    assert mem.breakdown().loc["kv_cache", "current"] == kv_bytes(
        layers, kv_heads, head_dim, tokens, batch
    )
    assert mem.breakdown().loc["activations", "peak"] == 0
    assert len(mem.kv_caches()) == 1
    del out


def test_training_step_of_gpt2_matches_torch_memtracker_peak_within_1_percent() -> None:
    from torch.distributed._tools.mem_tracker import MemTracker

    def workload() -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:  # type: ignore[type-arg]
        model = tiny_gpt2().train()
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(1, 1000, (2, 32))
        return model, optimizer, {"input_ids": ids, "labels": ids}

    def step(model, optimizer, batch) -> None:  # type: ignore[no-untyped-def]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model, optimizer, batch = workload()
    with track_memory(model, optimizer, stream=False) as mem:
        step(model, optimizer, batch)
    ours = mem.peak_bytes

    model, optimizer, batch = workload()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step(model, optimizer, batch)
    theirs = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert abs(ours - theirs) / theirs < 0.01, (ours, theirs)


def test_training_with_kv_cache_output_counts_the_cache_once() -> None:
    model = tiny_gpt2().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(1, 1000, (2, 8))
    with track_memory(model, optimizer, stream=False) as mem:
        out = model(input_ids=ids, labels=ids, use_cache=True)
        out.loss.backward()
        optimizer.step()
    # the cache returned by the forward holds 8 positions of each layer's keys and values
    assert mem.breakdown().loc["kv_cache", "current"] == kv_bytes(2, 4, 16, 8, 2)
    del out


def test_custom_cache_marked_by_hand() -> None:
    class MyCache:
        def __init__(self) -> None:
            self.store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    with track_memory(stream=False) as mem:
        cache = MyCache()
        for layer in range(3):
            cache.store[layer] = (torch.zeros(2, 4, 10, 8), torch.zeros(2, 4, 10, 8))
        mem.mark_kv_cache(cache)
    assert mem.breakdown().loc["kv_cache", "current"] == 3 * 2 * (2 * 4 * 10 * 8) * F32
    assert mem.breakdown().loc["temporaries", "current"] == 0


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_torch_compile_keeps_working_and_is_measured_per_step(mode: str) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(8, 16)
    expected = model(x).detach()
    with track_memory(model, optimizer, mode=mode, stream=False) as mem:
        for _ in range(3):
            out = compiled(x)
            out.sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert len(mem.steps) == 3
    params = sum(p.numel() * F32 for p in model.parameters())
    assert mem.breakdown().loc["weights", "current"] == params
    assert mem.breakdown().loc["gradients", "peak"] == params
    assert {str(s.phase) for s in mem.samples} >= {"forward", "optimizer"}
    assert out.shape == expected.shape
    # compiled inside the block, and gpumem's hooks broke no graph. dynamo inlines
    # nn.Sequential's __call__ and guards on the global module hooks: fast mode's sampled step
    # (global hooks, step 0) and its other steps (root and optimizer hooks only) are two cached
    # variants of the one program; exact mode has one
    assert counters["stats"]["unique_graphs"] == (1 if mode == "exact" else 2)
    assert dict(counters["graph_break"]) == {}


def test_tracking_touches_no_deprecated_transformers_attribute(monkeypatch) -> None:
    from transformers.utils import generic

    warned: list[str] = []
    monkeypatch.setattr(
        generic.logger, "warning_once", lambda message, *a, **k: warned.append(message)
    )
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ids = torch.randint(1, 1000, (2, 16))
    # the check itself can fail: asking a ModelOutput for the old name logs
    assert "past_key_values" not in model(ids, use_cache=False)
    assert warned and not warned.clear()
    with track_memory(model, optimizer, stream=False) as mem:
        model(ids, labels=ids).loss.backward()  # training: no cache returned
        optimizer.step()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    assert warned == []
    assert mem.breakdown().loc["kv_cache", "peak"] > 0
