"""Slow tier: every kept benchmark script runs, shrunk, so none rots (`pytest -m slow`).
The figures they produce are benchmarks' business; these only check that each script
runs to its end and reports what it says it reports."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(*argv, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_predict_memory(tmp_path):
    out = tmp_path / "pm.json"
    _run("benchmarks/predict_memory.py", "--small=20", "--large=60", "--repeats=1", f"--out={out}")
    result = json.loads(out.read_text())
    assert result["files"] == {"small": 20, "large": 60} and len(result["runs"]["large"]) == 1


def test_checkpoint_handover():
    printed = _run("benchmarks/checkpoint_handover.py")
    assert sum(" CPU ms " in line for line in printed.splitlines()) == 4  # pmap / jit x host / device


def test_degrade_overhead(tmp_path):
    out = tmp_path / "d.json"
    _run("benchmarks/degrade_overhead.py", "--repeats=1", "--steps=2", "--only=tiny", f"--out={out}")
    assert json.loads(out.read_text())


def test_xla_flag_sweep():
    _run("benchmarks/xla_flag_sweep.py", "--backbone=tiny", "--size=32", "--sets=default")


def test_benchmark_quick_export(tmp_path):
    out = tmp_path / "b.json"
    _run("benchmarks/benchmark.py", "--export", "--repeats=1", f"--out={out}")
    assert "export_latency" in json.loads(out.read_text())


def test_provenance_on_the_phantom_sites(tmp_path):
    out = _run("benchmarks/provenance.py", "--config=configs/smoke_sources.py", f"--data_dir={tmp_path}")
    assert "| t1 | t2 | 920 | 0 |" in out and "| train | 1440 |" in out


def test_sequence_shift_runs(tmp_path):
    out = tmp_path / "s.json"
    _run("benchmarks/sequence_shift.py", "--epochs=1", "--candidates=none,contrast_remap", f"--out={out}")
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"none", "contrast_remap"} and all("t2" in r for r in rows.values())
