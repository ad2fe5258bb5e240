"""``gpumem run script.py``: an unmodified script, tracked from its model's first forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

F32 = 4
#: Linear(16, 32) + Linear(32, 4), float32.
WEIGHTS = (16 * 32 + 32 + 32 * 4 + 4) * F32

TRAIN = """
import sys, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2
for _ in range(steps):
    model(torch.randn(8, 16)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
print("trained", steps)
if len(sys.argv) > 2:
    raise SystemExit(int(sys.argv[2]))
"""

TRAINER = """
import torch, transformers
from tiny_models import tiny_gpt2
class Tokens(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i):
        ids = torch.arange(16) + i
        return {"input_ids": ids, "labels": ids}
args = transformers.TrainingArguments(output_dir=OUT, per_device_train_batch_size=4, max_steps=2,
    report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens()).train()
"""


def gpumem_run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUMEM_HOME": str(tmp_path / "home")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")])
    return subprocess.run(
        [sys.executable, "-m", "profiler", "run", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


def test_a_plain_training_script_is_tracked_without_changes(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    done = gpumem_run(tmp_path, "--json", "--no-stream", str(script), "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "trained 3"  # the script's own output and argv
    result = json.loads(lines[-1])
    summary, metrics = result["summary"], result["metrics"]
    assert summary["name"] == "train" and summary["steps"] == 3
    assert metrics["gpumem/weights"] == WEIGHTS
    # AdamW: exp_avg, exp_avg_sq like each of the 4 parameters, and a 4-byte step each
    assert metrics["gpumem/optimizer"] == 2 * WEIGHTS + 4 * 4
    assert metrics["gpumem/peak_gradients"] == WEIGHTS


def test_exit_codes_errors_and_the_table(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    done = gpumem_run(tmp_path, "--no-stream", str(script), "1", "3")
    assert done.returncode == 3  # the script's own exit code
    assert "gpumem: train · exact mode · cpu · 1 steps" in done.stderr
    broken = tmp_path / "broken.py"
    broken.write_text(TRAIN + "\nraise ValueError('from the script')\n")
    done = gpumem_run(tmp_path, "--no-stream", str(broken))
    assert done.returncode == 1
    assert "ValueError: from the script" in done.stderr  # shown as Python shows it
    missing = gpumem_run(tmp_path, str(tmp_path / "nope.py"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"gpumem run: error: no such script: {tmp_path / 'nope.py'} "
        "(hint: gpumem run path/to/train.py [args])"
    ]


def test_a_script_that_runs_out_of_memory_gets_its_post_mortem(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    done = gpumem_run(tmp_path, "--capacity", "6KB", str(script))
    assert done.returncode == 1
    assert "gpumem run: SimulatedOutOfMemoryError: Simulated device out of memory" in done.stderr
    report = next(line for line in done.stderr.splitlines() if "out-of-memory report:" in line)
    assert Path(report.rsplit(": ", 1)[1]).is_file()


def test_an_hf_trainer_script(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    script = tmp_path / "hf_train.py"
    script.write_text(f"OUT = {str(tmp_path / 'out')!r}\n" + TRAINER)
    done = gpumem_run(tmp_path, "--json", "--no-stream", str(script))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["summary"]["steps"] == 2
    from tiny_models import tiny_gpt2

    params = list(tiny_gpt2().parameters())
    weights = sum(p.nbytes for p in params)
    assert (result["model"], result["optimizer"]) == ("GPT2LMHeadModel", "AdamW")
    # the Trainer (and its model) is gone when the script ends: its peaks remain
    assert result["metrics"]["gpumem/peak_weights"] == weights  # the tied head counted once
    assert result["metrics"]["gpumem/peak_optimizer"] == 2 * weights + 4 * len(params)
