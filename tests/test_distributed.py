"""A real 2-process run: jax.distributed on 127.0.0.1 (gloo CPU collectives), 2 fake
devices per process, starting from a data_dir where the dataset is not built yet. Its
report must count every test example once and equal a 1-process x 4-device run's;
interrupted by Ctrl-C on one process, both must save the same step and resume from it. One
process killed with -9, or failing inside a step process 1 waits for, ends the other
within seconds with one line naming the process and the cause."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420  # per process: a hang fails the test instead of the suite
PREEMPTED = 3  # --preempted_exit_code in these runs: "preempted, rerun me" is not "finished"
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


def _start_procs(count, devices, workdir, data_dir, *extra, only_process_0=()):
    port = _free_port()
    return [subprocess.Popen([sys.executable, "launch.py", f"--workdir={workdir}", *OVERRIDES,
                              f"--config.data_dir={data_dir}", f"--coordinator_address=127.0.0.1:{port}",
                              f"--num_processes={count}", f"--process_id={i}", *extra,
                              *(only_process_0 if i == 0 else ())], cwd=ROOT, env=_env(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]


def _start_pair(workdir, data_dir, *extra, only_process_0=()):
    return _start_procs(2, 2, workdir, data_dir, *extra, only_process_0=only_process_0)


def _decoded(log) -> int:
    """Examples this process decoded (train.py's closing 'input:' line)."""
    line = [l for l in log.splitlines() if "input: process" in l][-1]
    return int(line.split(" decoded ")[1].split()[0])


def _wait(procs, expect=0) -> list[str]:
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
        assert p.returncode == expect, f"process {i} exited {p.returncode}:\n{log[-4000:]}"
    return logs


def _report(workdir):
    # scored after BatchNorm adaptation: the report is under adapted/, none beside it
    assert not os.path.exists(os.path.join(workdir, "report.json"))
    return json.load(open(os.path.join(workdir, "adapted", "report.json")))


def _assert_same_report(a, b):
    for key in ("clean",):
        assert a[key]["confusion_matrix"] == b[key]["confusion_matrix"]
        assert abs(a[key]["accuracy"] - b[key]["accuracy"]) <= 1e-6
    assert set(a.get("degraded", {})) == set(b.get("degraded", {}))
    for name, sev in a.get("degraded", {}).items():
        for s, m in sev.items():
            assert m["confusion_matrix"] == b["degraded"][name][s]["confusion_matrix"], (name, s)
            assert abs(m["accuracy"] - b["degraded"][name][s]["accuracy"]) <= 1e-6
    assert set(a.get("other_splits", {})) == set(b.get("other_splits", {}))
    for split, m in a.get("other_splits", {}).items():
        assert m["clean"]["confusion_matrix"] == b["other_splits"][split]["clean"]["confusion_matrix"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The 2 x 2 run, interrupted: Ctrl-C reaches process 1 at step 10, both processes save
    the same step and exit with the preemption code, and the same command resumes and
    finishes. One run serves the Ctrl-C test and the layout-equality test (which then
    also shows that a resumed 2-process run ends where 1 x 4 ends)."""
    tmp = tmp_path_factory.mktemp("dist")
    data_dir, workdir = str(tmp / "tfds_fresh"), str(tmp / "two")
    t0 = time.time()
    procs = _start_pair(workdir, data_dir, f"--preempted_exit_code={PREEMPTED}")
    _wait_for_windows(workdir, procs, 10)
    procs[1].send_signal(signal.SIGINT)
    interrupted = _wait(procs, expect=PREEMPTED)
    report_after_interruption = any(os.path.exists(os.path.join(workdir, *p))
                                    for p in (("report.json",), ("adapted", "report.json")))
    logs = _wait(_start_pair(workdir, data_dir, f"--preempted_exit_code={PREEMPTED}"))
    return workdir, data_dir, logs, time.time() - t0, interrupted, report_after_interruption


@pytest.fixture(scope="module")
def one_process_run(two_process_run, tmp_path_factory):
    """The same config on 1 process x 4 devices (pmap): the reference of every layout."""
    data_dir = two_process_run[1]
    single = str(tmp_path_factory.mktemp("single") / "run")
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={single}", *OVERRIDES,
                          f"--config.data_dir={data_dir}"], cwd=ROOT, env=_env(4), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-4000:]
    return single, out.stderr


def _epochs(workdir):
    return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if '"kind": "epoch"' in l]


def _assert_same_training_decisions(a, b):
    """Epochs run, learning rate per epoch (every plateau step) and best epoch exactly;
    validation losses within rtol 1e-4 (see the 2 x 2 test for why)."""
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]  # the same plateau / early-stopping decisions
    assert [r["learning_rate"] for r in a] == [r["learning_rate"] for r in b]
    assert np.argmin([r["val_loss"] for r in a]) == np.argmin([r["val_loss"] for r in b])  # best epoch
    np.testing.assert_allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b], rtol=1e-4)


def _evaluated_on_four_devices(workdir, data_dir, target):
    """`workdir`'s model evaluated again on 1 process x 4 devices (a copy of the run)."""
    shutil.copytree(workdir, target)
    out = subprocess.run([sys.executable, "launch.py", f"--workdir={target}", "--mode=evaluate",
                          f"--config.data_dir={data_dir}"], cwd=ROOT, env=_env(4), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-4000:]
    return _report(target)


def test_two_processes_match_one_process_with_four_devices(two_process_run, one_process_run, tmp_path):
    workdir, data_dir, logs, seconds, _, _ = two_process_run
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

    # What is compared exactly, and why (issue 25). Training on 2 x 2 and on 1 x 4 sums
    # synchronised BatchNorm statistics and gradients in another float32 order (~1 ulp,
    # 6e-8 relative, per reduction); 88 optimizer steps amplify it, so the two trained
    # models differ at float level, and a near-tie example of this barely trained model
    # can flip class (measured on 2026-12-02: 1 of 120 test examples; the losses differed
    # by 1.2e-5 relative on an AMD EPYC). So:
    # - the training decisions are compared exactly: epochs run, learning rate per epoch
    #   (every plateau step), best epoch;
    # - the validation losses with rtol 1e-4, the measured drift with room for other
    #   CPUs, and min_delta's scale (a larger drift could change a decision);
    # - the report: the 2 x 2 model evaluated on 1 process x 4 devices must give the
    #   2 x 2 report's confusion matrices exactly (evaluation is per example; only the
    #   test-time BatchNorm moments are summed, ~1e-7 relative).
    single, single_log = one_process_run
    _assert_same_training_decisions(_epochs(single), [r for r in records if r["kind"] == "epoch"])
    # Each process read and decoded its half of every split (720 + 80 + 120 examples in
    # all): 460, where the 1-process run decoded 920.
    assert [_decoded(log) for log in logs] == [460, 460] and _decoded(single_log) == 920

    on_four = str(tmp_path / "two_by_two_model_on_four_devices")
    _assert_same_report(report, _evaluated_on_four_devices(workdir, data_dir, on_four))
    assert report["adaptation"]["passes"] == _report(on_four)["adaptation"]["passes"]
    # The OOD Gaussian of the same model, fitted on 2 processes x 2 devices and on 1 x 4:
    # float32 sums per batch in another order (~1e-7 relative), float64 across batches;
    # the precision is a matrix inverse (condition number ~1e3 here), hence its looser bound.
    two, four = (np.load(glob.glob(os.path.join(d, "**", "ood_stats.npz"), recursive=True)[0])
                 for d in (workdir, on_four))
    np.testing.assert_array_equal(two["counts"], four["counts"])
    np.testing.assert_allclose(two["means"], four["means"], rtol=1e-5, atol=1e-6 * np.abs(two["means"]).max())
    np.testing.assert_allclose(two["precision"], four["precision"], rtol=1e-3,
                               atol=1e-4 * np.abs(two["precision"]).max())


# 4 processes on 2 cores: the jit mode (also the multi-process jit path) in the default
# suite, the pmap mode (which the 2 x 2 test covers across processes) in the slow tier.
@pytest.mark.parametrize("mode", ["jit", pytest.param("pmap", marks=pytest.mark.slow)])
def test_four_processes_of_one_device_match_one_process_with_four(mode, two_process_run, one_process_run, tmp_path):
    """4 processes x 1 device, each reading a quarter of every split: the training
    decisions of 1 process x 4 devices, and the same report for the same model."""
    data_dir = two_process_run[1]
    single, _ = one_process_run
    workdir = str(tmp_path / f"four_{mode}")
    t0 = time.time()
    # The graded grid and the extra split are left to the 2 x 2 test (the same evaluation
    # code across processes): here the training and the clean, adapted report, which is
    # what the layout can change (4 processes on 2 cores are the suite's slowest run).
    logs = _wait(_start_procs(4, 1, workdir, data_dir, f"--config.parallel={mode}", "--config.eval.corruptions=()",
                              "--config.eval.extra_splits=()"))
    print(f"4-process run ({mode}): {time.time() - t0:.1f} s")
    assert "4 processes" in logs[0]
    assert [_decoded(log) for log in logs] == [230] * 4  # a quarter of 920
    _assert_same_training_decisions(_epochs(single), _epochs(workdir))
    report = _report(workdir)
    assert np.asarray(report["clean"]["confusion_matrix"]).sum() == report["num_examples"] == 120
    _assert_same_report(report, _evaluated_on_four_devices(workdir, data_dir, str(tmp_path / "on_four")))


def _wait_for_windows(workdir, procs, count):
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(metrics) and sum(1 for l in open(metrics) if '"train_window"' in l) >= count:
            return
        time.sleep(0.02)
    for p in procs:
        p.kill()
    pytest.fail("the run ended before it could be interrupted")


# The kill -9 run: 2 epochs and a plain evaluation (the fixture's run covers the rest).
SHORT = ["--config.num_epochs=2", "--config.eval.corruptions=()", "--config.eval.extra_splits=()",
         "--config.eval.adapt_batchnorm=False"]


def test_ctrl_c_on_one_process_saves_the_same_step_everywhere_and_both_resume_from_it(two_process_run):
    """Ctrl-C reaching one process of two goes through JAX's preemption sync point like
    SIGTERM: both save the same step and exit with the preemption code; the rerun
    restores that step on both processes (the restore agreement) and finishes (the
    fixture's run; the layout test compares the finished model with 1 x 4).
    (Resumed = uninterrupted is checked bit for bit in tests/test_preemption.py.)"""
    workdir, _, logs, _, interrupted, report_after_interruption = two_process_run
    saved = [[l for l in log.splitlines() if "saved a checkpoint at step" in l] for log in interrupted]
    assert all(len(s) == 1 for s in saved), interrupted[1][-3000:]
    steps = [int(s[0].split("at step ")[1].split()[0]) for s in saved]
    assert steps[0] == steps[1] and "Ctrl-C" in saved[1][0]
    assert 10 <= steps[0] < 88  # mid-run, not the end
    assert not report_after_interruption
    assert f"at step {steps[0]}" in logs[0] and f"at step {steps[0]}" in logs[1]
    assert np.asarray(_report(workdir)["clean"]["confusion_matrix"]).sum() == 120


HEARTBEAT_S = 12  # --heartbeat_timeout_seconds of the kill -9 runs
# The survivor must be gone within JAX's heartbeat timeout plus a margin for this loaded
# 2-core machine (its watcher names the lost process after half the timeout).
SHUTDOWN_BOUND_S = HEARTBEAT_S + 45


@pytest.mark.parametrize("killed", [1, 0], ids=["worker", "coordinator"])
def test_kill_9_of_one_process_ends_the_other_with_a_line_naming_it(killed, two_process_run, tmp_path):
    """kill -9 of either process (process 0 also hosts JAX's coordination service) ends
    the other non-zero within the heartbeat bound, with one line naming the lost one,
    and leaves every checkpoint in place."""
    data_dir = two_process_run[1]
    run = str(tmp_path / "killed")
    procs = _start_pair(run, data_dir, *SHORT, f"--heartbeat_timeout_seconds={HEARTBEAT_S}")
    _wait_for_windows(run, procs, 10)
    checkpoints = os.path.join(run, "checkpoints")
    survivor = procs[1 - killed]
    procs[killed].send_signal(signal.SIGKILL)
    t0 = time.time()
    _, err = survivor.communicate(timeout=150)
    seconds = time.time() - t0
    procs[killed].communicate(timeout=60)
    print(f"process {1 - killed} exited {survivor.returncode} {seconds:.1f} s after process {killed} was killed")
    assert survivor.returncode != 0
    assert seconds < SHUTDOWN_BOUND_S, f"process {1 - killed} took {seconds:.1f} s to stop"
    errors = [l for l in err.splitlines() if l.startswith("brainjax: error:")]
    assert len(errors) == 1 and f"process {killed}" in errors[0] and "was lost" in errors[0], err[-3000:]
    assert "Traceback" not in err
    steps = [d for d in os.listdir(checkpoints) if d.isdigit()]
    assert steps and not [d for d in os.listdir(checkpoints) if "unreadable" in d]  # nothing set aside or removed


def test_an_error_inside_process_zero_first_ends_both_processes_with_its_message(tmp_path):
    """A bad manual_dir given to process 0 only: it fails inside the dataset build that
    process 1 waits for at a barrier; both exit 1 quickly, each naming process 0's error."""
    procs = _start_pair(str(tmp_path / "run"), str(tmp_path / "tfds"), "--heartbeat_timeout_seconds=20",
                        only_process_0=("--config.dataset=brain_tumor_mri/sartaj",
                                        f"--config.manual_dir={tmp_path / 'no_such_folder'}"))
    t0 = time.time()
    logs = _wait(procs, expect=1)
    assert time.time() - t0 < 150
    for i, log in enumerate(logs):
        errors = [l for l in log.splitlines() if l.startswith("brainjax: error:")]
        assert len(errors) == 1, log[-3000:]
        assert "process 0 failed" in errors[0] and "no_such_folder" in errors[0] and "manual_dir" in errors[0]
        assert "Traceback" not in log
