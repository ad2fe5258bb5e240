"""Benchmark: ``estimate()`` of 70B and 405B configs, every figure measured on the real class.

Run: ``PYTHONPATH=. python benchmarks/estimate_speed.py [--presets llama-3.1-70b llama-3.1-405b]``

Each preset runs in a fresh subprocess, so every figure is cold: importing torch and
transformers, building ``LlamaForCausalLM`` on the meta device from the real config, reading the
module tree and probing the KV cache with three meta-tensor prefills, and (the default now)
dry-running the step on fake tensors for activations and temporaries. The child prints the time
of its first ``estimate()`` (inference prefill, batch 1, context 2048), of a second one (a
training step with AdamW, batch 1, seq 2048: its own dry runs), of the ``--gpu`` search on an
H100 (nothing fits: the weights alone are too large, so it needs no dry run), the process's wall
time up to there (the target), and, apart, a ``--gpu`` search where the model fits (a B200:
the six-point fit, its check and the direct dry runs that confirm the answers). Peak host
memory is ``ru_maxrss``. Targets: 70B under 10 s, 405B under 30 s, host memory under 2 GB. The
child's CPU time is printed too: on a shared machine the wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

_CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
from profiler.cli.estimate import limits
from profiler.predict.estimate import estimate
from profiler.predict.gpus import find_gpu
imported = time.perf_counter()
first = estimate(sys.argv[1], precision="bf16")
measured = time.perf_counter()
train = estimate(sys.argv[1], precision="bf16", mode="train", batch=1, seq=2048)
trained = time.perf_counter()
gpu = find_gpu("h100")
found = limits(sys.argv[1], {"precision": "bf16", "gpu": gpu}, gpu)
done = time.perf_counter()
cpu = time.process_time()
big = find_gpu(sys.argv[2]) if len(sys.argv) > 2 else None
fitted = limits(sys.argv[1], {"precision": "bf16", "gpu": big}, big) if big else None
searched = time.perf_counter()
print(json.dumps({
    "import_s": imported - start, "first_estimate_s": measured - imported,
    "second_estimate_s": trained - measured, "gpu_search_s": done - trained,
    "total_s": done - start, "total_cpu_s": cpu, "fit_search_s": searched - done,
    "fitted": fitted, "activations": first.category_sources["activations"],
    "train_activations": train.categories["activations"],
    "train_temporaries": train.categories["temporaries"],
    "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "parameters": first.parameters, "source": first.source,
    "kv_bytes_per_token": first.kv_bytes_per_token, "weights": first.categories["weights"],
    "train_total": train.total, "limits": found,
}))
"""


def main() -> None:
    """Run each preset in a fresh process and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["llama-3.1-70b", "llama-3.1-405b"])
    parser.add_argument("--fit-gpu", default="b200", help="the GPU of the fitted search (70B)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), *sys.path]))}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for preset in args.presets:
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                preset,
                *([args.fit_gpu] if "405b" not in preset else []),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        data = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{preset}: {data['parameters']:,} parameters, {data['source']}; activations "
            f"{data['activations']}\n"
            f"  estimates: {data['total_s']:.1f} s wall, {data['total_cpu_s']:.1f} s CPU "
            f"(imports {data['import_s']:.1f} s, first estimate {data['first_estimate_s']:.1f} s, "
            f"training {data['second_estimate_s']:.1f} s, --gpu h100 search "
            f"{data['gpu_search_s']:.2f} s); the process to there {wall - data['fit_search_s']:.1f}"
            f" s wall (interpreter start included; {wall:.1f} s with the fitted search after it), "
            f"{cpu:.1f} s CPU in all; "
            f"peak host memory {data['maxrss_bytes'] / 2**20:.0f} MiB\n"
            f"  load average after: {os.getloadavg()[0]:.2f}\n"
            f"  KV cache {data['kv_bytes_per_token']:,} B/token (bf16), weights "
            f"{data['weights']:,} B; training activations {data['train_activations']:,} B, "
            f"temporaries {data['train_temporaries']:,} B; on H100: {data['limits']}"
        )
        if data["fitted"]:
            print(f"  --gpu {args.fit_gpu} search {data['fit_search_s']:.1f} s: {data['fitted']}")


if __name__ == "__main__":
    main()
