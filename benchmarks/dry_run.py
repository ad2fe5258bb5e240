"""Benchmark: dry run of a Llama-2-7B-shaped training step on fake tensors.

Run: ``PYTHONPATH=. python benchmarks/dry_run.py [--seq 2048] [--batch 1] [--steps 2]``

Builds ``LlamaForCausalLM`` from the Llama-2-7B preset's config (random init on fake tensors, no
download), converts it to bf16, and runs ``steps`` AdamW training steps under
:func:`profiler.dryrun.dry_run` with CUDA rounding. Prints the wall time, this process's
peak host memory (``ru_maxrss``), the measured peak per category next to the formula's
prediction, and the ratio of dry-run peak to ``estimate()``'s allocated bytes.
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--preset", default="llama-2-7b")
    args = parser.parse_args()

    start = time.perf_counter()
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from profiler.dryrun import dry_run
    from profiler.predict.estimate import estimate
    from profiler.predict.presets import load_preset
    from profiler.units import format_bytes

    transformers.logging.set_verbosity_error()
    imported = time.perf_counter()
    facts = load_preset(args.preset)
    fields = {k: v for k, v in facts.items() if k not in ("name", "display", "hf_id", "parameters")}
    config = LlamaConfig(**fields)
    vocab = config.vocab_size

    build_time: list[float] = []

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        began = time.perf_counter()
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        build_time.append(time.perf_counter() - began)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        ids = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run_start = time.perf_counter()
    cpu_start = time.process_time()
    result = dry_run(build, step, steps=args.steps, device="cuda")
    done = time.perf_counter()
    cpu = time.process_time() - cpu_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    print(
        f"model: {args.preset} bf16, AdamW, batch {args.batch}, seq {args.seq}, {args.steps} steps"
    )
    print(
        f"imports: {imported - start:.1f} s   dry run: {done - run_start:.1f} s wall, "
        f"{cpu:.1f} s CPU (build {build_time[0]:.1f} s wall)   total: {done - start:.1f} s"
    )
    print(f"peak host memory (ru_maxrss): {format_bytes(rss)}")
    print(f"dry-run peak (CUDA rounding): {format_bytes(result.peak_bytes)}")
    print(result.breakdown().to_string())
    est = estimate(
        args.preset,
        precision="bf16",
        mode="train",
        master_weights=False,
        batch=args.batch,
        seq=args.seq,
    )
    print(
        f"estimate() allocated (no master weights): {format_bytes(est.allocated)}; "
        f"dry-run peak / estimate: {result.peak_bytes / est.allocated:.3f}"
    )


if __name__ == "__main__":
    main()
