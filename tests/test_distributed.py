"""A real 2-process run: jax.distributed on 127.0.0.1 (gloo CPU collectives), 2 fake
devices per process, starting from a data_dir where the dataset is not built yet. Its
report must count every test example once and equal a 1-process x 4-device run's; killed
with -9 mid-run and rerun, it must end with the same report."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420  # per process: a hang fails the test instead of the suite
# BatchNorm (synchronised over all devices) and dropout on; plateau and early stopping
# with short patience, step-level checkpoints, a few corruptions; the report's splits
# scored after test-time BatchNorm adaptation (the same statistics on any layout).
OVERRIDES = ["--config=configs/smoke.py", "--config.num_epochs=4", "--config.model.tiny.batchnorm=True",
             "--config.model.base_batchnorm_train=True", "--config.model.dropout=0.2",
             "--config.schedule.patience=1", "--config.early_stopping.patience=3", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=5", "--config.eval.corruptions=('gaussian_noise','downsample')",
             "--config.eval.severities=(1,5)", "--config.eval.extra_splits=('train[90%:]',)",
             # test-time BatchNorm adaptation: its moments are summed over both processes
             "--config.eval.adapt_batchnorm=True"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _start_pair(workdir, data_dir):
    port = _free_port()
    return [subprocess.Popen([sys.executable, "launch.py", f"--workdir={workdir}", *OVERRIDES,
                              f"--config.data_dir={data_dir}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={i}"], cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait(procs) -> list[str]:
    logs = []
    deadline = time.time() + TIMEOUT
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a process hung for more than {TIMEOUT} s")
        logs.append(err)
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-4000:]}"
    return logs


def _report(workdir):
    # scored after BatchNorm adaptation: the report is under adapted/, none beside it
    assert not os.path.exists(os.path.join(workdir, "report.json"))
    return json.load(open(os.path.join(workdir, "adapted", "report.json")))


def _assert_same_report(a, b):
    for key in ("clean",):
        assert a[key]["confusion_matrix"] == b[key]["confusion_matrix"]
        assert abs(a[key]["accuracy"] - b[key]["accuracy"]) <= 1e-6
    for name, sev in a["degraded"].items():
        for s, m in sev.items():
            assert m["confusion_matrix"] == b["degraded"][name][s]["confusion_matrix"], (name, s)
            assert abs(m["accuracy"] - b["degraded"][name][s]["accuracy"]) <= 1e-6
    for split, m in a["other_splits"].items():
        assert m["clean"]["confusion_matrix"] == b["other_splits"][split]["clean"]["confusion_matrix"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data_dir, workdir = str(tmp / "tfds_fresh"), str(tmp / "two")
    t0 = time.time()
    logs = _wait(_start_pair(workdir, data_dir))
    return workdir, data_dir, logs, time.time() - t0


def test_two_processes_match_one_process_with_four_devices(two_process_run, tmp_path):
    workdir, data_dir, logs, seconds = two_process_run
    print(f"2-process run (dataset built from scratch): {seconds:.1f} s")
    assert "2 processes" in logs[0]
    report = _report(workdir)
    n = report["num_examples"]
    assert n == 120
    assert np.asarray(report["clean"]["confusion_matrix"]).sum() == n  # every test example exactly once
    for sev in report["degraded"].values():
        assert all(np.asarray(m["confusion_matrix"]).sum() == n for m in sev.values())
    assert np.asarray(report["other_splits"]["train[90%:]"]["clean"]["confusion_matrix"]).sum() == 80
    assert report["adaptation"]["passes"] >= 1 and report["other_splits"]["train[90%:]"]["adaptation"]["on"] == "train[90%:]"
    records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert len({(r["kind"], r["step"]) for r in records}) == len(records)  # process 0 alone writes

    single = str(tmp_path / "single")
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={single}", *OVERRIDES,
                          f"--config.data_dir={data_dir}"], cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-4000:]
    _assert_same_report(report, _report(single))
    assert report["adaptation"]["passes"] == _report(single)["adaptation"]["passes"]
    a = [json.loads(l) for l in open(os.path.join(single, "metrics.jsonl")) if '"kind": "epoch"' in l]
    b = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]  # the same plateau / early-stopping decisions
    np.testing.assert_allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b], rtol=1e-5)
    np.testing.assert_allclose([r["learning_rate"] for r in a], [r["learning_rate"] for r in b])


def test_two_processes_killed_mid_run_resume_to_the_same_report(two_process_run, tmp_path):
    workdir, data_dir, _, _ = two_process_run
    resumed = str(tmp_path / "resumed")
    procs = _start_pair(resumed, data_dir)
    metrics = os.path.join(resumed, "metrics.jsonl")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(metrics) and sum(1 for l in open(metrics) if '"train_window"' in l) >= 30:
            break
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    logs = _wait(_start_pair(resumed, data_dir))
    assert "resuming from" in logs[0] and "resuming from" in logs[1]
    _assert_same_report(_report(workdir), _report(resumed))
