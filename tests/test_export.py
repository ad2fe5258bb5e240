"""``gpumem export prometheus``: the session stream as Prometheus metrics.

The main test scrapes the exporter on 127.0.0.1 while a real 2-rank DDP job (torchrun, gloo)
is live, and checks every series against the sessions as the stream reader reads them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_distributed import ROOT, free_port, torchrun

from profiler import track_memory
from profiler.export.prometheus import serve
from profiler.export.tail import StreamTail
from profiler.records import CATEGORIES
from profiler.session.reader import SessionReader

LIVE_JOB = ROOT / "tests" / "distributed" / "live_job.py"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(samples: dict, metric: str, **labels: str) -> float:
    found = [
        v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items()
    ]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def settled(home: Path, count: int, steps: int, timeout: float = 60) -> list:
    """Poll until ``count`` live sessions recorded ``steps`` step ends and two polls agree."""
    reader = SessionReader(home)
    deadline = time.monotonic() + timeout
    last = None
    try:
        while time.monotonic() < deadline:
            views = [v for v in reader.poll() if v.live and len(v.steps) == steps]
            now = [(v.id, v.bytes, v.peak, v.step) for v in views]
            if len(views) == count and now == last:
                return views
            last = now
            time.sleep(0.3)
    finally:
        reader.close()
    raise AssertionError(f"sessions never settled: {last}")


@pytest.mark.slow
def check_predicted(samples: Any, view: Any, labels: dict[str, Any]) -> dict[str, Any]:
    """The predicted series are the newest prediction event's (entry, then the first step)."""
    assert view.prediction is not None
    predicted = dict(view.predicted)
    for category, figure in predicted.items():
        if figure is not None:
            found = series(samples, "gpumem_predicted_bytes", category=category, **labels)
            assert found == figure
    return predicted


def test_scrape_during_a_live_two_rank_job(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    job: dict = {}

    def launch() -> None:
        job["port"] = torchrun(LIVE_JOB, home, out, timeout=200)

    import threading

    runner = threading.Thread(target=launch, daemon=True)
    runner.start()
    server = None
    try:
        deadline = time.monotonic() + 150
        while not all((out / f"rank{r}.json").exists() for r in (0, 1)):
            assert time.monotonic() < deadline and runner.is_alive(), "the job did not start"
            time.sleep(0.2)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        views = settled(home, 2, 3)
        port = free_port()
        server, _ = serve(bind="127.0.0.1", port=port, home=str(home))
        samples = scrape(port)
        by_id = {v.id: v for v in views}
        for r, figures in enumerate(ranks):
            session = Path(figures["session_dir"]).name
            view = by_id[session]
            assert view.meta.rank == r
            labels = {
                "session": session,
                "rank": str(r),
                "local_rank": str(r),
                "job": view.meta.job_id,
                "host": view.meta.host,
                "name": "live",
                "device": "cpu",
            }
            assert view.meta.job_id is not None and view.meta.job_id.startswith("127.0.0.1:")
            assert series(samples, "gpumem_live", **labels) == 1
            assert series(samples, "gpumem_step", **labels) == view.step
            assert series(samples, "gpumem_peak_bytes", **labels) == view.peak == figures["peak"]
            assert series(samples, "gpumem_total_bytes", **labels) == view.current
            assert view.bytes is not None
            for category, value in zip(CATEGORIES, view.bytes, strict=True):
                assert (
                    series(samples, "gpumem_memory_bytes", category=str(category), **labels)
                    == value
                )
            predicted = check_predicted(samples, view, labels)
            # Linear(64, 128) fp32, predicted from the shapes
            assert predicted["weights"] == (64 * 128 + 128) * 4
            assert series(samples, "gpumem_leak_alerts", **labels) == 0
    finally:
        (out / "release").parent.mkdir(exist_ok=True)
        (out / "release").write_text("")
        if server is not None:
            server.shutdown()
        runner.join(timeout=200)
    assert "port" in job  # the job ended cleanly (torchrun returned 0)


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("GPUMEM_HOME", str(home))
    with track_memory(name="one") as mem:
        mem.step()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "profiler.cli",
            "export",
            "prometheus",
            "--port",
            str(port),
            "--home",
            str(home),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                samples = scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        session = Path(mem.session_dir).name
        assert series(samples, "gpumem_live", session=session, rank="", job="") == 0
        assert series(samples, "gpumem_step", session=session) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"127.0.0.1:{port}/metrics" in err


def test_cli_refuses_a_bad_port(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "profiler.cli", "export", "prometheus", "--port", "99999"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpumem export: error: --port must be a number from 1 to 65535, not '99999'"
    ]


def test_grafana_dashboard_uses_only_exported_metrics_and_labels(tmp_path: Path) -> None:
    import re

    from profiler.export.prometheus import LABELS, registry_for

    dashboard = json.loads((ROOT / "recipes" / "grafana" / "gpumem.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"  # importable as is
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    reader = StreamTail(tmp_path)
    exported = {family.name for family in registry_for(reader).collect()}
    used = {name for expr in exprs for name in re.findall(r"gpumem_\w+", expr)}
    assert used and used <= exported, used - exported
    labels = {
        label
        for expr in exprs
        for group in re.findall(r"by \(([^)]*)\)", expr) + re.findall(r"\{([^}]*)\}", expr)
        for label in re.findall(r"(\w+)\s*(?:=~|=|,|$)", group)
    }
    assert labels <= {*LABELS, "category"}, labels - {*LABELS, "category"}
