"""Benchmark: ``estimate()`` of 70B and 405B configs measured on the real class (meta device).

Run: ``PYTHONPATH=. python benchmarks/estimate_speed.py [--presets llama-3.1-70b llama-3.1-405b]``

Each preset runs in a fresh subprocess, so every figure is cold: importing torch and
transformers, building ``LlamaForCausalLM`` on the meta device from the real config, reading the
module tree and probing the KV cache with three meta-tensor prefills. The child prints the time
of its first ``estimate()`` (inference), of a second one (training, from the cached
measurement), of the ``--gpu`` search (largest batch and longest context on an H100), the whole
wall time, and its peak host memory (``ru_maxrss``). Targets: 70B under 10 s, 405B under 30 s,
host memory under 2 GB. The child's CPU time is printed too: on a shared machine the wall time
includes waiting for a core.
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
print(json.dumps({
    "import_s": imported - start, "first_estimate_s": measured - imported,
    "second_estimate_s": trained - measured, "gpu_search_s": done - trained,
    "total_s": done - start, "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "parameters": first.parameters, "source": first.source,
    "kv_bytes_per_token": first.kv_bytes_per_token, "weights": first.categories["weights"],
    "train_total": train.total, "limits": found,
}))
"""


def main() -> None:
    """Run each preset in a fresh process and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["llama-3.1-70b", "llama-3.1-405b"])
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), *sys.path]))}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for preset in args.presets:
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, preset],
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
            f"{preset}: {data['parameters']:,} parameters, {data['source']}\n"
            f"  process wall {wall:.1f} s, CPU {cpu:.1f} s (imports {data['import_s']:.1f} s, first estimate "
            f"{data['first_estimate_s']:.1f} s, second {data['second_estimate_s']:.3f} s, "
            f"--gpu h100 search {data['gpu_search_s']:.2f} s), peak host memory "
            f"{data['maxrss_bytes'] / 2**20:.0f} MiB\n"
            f"  load average after: {os.getloadavg()[0]:.2f}\n"
            f"  KV cache {data['kv_bytes_per_token']:,} B/token (bf16), weights "
            f"{data['weights']:,} B; on H100: {data['limits']}"
        )


if __name__ == "__main__":
    main()
