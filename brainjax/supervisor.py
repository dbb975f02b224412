"""A thin parent for each process of a multi-process run, so that its death is one line.

When process 0, which hosts JAX's coordination service, dies, JAX's client in every other
process aborts that process at once from a C++ thread (SIGABRT, a glog stack trace, no
word of which process died), before brainjax's own watcher can speak, and JAX offers no
Python hook that survives it (its error callback cannot be called from Python). So the
`brainjax` command, when it joins a multi-process run, runs the real work in a child
process and waits: a child that dies of a signal gets one `brainjax: error:` line naming
the cause (for SIGABRT on a process other than 0: process 0, the coordinator, was lost)
and exit code 1; any other exit code is passed on unchanged.

The child is tied to the parent: it gets SIGKILL when the parent dies (Linux
PR_SET_PDEATHSIG), so `kill -9` of the command still kills the process, and SIGTERM /
SIGINT sent to the parent are forwarded (the child runs in its own session, so a signal
to the whole process group, as Slurm sends, reaches it once). Imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

WORKER_ENV = "BRAINJAX_SUPERVISED_WORKER"
DISTRIBUTED_FLAGS = ("--coordinator_address", "--num_processes", "--process_id", "--distributed")
PR_SET_PDEATHSIG = 1


def joins_a_cluster(argv: list[str]) -> bool:
    """Whether these command-line flags join a multi-process run (and this is not already
    the supervised child)."""
    if os.environ.get(WORKER_ENV):
        return False
    for arg in argv[1:]:
        name, _, value = arg.partition("=")
        if name in DISTRIBUTED_FLAGS and not (name == "--distributed" and value.lower() in ("false", "0")):
            return True
    return False


def process_id(argv: list[str]) -> str:
    """The --process_id value, or '?' (cluster auto-detection)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--process_id="):
            return arg.split("=", 1)[1]
        if arg == "--process_id" and i + 1 < len(argv):
            return argv[i + 1]
    return "?"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a kill -9 of the parent leaves the child running
        pass


def death_line(me: str, signum: int) -> str:
    """The one line for a child that died of `signum`."""
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
    if signum == signal.SIGABRT and me != "0":
        return (f"process 0 (the coordinator) was lost: JAX's coordination service became unreachable and JAX "
                f"aborted process {me} ({name}); process {me} stops too")
    return f"process {me} was ended by {name} (see the lines above)"


def supervise(argv: list[str]) -> int:
    """Runs `argv` as the supervised child; returns the exit code to leave with."""
    child = subprocess.Popen([sys.executable, *argv], env={**os.environ, WORKER_ENV: "1"},
                             preexec_fn=_die_with_parent, start_new_session=True)

    def forward(signum, frame) -> None:
        del frame
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    if code >= 0:
        return code
    print(f"brainjax: error: {death_line(process_id(argv), -code)}", file=sys.stderr, flush=True)
    return 1
