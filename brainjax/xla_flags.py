"""XLA flags brainjax sets before JAX starts its backends.

XLA reads `XLA_FLAGS` once, when the first backend is created, so the launcher, the
benchmark and the test setup call `apply_cpu_defaults()` before any JAX computation.

Why the flag (measured on the 2-core AMD EPYC / AVX-512 reference machine, see
BUILD_NOTES.md "CPU speed"): by default XLA:CPU routes convolutions and dots into YNNPACK
fusions; on this machine XLA's own Eigen kernels are faster for every VGG16 convolution
(e.g. 112x112x64->64: 144 vs 130 GFLOP/s; 14x14x512->512: 203 vs 177), which makes the
VGG16 frozen-base step 1.18x and the full fine-tune step 1.55x faster. It only touches the
CPU backend; GPU/TPU compilation ignores it. A user's own setting of the same flag wins.
"""

from __future__ import annotations

import os

CPU_DEFAULTS = {
    # Empty list = no YNNPACK library fusions (XLA:CPU's Eigen convolutions and dots instead).
    "--xla_cpu_experimental_ynn_fusion_type": "",
}


def apply_cpu_defaults(environ: dict | None = None) -> str:
    """Appends CPU_DEFAULTS to XLA_FLAGS unless that flag is already set; returns XLA_FLAGS.
    Set BRAINJAX_XLA_DEFAULTS=0 to leave XLA_FLAGS untouched (e.g. to measure XLA's own
    defaults, as `benchmarks/xla_flag_sweep.py` does)."""
    env = os.environ if environ is None else environ
    if env.get("BRAINJAX_XLA_DEFAULTS", "1") == "0":
        return env.get("XLA_FLAGS", "")
    flags = env.get("XLA_FLAGS", "").split()
    present = {f.split("=", 1)[0] for f in flags}
    flags += [f"{name}={value}" for name, value in CPU_DEFAULTS.items() if name not in present]
    env["XLA_FLAGS"] = " ".join(flags)
    return env["XLA_FLAGS"]
